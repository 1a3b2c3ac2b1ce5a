"""Predict with a trained classifier, in input order.

Texts are sorted by length before batching so each batch pads to a similar length (much less
wasted compute), and the results are put back in the caller's order. The Trainer's own
`predict` is not used for this: with length-grouped sampling it returns rows in another order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ARTIFACT_META = "tunesmith.json"


@dataclass
class Prediction:
    """One text's prediction: the label (or labels, for multi-label), its score, and every class's score."""

    label: str | list[str]
    score: float
    scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score, "scores": self.scores}


class TextClassifier:
    """A fine-tuned text classifier with its tokenizer and label map."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        label_names: Sequence[str],
        multi_label: bool = False,
        threshold: float = 0.5,
        max_length: int = 128,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.label_names = list(label_names)
        self.multi_label = multi_label
        self.threshold = threshold
        self.max_length = max_length
        self.meta = meta or {}

    @classmethod
    def from_artifact(cls, path: str | Path) -> TextClassifier:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        path = Path(path)
        meta = json.loads((path / ARTIFACT_META).read_text(encoding="utf-8"))
        model = AutoModelForSequenceClassification.from_pretrained(path / "model")
        tokenizer = AutoTokenizer.from_pretrained(path / "model")
        return cls(
            model,
            tokenizer,
            meta["label_names"],
            multi_label=meta["multi_label"],
            threshold=meta.get("threshold", 0.5),
            max_length=meta["max_length"],
            meta=meta,
        )

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities, shape (len(texts), n_classes), row i for texts[i]."""
        import torch

        texts = [str(t) for t in texts]
        probs = np.zeros((len(texts), len(self.label_names)), dtype=np.float32)
        if not texts:
            return probs
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        order = np.argsort([len(ids) for ids in encoded["input_ids"]], kind="stable")
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                features = [{k: encoded[k][i] for k in encoded} for i in rows]
                batch = self.tokenizer.pad(features, return_tensors="pt")
                batch = {k: v.to(self.model.device) for k, v in batch.items()}
                logits = self.model(**batch).logits.float()
                scores = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
                probs[rows] = scores.cpu().numpy()
        return probs

    def decide(self, probs: np.ndarray) -> list[Prediction]:
        results = []
        for row in probs:
            scores = {name: float(p) for name, p in zip(self.label_names, row, strict=True)}
            if self.multi_label:
                chosen = [n for n, p in scores.items() if p >= self.threshold]
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
