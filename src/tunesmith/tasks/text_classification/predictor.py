"""Predict with a trained text classifier, in input order, with PyTorch or with an ONNX Runtime export.

Texts are sorted by token length and cut into batches of similar length (much less padding), and the
results are put back in the caller's order. The Trainer's own `predict` is not used for this: with
length-grouped sampling it returns rows in another order.

`OnnxClassifier` imports neither torch nor transformers: a server that has an export starts fast and
small. Its tokenizer is the `tokenizers` library reading the artifact's `tokenizer.json`, the same
backend the transformers fast tokenizer drives, so token ids are identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.artifact import choose_variant, read_export, read_meta
from tunesmith.inference import length_batches, onnx_session, softmax


@dataclass
class Prediction:
    """One text's prediction: the label (or labels, for multi-label), its score, and every class's score."""

    label: str | list[str]
    score: float
    scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score, "scores": self.scores}


class BaseClassifier:
    """What every backend shares: label decisions and the public `predict`."""

    backend = "base"
    task = "text-classification"

    def __init__(
        self,
        label_names: Sequence[str],
        multi_label: bool = False,
        threshold: float | list[float] = 0.5,
        max_length: int = 128,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.label_names = list(label_names)
        self.multi_label = multi_label
        self.threshold = threshold
        self.max_length = max_length
        self.meta = meta or {}

    def predict_logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Raw scores, shape (len(texts), n_classes), row i for texts[i]."""
        raise NotImplementedError

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities (softmax, or sigmoid for multi-label), row i for texts[i]."""
        return self.activate(self.predict_logits(texts, batch_size))

    def decide(self, probs: np.ndarray) -> list[Prediction]:
        results = []
        for row in probs:
            scores = {name: float(p) for name, p in zip(self.label_names, row, strict=True)}
            if self.multi_label:
                limits = np.broadcast_to(np.asarray(self.threshold, dtype=float), row.shape)  # one, or one per label
                chosen = [n for (n, p), limit in zip(scores.items(), limits, strict=True) if p >= limit]
                top = float(max(row))
                results.append(Prediction(chosen, top if not chosen else min(scores[n] for n in chosen), scores))
            else:
                best = int(np.argmax(row))
                results.append(Prediction(self.label_names[best], float(row[best]), scores))
        return results

    def predict(self, texts: str | Sequence[str], batch_size: int = 64) -> list[Prediction]:
        """Predict one text or a list of texts; always returns a list, in input order."""
        if isinstance(texts, str):
            texts = [texts]
        return self.decide(self.predict_proba(texts, batch_size=batch_size))

    def activate(self, logits: np.ndarray, function: str | None = None) -> np.ndarray:
        """Probabilities from logits: the model's own function (softmax, sigmoid for multi-label) or the one named."""
        function = function or ("sigmoid" if self.multi_label else "softmax")
        logits = logits.astype(np.float64)
        if function == "none":
            return logits.astype(np.float32)
        if function == "sigmoid":
            return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        return softmax(logits)


class TextClassifier(BaseClassifier):
    """A fine-tuned text classifier run by PyTorch, with its tokenizer and label map."""

    backend = "pytorch"

    def __init__(self, model: Any, tokenizer: Any, label_names: Sequence[str], **kwargs: Any) -> None:
        super().__init__(label_names, **kwargs)
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def from_artifact(cls, path: str | Path, **model_kwargs: Any) -> TextClassifier:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = Path(path)
        meta = read_meta(path)
        from tunesmith import methods

        if meta.get("architecture") == "embedding-head":  # few-shot and zero-shot models
            from tunesmith.tasks.text_classification import embedding

            model = embedding.load(path, meta, **model_kwargs)
        else:
            model = methods.load(AutoModelForSequenceClassification, path, **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path / "model")
        return cls(model, tokenizer, meta["label_names"], **_settings(meta))

    def predict_logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        import torch

        texts = [str(t) for t in texts]
        logits = np.zeros((len(texts), len(self.label_names)), dtype=np.float32)
        if not texts:
            return logits
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        self.model.eval()
        with torch.inference_mode():
            for rows in length_batches([len(ids) for ids in encoded["input_ids"]], batch_size):
                features = [{k: encoded[k][i] for k in encoded} for i in rows]
                batch = self.tokenizer.pad(features, return_tensors="pt")
                batch = {k: v.to(self.model.device) for k, v in batch.items()}
                logits[rows] = self.model(**batch).logits.float().cpu().numpy()
        return logits


