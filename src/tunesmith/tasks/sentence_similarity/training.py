"""Fine-tuning an embedding model inside the shared `training.fit`, with sentence-transformers' losses.

The loss follows the data shape: CoSENT for scored pairs (only the order of the scores matters, so any scale
trains), OnlineContrastive for 0/1 pairs (duplicate or not), MultipleNegativesRanking for pairs and triplets
(every other positive in the batch is a negative; a triplet's own negative is a hard one). Labelled texts are
paired with another text of their label (a text alone in its label with itself, as unsupervised SimCSE does), and the in-batch negatives of the same label are masked out of the
ranking loss: they are positives, and counting them as negatives would push a label's texts apart.

The shared Trainer drives a small module that feeds each side of a batch through the sentence-transformers
model and returns the loss, so budgets, the plan, checkpoints, resume, LoRA and early stopping on the
validation loss are the same as for every task.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tunesmith.models import attention_dropout_override, model_max_length, resolve_model
from tunesmith.tasks.base import TrainResult
from tunesmith.tasks.sentence_similarity.encoder import Embedder, pooling_of
from tunesmith.tasks.sentence_similarity.pairs import COLUMNS, PairData, load_pair_data, read_rows
from tunesmith.tasks.sentence_similarity.pooling import PooledEncoder
from tunesmith.tasks.sentence_similarity.retrieval import evaluate, evaluate_bm25
from tunesmith.training import ListDataset, Run, choose_max_length

MAX_LENGTH = 256  # sentence-transformers' usual limit; a longer model limit is only used when asked for
SIDES = ("positive", "negative")
SCALE = 20.0  # the cosine scale of MultipleNegativesRankingLoss (its default), used by the masked variant too


def loss_name(data: PairData) -> str:
    if data.shape == "scored-pairs":
        return "OnlineContrastiveLoss" if data.binary else "CoSENTLoss"
    return "MultipleNegativesRankingLoss" + (" (same-label negatives masked)" if data.shape == "labelled-texts" else "")


class PairLoss(torch.nn.Module):
    """A batch's sides through the sentence-transformers model, into the shape's loss: what the Trainer trains."""

    accepts_loss_kwargs = False  # the loss is a batch mean already: the Trainer must not rescale it (in place)

    def __init__(self, st: Any, loss: Any, sides: Sequence[str], masked: bool) -> None:
        super().__init__()
        self.st, self.sides, self.masked = st, tuple(sides), masked
        # Not a submodule: the loss holds the model too, and its weights would be saved twice under two names.
        object.__setattr__(self, "loss", loss)
        self.config = st[0].auto_model.config  # what peft reads the model type (and its target layers) from

    def get_input_embeddings(self) -> Any:
        return self.st[0].auto_model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                positive_input_ids: torch.Tensor | None = None, positive_attention_mask: torch.Tensor | None = None,
                negative_input_ids: torch.Tensor | None = None, negative_attention_mask: torch.Tensor | None = None,
                return_loss: bool = True, **_unused: Any) -> dict[str, torch.Tensor]:  # fmt: skip
        # The sides are named parameters: the Trainer drops batch keys that the forward signature does not name.
        sides = {"positive": (positive_input_ids, positive_attention_mask),
                 "negative": (negative_input_ids, negative_attention_mask)}  # fmt: skip
        features = [{"input_ids": input_ids, "attention_mask": attention_mask}]
        features += [{"input_ids": sides[side][0], "attention_mask": sides[side][1]} for side in self.sides]
        if self.masked:
            return {"loss": self._masked_ranking(features, labels)}
        return {"loss": self.loss(features, labels)}

    def _masked_ranking(self, features: list[dict[str, torch.Tensor]], labels: Any) -> torch.Tensor:
        anchors, positives = (torch.nn.functional.normalize(self.st(f)["sentence_embedding"], dim=-1) for f in features)
        scores = anchors @ positives.T * SCALE
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        same.fill_diagonal_(False)
        scores = scores.masked_fill(same, float("-inf"))
        return torch.nn.functional.cross_entropy(scores, torch.arange(len(scores), device=scores.device))


def _collator(tokenizer: Any, sides: Sequence[str], float_labels: bool) -> Any:
    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = dict(tokenizer.pad([{"input_ids": r["input_ids"]} for r in rows], return_tensors="pt"))
        for side in sides:
            padded = tokenizer.pad([{"input_ids": r[f"{side}_input_ids"]} for r in rows], return_tensors="pt")
            batch |= {f"{side}_input_ids": padded["input_ids"], f"{side}_attention_mask": padded["attention_mask"]}
        batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=torch.float if float_labels else torch.long)
        batch["return_loss"] = True  # so the Trainer computes a validation loss through a peft wrapper too
        return batch

    return collate


def _examples(data: PairData, rows: list[dict[str, Any]], seed: int) -> tuple[list[list[str]], list[Any]]:
    """Each training example as its texts (anchor first) and its label for the loss."""
    if data.shape == "scored-pairs":
        return [[r["sentence1"], r["sentence2"]] for r in rows], [float(r["score"]) for r in rows]
    if data.shape in ("pairs", "triplets"):
        return [[r[c] for c in COLUMNS[data.shape]] for r in rows], [0] * len(rows)
    by_label: dict[str, list[str]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r["text"])
    ids = {label: i for i, label in enumerate(sorted(by_label))}
    rng = random.Random(seed)
    texts, labels = [], []
    for r in rows:
        # A text alone in its label is its own positive (SimCSE: dropout makes the two views differ).
        partners = [t for t in by_label[r["label"]] if t != r["text"]] or [r["text"]]
        texts.append([r["text"], rng.choice(partners)])
        labels.append(ids[r["label"]])
    return texts, labels


def _tokenized(tokenizer: Any, examples: list[list[str]], labels: list[Any], sides: Sequence[str],
               max_length: int) -> ListDataset:  # fmt: skip
    columns = list(zip(*examples, strict=True)) if examples else [[] for _ in range(1 + len(sides))]
    encoded = [tokenizer(list(c), truncation=True, max_length=max_length)["input_ids"] for c in columns]
    rows = []
    for i, label in enumerate(labels):
        row = {"input_ids": encoded[0][i], "labels": label}
        row |= {f"{side}_input_ids": encoded[1 + s][i] for s, side in enumerate(sides)}
        rows.append(row)
    return ListDataset(rows)


def _sentence_transformer(settings: Any) -> Any:
    import logging

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize

    quiet = logging.getLogger("sentence_transformers").level
    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)  # "creating a new one with mean pooling"
    try:
        location = resolve_model(settings.base_model)
        overrides = attention_dropout_override(location, settings.attention_dropout, settings.trust_remote_code)
        st = SentenceTransformer(location, trust_remote_code=settings.trust_remote_code, config_kwargs=overrides,
                                 device="cpu" if not torch.cuda.is_available() else None)  # fmt: skip
    finally:
        logging.getLogger("sentence_transformers").setLevel(quiet)
    if not any(isinstance(module, Normalize) for module in st):
        st.append(Normalize())  # saved with it, sentence-transformers users get the embeddings tunesmith serves
    return st


def _loss(data: PairData, st: Any) -> Any:
    from sentence_transformers import losses

    if data.shape == "scored-pairs":
        return losses.OnlineContrastiveLoss(st) if data.binary else losses.CoSENTLoss(st)
    return losses.MultipleNegativesRankingLoss(st)


def _st_files(st: Any) -> dict[str, str]:
    """The sentence-transformers configuration files of `st` (modules.json, pooling, ...), weights left out."""
    with tempfile.TemporaryDirectory() as folder:
        st.save(folder, create_model_card=False)
        return {f"model/{p.relative_to(folder)}": p.read_text(encoding="utf-8") for p in Path(folder).rglob("*")
                if p.is_file() and p.suffix != ".safetensors"}  # fmt: skip


def train(run: Run) -> TrainResult:
    """Fine-tune, evaluate (against the untuned base and BM25) and register a sentence-embedding model."""
    config, settings, log = run.config, run.settings, run.log
    data = load_pair_data(config)
    for issue in data.issues:
        log(str(issue))
    st = _sentence_transformer(settings)
    tokenizer, encoder = st.tokenizer, st[0].auto_model
    sides = {"scored-pairs": ("positive",), "pairs": ("positive",), "triplets": SIDES,
             "labelled-texts": ("positive",)}[data.shape]  # fmt: skip
    train_texts, train_labels = _examples(data, data.train, config.seed)
    val_texts, val_labels = _examples(data, data.validation, config.seed)
    lengths = [len(ids) for ids in tokenizer([t for ex in train_texts for t in ex][:20000])["input_ids"]]
    max_length = choose_max_length(lengths, min(MAX_LENGTH, model_max_length(tokenizer, encoder.config)),
                                   settings.max_length)  # fmt: skip
    pooling = pooling_of(resolve_model(settings.base_model))
    log(f"Data: {data.shape}, {len(data.train)} train / {len(data.validation)} validation / {len(data.test)} test rows; "
        f"loss {loss_name(data)}; texts up to {max_length} tokens.")  # fmt: skip

    untuned = Embedder.from_model(PooledEncoder(encoder, pooling).eval(), tokenizer, max_length)
    base_metrics, _ = evaluate(untuned.embed, data.shape, data.test)
    bm25 = evaluate_bm25(data.shape, data.test)
    headline = "spearman" if data.shape == "scored-pairs" else "mrr_at_10"
    log(f"Before fine-tuning, test {headline}: untuned {settings.base_model} {base_metrics.get(headline, 0):.4f}, "
        f"BM25 {bm25.get(headline, 0):.4f}.")  # fmt: skip

    checkpoint = run.checkpoint(data.fingerprint)
    float_labels = data.shape == "scored-pairs"
    trainer = run.trainer(
        PairLoss(st, _loss(data, st), sides, masked=data.shape == "labelled-texts"), tokenizer,
        _tokenized(tokenizer, train_texts, train_labels, sides, max_length),
        _tokenized(tokenizer, val_texts, val_labels, sides, max_length),
        collator=_collator(tokenizer, sides, float_labels), compute_metrics=None, select_by="loss",
    )  # fmt: skip
    model, minutes = run.fine_tune(trainer, checkpoint)
    if hasattr(model, "merge_and_unload"):  # LoRA: the adapter is merged, so the artifact is a plain encoder
        model = model.merge_and_unload()
    encoder = model.st[0].auto_model
    tuned = Embedder.from_model(PooledEncoder(encoder, pooling).eval(), tokenizer, max_length)
    metrics, errors = evaluate(tuned.embed, data.shape, data.test)
    validation_metrics, _ = evaluate(tuned.embed, data.shape, data.validation)
    centroid = _centroid(tuned, data.validation + data.test)
    log(f"Test {headline}: {metrics.get(headline, 0):.4f} fine-tuned, {base_metrics.get(headline, 0):.4f} untuned, "
        f"{bm25.get(headline, 0):.4f} BM25 ({metrics['n']} {'pairs' if float_labels else 'queries'}).")  # fmt: skip
    splits = {f"data/{what}.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in getattr(data, what))
              for what in ("train", "validation", "test")}  # fmt: skip
    report = _report(run.name, data, metrics, base_metrics, bm25, settings.base_model, len(errors))
    version = run.register_artifact(
        encoder, tokenizer,
        files={**splits, **_st_files(model.st)},
        evaluation={"test": metrics, "validation": validation_metrics, "baseline": bm25, "untuned": base_metrics,
                    "train_minutes": minutes},
        errors=errors,
        report=report,
        meta={
            "label_names": [], "max_length": max_length, "pooling": pooling, "normalize": True,
            "dimension": int(encoder.config.hidden_size), "centroid": centroid, "data_shape": data.shape, "loss": loss_name(data),
            "score_range": list(data.score_range) if data.score_range else None,
            "precision": "bf16" if run.bf16 else "fp32",
            "data": {"fingerprint": data.fingerprint, "train_file": config.data.train,
                     "sizes": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test)}},
        },
        metrics={k: v for k, v in metrics.items() if k != "n"},
    )  # fmt: skip
    return TrainResult(version, metrics, bm25, data.issues, minutes)


def _centroid(embedder: Embedder, rows: list[dict[str, Any]], limit: int = 2000) -> list[float]:
    """The normalised mean embedding of the held-out texts: the prediction log keeps each served text's cosine to
    it, and a falling cosine is traffic drifting away from what the model was scored on."""
    import numpy as np

    texts = list(dict.fromkeys(str(v) for r in rows for k, v in r.items() if k not in ("score", "label")))[:limit]
    if not texts:
        return []
    mean = embedder.embed(texts).mean(0)
    return [round(float(x), 6) for x in mean / max(float(np.linalg.norm(mean)), 1e-12)]


def _report(name: str, data: PairData, metrics: dict[str, Any], untuned: dict[str, Any], bm25: dict[str, Any],
            base: str, wrong: int) -> str:  # fmt: skip
    keys = ["spearman"] if data.shape == "scored-pairs" else ["mrr_at_10", "ndcg_at_10", "accuracy_at_1",
                                                               "recall_at_10"]  # fmt: skip
    rows = "\n".join(f"| {k} | {metrics.get(k, 0):.4f} | {untuned.get(k, 0):.4f} | {bm25.get(k, 0):.4f} |" for k in keys)
    what = ("pairs, by the Spearman correlation of cosine similarity with the given scores" if data.shape ==
            "scored-pairs" else f"queries, each ranking a corpus of {metrics.get('corpus', 0)} texts")  # fmt: skip
    return (f"# {name}: sentence similarity ({data.shape})\n\nOn {metrics['n']} test {what}.\n\n"
            f"| metric | fine-tuned | untuned {base} | BM25 |\n|---|---|---|---|\n{rows}\n\n"
            f"{wrong} test row(s) scored worst or not found first: see errors.jsonl.\n")


def evaluate_file(embedder: Embedder, path: str | Path, out_dir: str | Path, **_options: Any) -> dict[str, Any]:
    """Score an embedding model on a file of any sentence-similarity shape; write metrics, errors and report."""
    shape, rows, issues, _ = read_rows(path)
    clean = [{c: r[c] for c in COLUMNS[shape]} for r in rows]
    metrics, errors = evaluate(embedder.embed, shape, clean)
    bm25 = evaluate_bm25(shape, clean)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"test": metrics, "baseline": bm25}, indent=2), encoding="utf-8")
    (folder / "errors.jsonl").write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors))
    headline = "spearman" if shape == "scored-pairs" else "mrr_at_10"
    (folder / "report.md").write_text(
        f"# {embedder.meta.get('name', 'model')} on {Path(path).name}\n\n{headline} {metrics.get(headline, 0):.4f} "
        f"(BM25 {bm25.get(headline, 0):.4f}) over {metrics['n']} {shape} rows; the worst in errors.jsonl.\n",
        encoding="utf-8")  # fmt: skip
    return {"test": metrics, "baseline": bm25, "issues": [str(i) for i in issues]}
