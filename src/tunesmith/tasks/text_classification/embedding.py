"""Sentence-embedding classifiers: an encoder, pooling, and a linear head over the pooled embedding.

Few-shot (SetFit-style) and zero-shot models are both this shape: few-shot learns the head with logistic
regression on a contrastively tuned encoder; zero-shot's head rows are the label descriptions' normalised
embeddings (cosine similarity, scaled). Written as one torch module whose output has `.logits`, such a
model predicts, evaluates, exports to ONNX and serves exactly like a fine-tuned sequence classifier.

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

from tunesmith.inference import length_batches

ARCHITECTURE = "embedding-head"
HEAD_FILE = "head.safetensors"


class EmbeddingHead(torch.nn.Module):
    """encoder -> pooling (-> L2 normalisation) -> linear layer: logits per class."""

    def __init__(
        self, encoder: Any, weight: torch.Tensor, bias: torch.Tensor, pooling: str = "mean", normalize: bool = False
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', not {pooling!r}")
        self.encoder = encoder
        self.head = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)
        self.pooling, self.normalize = pooling, normalize
        self.config = encoder.config

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: Any) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: Any) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        return SequenceClassifierOutput(logits=self.head(self.embed(input_ids, attention_mask, **inputs)))


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
    return EmbeddingHead(
        encoder, head["weight"], head["bias"], meta.get("pooling", "mean"), meta.get("normalize", False)
    )


def head_from_logistic(coef: np.ndarray, intercept: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of a linear layer whose softmax equals a fitted scikit-learn LogisticRegression's probabilities.

    A binary model has one row (the positive class's log-odds); the negative class gets a zero row, since
    softmax([0, z]) = sigmoid(z)."""
    coef, intercept = np.atleast_2d(coef), np.atleast_1d(intercept)
    if coef.shape[0] == 1:
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    return torch.tensor(coef, dtype=torch.float32), torch.tensor(intercept, dtype=torch.float32)
