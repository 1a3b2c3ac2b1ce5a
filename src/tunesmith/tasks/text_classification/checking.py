"""The ONNX export check of a text classifier: how to trace, calibrate and compare it with PyTorch.

Agreement is the share of validation texts whose label (or label set) is unchanged; the test split gives
a second agreement figure and the throughput of each variant.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.export import CALIBRATION_ITEMS, ExportCheck, timed
from tunesmith.tasks.text_classification.evaluation import classification_metrics
from tunesmith.tasks.text_classification.predictor import OnnxClassifier, TextClassifier


def _read_split(path: Path, label_names: Sequence[str], multi_label: bool) -> tuple[list[str], list[Any]]:
    if not path.is_file():
        return [], []
    index = {name: i for i, name in enumerate(label_names)}
    texts, labels = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            texts.append(row["text"])
            labels.append([index[n] for n in row["label"]] if multi_label else index[row["label"]])
    return texts, labels


class ClassifierCheck(ExportCheck):
    """Agreement = share of validation texts whose label (or label set) is unchanged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reference = TextClassifier.from_artifact(path, attn_implementation="eager")
        ref = self.reference
        self.model, self.pad_token_id = ref.model, ref.tokenizer.pad_token_id or 0
        self.texts, self.labels = _read_split(path / "data" / "validation.jsonl", ref.label_names, ref.multi_label)
        self.test_texts, _ = _read_split(path / "data" / "test.jsonl", ref.label_names, ref.multi_label)
        self.n, self.test_n = len(self.texts), len(self.test_texts)
        self.reference_probs = ref.predict_proba(self.texts)
        self.reference_test, self.reference_seconds = timed(lambda: ref.predict_proba(self.test_texts))
        self.reference_metrics = self._score(self.labels, self.reference_probs)
        self.output_axes = {"logits": {0: "batch"}}
        self.trace_feeds = dict(ref.tokenizer(["a short text", "a somewhat longer text, so the batch has padding"],
                                              padding=True, return_tensors="np"))  # fmt: skip
        sample = (self.texts or self.test_texts or ["calibration"])[:CALIBRATION_ITEMS]
        encoded = ref.tokenizer(sample, truncation=True, max_length=ref.max_length)
        self.calibration_feeds = [{k: np.array([encoded[k][i]], dtype=np.int64) for k in self.trace_feeds}
                                  for i in range(len(sample))]  # fmt: skip

    def candidate(self, onnx_file: Path, variant: str) -> OnnxClassifier:
        return OnnxClassifier.from_file(self.path, onnx_file, variant, self.pad_token_id)

    def _decisions(self, probs: np.ndarray) -> np.ndarray:
        return probs >= self.reference.threshold if self.reference.multi_label else probs.argmax(axis=1)

    def _agreement(self, reference: np.ndarray, probs: np.ndarray) -> float:
        if not len(probs):
            return 1.0
        same = self._decisions(reference) == self._decisions(probs)
        return float(same.all(axis=1).mean() if self.reference.multi_label else same.mean())

    def _score(self, labels: list[Any], probs: np.ndarray) -> dict[str, float]:
        ref = self.reference
        if not labels:
            return {}
        metrics = classification_metrics(labels, probs, ref.label_names, ref.multi_label, ref.threshold)
        return {k: metrics[k] for k in ("accuracy", "f1_macro", "f1_micro")}

    def compare(self, candidate: OnnxClassifier) -> dict[str, Any]:
        probs = candidate.predict_proba(self.texts)
        metrics = self._score(self.labels, probs)
        test_probs, seconds = timed(lambda: candidate.predict_proba(self.test_texts))
        return {
            "agreement": self._agreement(self.reference_probs, probs),
            "test_agreement": self._agreement(self.reference_test, test_probs),
            "max_probability_difference": float(np.abs(probs - self.reference_probs).max()) if len(probs) else 0.0,
            "metrics": metrics,
            "metric_delta": {k: metrics[k] - self.reference_metrics[k] for k in metrics},
            "texts_per_second": self.test_n / seconds if self.test_n and seconds > 0 else None,
        }
