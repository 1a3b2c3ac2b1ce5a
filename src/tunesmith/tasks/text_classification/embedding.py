"""Sentence-embedding classifiers: an encoder, pooling, and a linear head over the pooled embedding.

Few-shot (SetFit-style) and zero-shot models are this shape: few-shot learns the head with logistic regression
on a contrastively tuned encoder; zero-shot's head rows are the label descriptions' normalised embeddings
(cosine similarity, scaled). So is a fully fine-tuned model whose base is a sentence-embedding model (`fresh`)
for multi-label data or a frozen encoder: its linear head reads the `[CLS]` vector or the embedding directly,
not through BERT's pooler layer (GoEmotions, 15-minute budget: macro-F1 0.439 against 0.383; `pooling_for`).
Written as one torch module whose output has `.logits`, such a model predicts, evaluates, exports to ONNX and
serves exactly like a fine-tuned sequence classifier.

Artifact layout: `model/` (the encoder, safetensors, with its tokenizer) and `head.safetensors`
(`weight` [classes, dim], `bias` [classes]); `tunesmith.json` says `"architecture": "embedding-head"`
with its `pooling` ("mean" or "cls") and `normalize`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.artifact import read_meta
from tunesmith.inference import length_batches
from tunesmith.models import load_pretrained, pooler_trained, resolve_model, sentence_pooling

ARCHITECTURE = "embedding-head"
HEAD_FILE = "head.safetensors"


class EmbeddingHead(torch.nn.Module):
    """encoder -> pooling (-> L2 normalisation) -> linear layer: logits per class. Given `labels`, the output
    also holds the loss (cross-entropy, or binary cross-entropy per label when `multi_label`), so the Trainer
    fine-tunes it like a sequence classifier."""

    main_input_name = "input_ids"

    def __init__(
        self, encoder: Any, weight: torch.Tensor, bias: torch.Tensor, pooling: str = "mean", normalize: bool = False,
        multi_label: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', not {pooling!r}")
        self.encoder = encoder
        self.head = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)
        self.pooling, self.normalize, self.multi_label = pooling, normalize, multi_label
        self.config = encoder.config

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def base_model(self) -> Any:  # what `methods` freezes or adapts, as on a transformers model
        return self.encoder

    def get_input_embeddings(self) -> Any:
        return self.encoder.get_input_embeddings()

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: Any) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
        **inputs: Any,
    ) -> Any:  # fmt: skip
        from transformers.modeling_outputs import SequenceClassifierOutput

        inputs.pop("num_items_in_batch", None)  # the Trainer's loss argument: the loss here is a plain mean
        logits = self.head(self.embed(input_ids, attention_mask, **inputs))
        loss = None
        if labels is not None:
            functional = torch.nn.functional
            loss = (functional.binary_cross_entropy_with_logits(logits.float(), labels.float()) if self.multi_label
                    else functional.cross_entropy(logits.float(), labels))  # fmt: skip
        return SequenceClassifierOutput(loss=loss, logits=logits)


def embed_texts(
    model: EmbeddingHead, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int = 64
) -> np.ndarray:
    """Pooled embeddings of `texts`, row i for texts[i] (length-sorted batches, as prediction does)."""
    out = np.zeros((len(texts), model.head.in_features), dtype=np.float32)
    if not len(texts):
        return out
    encoded = tokenizer([str(t) for t in texts], truncation=True, max_length=max_length)
    model.eval()
    with torch.inference_mode():
        for rows in length_batches([len(ids) for ids in encoded["input_ids"]], batch_size):
            batch = tokenizer.pad([{k: encoded[k][i] for k in encoded} for i in rows], return_tensors="pt")
            out[rows] = model.embed(**{k: v.to(model.device) for k, v in batch.items()}).float().cpu().numpy()
    return out


def save(model: EmbeddingHead, folder: Path) -> None:
    from safetensors.torch import save_file

    model.encoder.save_pretrained(folder / "model", safe_serialization=True)
    save_file({"weight": model.head.weight.detach().contiguous(), "bias": model.head.bias.detach().contiguous()},
              str(folder / HEAD_FILE))  # fmt: skip


def load(path: Path, meta: dict[str, Any], **kwargs: Any) -> EmbeddingHead:
    from safetensors.torch import load_file
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(Path(path) / "model", **kwargs)
    head = load_file(str(Path(path) / HEAD_FILE))
    return EmbeddingHead(encoder, head["weight"], head["bias"], meta.get("pooling", "mean"),
                         meta.get("normalize", False), bool(meta.get("multi_label")))  # fmt: skip


def pooling_for(name: str, wanted: str, *, frozen: bool = False, multi_label: bool = False) -> str | None:
    """The pooling a fine-tuned classifier on base model `name` reads, for the setting `wanted` ("auto", "mean",
    "cls" or "pooler"); None for the architecture's own sequence-classification head. "auto", for a
    sentence-transformers base: when the encoder stays `frozen`, the embedding it was trained to produce (its
    own pooling: a linear probe; TREC at 16 a class 0.520 against 0.310 through the pooler); for `multi_label`
    data the `[CLS]` vector (GoEmotions in 15 minutes: macro-F1 0.439 against 0.383 through the pooler; the
    token mean 0.444, but it lost TREC's question words); single-label data keeps the architecture's head (TREC
    at 16 and 32 a class: 0.844 / 0.908 against 0.788 / 0.902 on `[CLS]`; docs/planning.md) unless the base has no
    trained pooler (multilingual-e5), which then reads its own pooling. An embedding-head
    artifact (a warm retrain) keeps its pooling; any other base, the architecture's head."""
    if wanted != "auto":
        return None if wanted == "pooler" else wanted
    folder = Path(resolve_model(name))
    parent = artifact_meta(folder)
    if parent is not None:
        return str(parent.get("pooling", "mean"))
    pooling = sentence_pooling(folder)
    if pooling is None:
        return None
    if frozen:
        return pooling if pooling in ("mean", "cls") else None
    if multi_label:
        return "cls"
    # The architecture's head reads the pooler layer, which a model trained without one does not have trained.
    return None if pooler_trained(folder) or pooling not in ("mean", "cls") else pooling


def artifact_meta(folder: Path) -> dict[str, Any] | None:
    """tunesmith.json of the embedding-head artifact whose `model/` is `folder`; None for any other folder."""
    if folder.name != "model" or not (folder.parent / HEAD_FILE).is_file():
        return None
    meta = read_meta(folder.parent)
    return meta if meta.get("architecture") == ARCHITECTURE else None


def fresh(
    name: str, label_names: Sequence[str], *, pooling: str, multi_label: bool, bias: Sequence[float] | None = None,
    trust_remote_code: bool = False, attention_dropout: float | None = None,
) -> EmbeddingHead:  # fmt: skip
    """Base model `name`'s encoder under a new head for `label_names`, drawn as transformers draws a classifier
    head (normal, the config's `initializer_range`), its bias `bias` or zero. When `name` is an embedding-head
    artifact's model (a warm retrain), the rows of the labels it shares keep what they had learned."""
    from transformers import AutoModel

    encoder = load_pretrained(AutoModel, name, trust_remote_code=trust_remote_code, attention_dropout=attention_dropout)
    dim, n = encoder.config.hidden_size, len(label_names)
    weight = torch.randn(n, dim) * float(getattr(encoder.config, "initializer_range", 0.02))
    start = torch.zeros(n) if bias is None else torch.tensor(list(bias), dtype=torch.float32)
    folder = Path(resolve_model(name))
    parent = artifact_meta(folder)
    if parent is not None:
        from safetensors.torch import load_file

        old = load_file(str(folder.parent / HEAD_FILE))
        rows = {str(label): i for i, label in enumerate(parent.get("label_names", []))}
        for j, label in enumerate(label_names):
            if str(label) in rows and rows[str(label)] < old["weight"].shape[0]:
                weight[j], start[j] = old["weight"][rows[str(label)]], old["bias"][rows[str(label)]]
    return EmbeddingHead(encoder, weight, start, pooling, multi_label=multi_label)


def head_from_logistic(coef: np.ndarray, intercept: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of a linear layer whose softmax equals a fitted scikit-learn LogisticRegression's probabilities.

    A binary model has one row (the positive class's log-odds); the negative class gets a zero row, since
    softmax([0, z]) = sigmoid(z)."""
    coef, intercept = np.atleast_2d(coef), np.atleast_1d(intercept)
    if coef.shape[0] == 1:
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    return torch.tensor(coef, dtype=torch.float32), torch.tensor(intercept, dtype=torch.float32)
