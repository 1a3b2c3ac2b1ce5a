"""The ONNX export check of a tagger: agreement is the share of validation sentences whose every word
keeps its tag (word agreement beside it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.export import CALIBRATION_ITEMS, ExportCheck, single_feeds, timed
from tunesmith.inference import onnx_runner
from tunesmith.tasks.token_classification.metrics import repair_tags, seqeval_report
from tunesmith.tasks.token_classification.predictor import EntityTagger
from tunesmith.tasks.token_classification.sentences import Sentence


def _read_split(path: Path) -> list[Sentence]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Sentence(r["tokens"], r["tags"]) for r in rows]


class TaggerCheck(ExportCheck):
    """Agreement = share of validation sentences whose every word keeps its tag (word agreement beside it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reference = ref = EntityTagger.from_artifact(path, backend="pytorch", attn_implementation="eager")
        self.model, self.pad_token_id = ref.model, ref.tokenizer.pad_token_id or 0
        self.sentences = _read_split(path / "data" / "validation.jsonl")
        self.test_sentences = _read_split(path / "data" / "test.jsonl")
        self.n, self.test_n = len(self.sentences), len(self.test_sentences)
        self.reference_probs = self._probs(ref, self.sentences)
        self.reference_test, self.reference_seconds = timed(lambda: self._probs(ref, self.test_sentences))
        self.reference_metrics = self._score(self.reference_probs)
        self.output_axes = {"logits": {0: "batch", 1: "sequence"}}
        trace = ref.windows([["a", "short", "one"], ["a", "longer", "sentence", ",", "so", "there", "is", "padding"]])
        self.trace_feeds = {k: trace[k] for k in ("input_ids", "attention_mask")}
        sample = [s.tokens for s in self.sentences[:CALIBRATION_ITEMS]] or [["calibration"]]
        self.calibration_feeds = single_feeds(ref.windows(sample, padding=False), list(self.trace_feeds))

    def candidate(self, onnx_file: Path, variant: str) -> EntityTagger:
        ref = self.reference
        return EntityTagger(onnx_runner(onnx_file), ref.tokenizer, ref.label_names, ref.max_length, ref.meta,
                            f"onnx-{variant}")  # fmt: skip

    @staticmethod
    def _probs(tagger: EntityTagger, sentences: list[Sentence]) -> list[np.ndarray]:
        return tagger.word_probabilities([s.tokens for s in sentences]) if sentences else []

    def _score(self, probs: list[np.ndarray]) -> dict[str, float]:
        if not probs:
            return {}
        predicted = [repair_tags([self.reference.label_names[j] for j in p.argmax(1)]) for p in probs]
        report = seqeval_report([s.tags for s in self.sentences], predicted)
        return {k: report[k] for k in ("f1", "precision", "recall")}

    @staticmethod
    def _agreement(reference: list[np.ndarray], probs: list[np.ndarray]) -> tuple[float, float]:
        if not probs:
            return 1.0, 1.0
        same = [r.argmax(1) == p.argmax(1) for r, p in zip(reference, probs, strict=True)]
        return float(np.mean([s.all() for s in same])), float(np.concatenate(same).mean())

    def compare(self, candidate: EntityTagger) -> dict[str, Any]:
        probs = self._probs(candidate, self.sentences)
        test_probs, seconds = timed(lambda: self._probs(candidate, self.test_sentences))
        metrics = self._score(probs)
        agreement, word_agreement = self._agreement(self.reference_probs, probs)
        differences = [np.abs(r - p).max() for r, p in zip(self.reference_probs, probs, strict=True) if r.size]
        return {
            "agreement": agreement,
            "word_agreement": word_agreement,
            "test_agreement": self._agreement(self.reference_test, test_probs)[0],
            "max_probability_difference": float(max(differences, default=0.0)),
            "metrics": metrics,
            "metric_delta": {k: metrics[k] - self.reference_metrics[k] for k in metrics},
            "texts_per_second": self.test_n / seconds if self.test_n and seconds > 0 else None,
        }


