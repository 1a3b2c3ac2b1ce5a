"""The ONNX export check of a QA model: agreement is the share of validation questions whose best answer
is the same span."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.export import ExportCheck, single_feeds, timed
from tunesmith.inference import onnx_runner
from tunesmith.tasks.question_answering.examples import Example, read_examples, squad_scores
from tunesmith.tasks.question_answering.predictor import OUTPUTS, Answer, AnswerFinder, features


class FinderCheck(ExportCheck):
    """Agreement = share of validation questions whose best answer is the same span."""

    def __init__(self, path: Path) -> None:
        self.reference = ref = AnswerFinder.from_artifact(path, backend="pytorch", attn_implementation="eager")
        self.model, self.pad_token_id = ref.model, ref.tokenizer.pad_token_id or 0
        self.examples = self._read(path / "data" / "validation.jsonl")
        self.test_examples = self._read(path / "data" / "test.jsonl")
        self.n, self.test_n = len(self.examples), len(self.test_examples)
        self.reference_answers = self._best(ref, self.examples)
        self.reference_test, self.reference_seconds = timed(lambda: self._best(ref, self.test_examples))
        self.reference_metrics = self._score(self.reference_answers)
        self.output_axes = {name: {0: "batch", 1: "sequence"} for name in OUTPUTS}
        trace = ref.tokenizer(["Who?", "Where is it?"], ["A short context.", "A longer context, so there is padding."],
                              padding=True, return_tensors="np")  # fmt: skip
        self.trace_feeds = {k: trace[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in trace}
        encoded = features(ref.tokenizer, self.examples or [Example("0", "Who?", "Calibration.", [])],
                           ref.max_length, ref.stride, labels=False)  # fmt: skip
        self.calibration_feeds = single_feeds(encoded, list(self.trace_feeds))

    @staticmethod
    def _read(path: Path) -> list[Example]:
        return read_examples(path)[0] if path.is_file() and path.stat().st_size else []

    @staticmethod
    def _best(finder: AnswerFinder, examples: list[Example]) -> list[Answer]:
        return [a[0] for a in finder.answer([e.question for e in examples], [e.context for e in examples])]

    def _score(self, answers: list[Answer]) -> dict[str, float]:
        if not answers:
            return {}
        scores = squad_scores(self.examples, [a.text for a in answers])
        return {k: scores[k] for k in ("exact_match", "f1")}

    @staticmethod
    def _agreement(reference: list[Answer], answers: list[Answer]) -> float:
        same = [(r.start, r.end) == (a.start, a.end) for r, a in zip(reference, answers, strict=True)]
        return float(np.mean(same)) if same else 1.0

    def candidate(self, onnx_file: Path, variant: str) -> AnswerFinder:
        ref = self.reference
        return AnswerFinder(onnx_runner(onnx_file), ref.tokenizer, ref.max_length, ref.allow_no_answer, ref.meta,
                            f"onnx-{variant}")  # fmt: skip

    def compare(self, candidate: AnswerFinder) -> dict[str, Any]:
        answers = self._best(candidate, self.examples)
        test_answers, seconds = timed(lambda: self._best(candidate, self.test_examples))
        metrics = self._score(answers)
        differences = [abs(r.score - a.score) for r, a in zip(self.reference_answers, answers, strict=True)]
        return {
            "agreement": self._agreement(self.reference_answers, answers),
            "test_agreement": self._agreement(self.reference_test, test_answers),
            "max_probability_difference": float(max(differences, default=0.0)),
            "metrics": metrics,
            "metric_delta": {k: metrics[k] - self.reference_metrics[k] for k in metrics},
            "texts_per_second": self.test_n / seconds if self.test_n and seconds > 0 else None,
        }