class OnnxClassifier(BaseClassifier):
    """The same classifier run by ONNX Runtime from an export (fp32 or int8)."""

    backend = "onnx"

    def __init__(
        self, session: Any, tokenizer: Any, label_names: Sequence[str], variant: str, pad_id: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(label_names, **kwargs)
        self.session = session
        self.tokenizer = tokenizer
        self.variant = variant
        self.backend = f"onnx-{variant}"
        self.input_names = {i.name for i in session.get_inputs()}
        self.pad_id = pad_id
        tokenizer.no_padding()
        tokenizer.enable_truncation(self.max_length)

    @classmethod
    def from_artifact(cls, path: str | Path, variant: str | None = None, threads: int | None = None) -> OnnxClassifier:
        path = Path(path)
        export = read_export(path)
        if export is None:
            from tunesmith.errors import ModelError

            raise ModelError(f"{path} has no ONNX export. Create one with `tunesmith export NAME@VERSION`.")
        variant = variant or export["default"]
        file = Path(export["folder"]) / export["variants"][variant]["file"]
        return cls.from_file(path, file, variant, export["pad_token_id"], threads)

    @classmethod
    def from_file(
        cls, path: Path, onnx_file: Path, variant: str, pad_id: int, threads: int | None = None
    ) -> OnnxClassifier:
        from tokenizers import Tokenizer

        session = onnx_session(onnx_file, threads)
        tokenizer = Tokenizer.from_file(str(path / "model" / "tokenizer.json"))
        meta = read_meta(path)
        return cls(session, tokenizer, meta["label_names"], variant, pad_id, **_settings(meta))

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch([str(t) for t in texts])]

    def predict_logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        logits = np.zeros((len(texts), len(self.label_names)), dtype=np.float32)
        if not len(texts):
            return logits
        ids = self.encode(texts)
        for rows in length_batches([len(i) for i in ids], batch_size):
            width = max(len(ids[i]) for i in rows)
            input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                input_ids[r, : len(ids[i])] = ids[i]
                mask[r, : len(ids[i])] = 1
            feeds = {"input_ids": input_ids, "attention_mask": mask}
            if "token_type_ids" in self.input_names:
                feeds["token_type_ids"] = np.zeros_like(input_ids)
            logits[rows] = self.session.run(["logits"], feeds)[0]
        return logits


def _settings(meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "multi_label": meta["multi_label"],
        "threshold": meta.get("threshold", 0.5),
        "max_length": meta["max_length"],
        "meta": meta,
    }


class BaselineClassifier(BaseClassifier):
    """A TF-IDF + logistic regression model (`--method baseline`), run by scikit-learn and numpy."""

    backend = "scikit-learn"

    def __init__(self, model: Any, label_names: Sequence[str], **kwargs: Any) -> None:
        super().__init__(label_names, **kwargs)
        self.model = model

    @classmethod
    def from_artifact(cls, path: str | Path) -> BaselineClassifier:
        from tunesmith.tasks.text_classification import baseline

        path = Path(path)
        meta = read_meta(path)
        return cls(baseline.TfidfModel.load(path / baseline.FOLDER), meta["label_names"], **_settings(meta))

    def predict_logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Scores whose softmax (sigmoid for multi-label) gives back the model's probabilities."""
        probs = np.clip(self.model.probabilities([str(t) for t in texts]), 1e-12, 1 - 1e-12)
        logits = np.log(probs) - (np.log1p(-probs) if self.multi_label else 0.0)
        return logits.astype(np.float32)


def load_predictor(path: str | Path, backend: str = "auto", threads: int | None = None) -> BaseClassifier:
    """Load a text classifier with the fastest backend that passed its export check (see `choose_variant`)."""
    from tunesmith.tasks.text_classification.baseline import ARCHITECTURE

    if read_meta(path).get("architecture") == ARCHITECTURE:  # scikit-learn is its only runtime, and fast
        return BaselineClassifier.from_artifact(path)
    variant = choose_variant(path, backend)
    if variant is None:
        return TextClassifier.from_artifact(path)
    return OnnxClassifier.from_artifact(path, variant=variant, threads=threads)
