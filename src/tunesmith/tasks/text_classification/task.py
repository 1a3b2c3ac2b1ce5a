"""Text classification (binary, multi-class, multi-label) behind the task contract.

The package: `training` (fine-tuning inside `training.fit`), `fewshot` (SetFit-style), `zeroshot` (labels
from their descriptions), `embedding` (the head those two train), `baseline` (TF-IDF), `predictor`
(PyTorch and ONNX classifiers), `evaluation` (metrics, reports, plots), `checking` (the export check) and
`active_learning` (which texts to label next).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tunesmith.tasks.base import METHODS, Summary, Task, TrainResult

if TYPE_CHECKING:
    from tunesmith.export import ExportCheck
    from tunesmith.tasks.text_classification.predictor import BaseClassifier


class TextClassification(Task):
    name = "text-classification"
    peft_task_type = "SEQ_CLS"
    main_metric = "f1_macro"
    headline_metrics = ("accuracy", "f1_macro")
    warm_up = "warm-up"
    request = "texts"
    training = "tunesmith.tasks.text_classification.training"
    baseline_name = "TF-IDF baseline"
    compared_metric = "f1_macro"
    below_baseline_hint = ("To serve the better model, register the TF-IDF one: the same command with "
        "--method baseline. To make fine-tuning pay, {language}try --method lora or --method fewshot on small data, "
        "or more steps (--epochs, --max-minutes).")
    data_shape = "labeled-texts"
    fewshot_hint = ("To serve the better model, register the TF-IDF one: the same command with --method baseline. "
        "This run used few-shot tuning: {language}with more than a few dozen examples a class, --method full usually "
        "beats it.")
    language_hint = ("check that the base model reads the language of the texts (--model "
        "embedded:multilingual-e5-small for non-English data), and ")
    methods: ClassVar[tuple[str, ...]] = (*METHODS, "fewshot", "baseline")
    reads_pooler = True
    freezes_embeddings = True
    answers_with_label = True
    replay_stratify = "label"

    def below_baseline_advice(self, meta: dict[str, Any]) -> str:
        from tunesmith.models import MULTILINGUAL_MODEL

        hint = self.fewshot_hint if meta.get("method") == "fewshot" else self.below_baseline_hint
        return hint.format(language="" if meta.get("base_model") == MULTILINGUAL_MODEL else self.language_hint)

    def load(self, path: str | Path, backend: str = "auto", threads: int | None = None) -> BaseClassifier:
        from tunesmith.tasks.text_classification.predictor import load_predictor

        return load_predictor(path, backend, threads)

    def evaluate_file(self, predictor: Any, data: str | Path, out_dir: str | Path, **options: Any) -> dict[str, Any]:
        """Options: `text_column`, `label_column` (detected when not named)."""
        from tunesmith.tasks.text_classification.evaluation import evaluate

        return evaluate(predictor, data, out_dir, **options)

    def evaluation_lines(self, result: dict[str, Any]) -> list[str]:
        metrics = result["test"]
        lines = []
        if result.get("skipped_rows"):
            lines.append(f"warning: {result['skipped_rows']} row(s) carry labels the model does not know "
                         f"({', '.join(result['unknown_labels'][:5])}); they were left out.")  # fmt: skip
        lines.append(", ".join(f"{k} {metrics[k]:.4f}" for k in ("accuracy", "f1_macro", "f1_micro", "f1_weighted")))
        lines.append(f"{metrics['n']} texts scored.")
        return lines

    def predict_lines(self, predictor: Any, inputs: Sequence[str], **options: Any) -> Iterator[str]:
        for text, result in zip(inputs, predictor.predict(list(inputs), options.get("batch_size", 64)), strict=True):
            label = ", ".join(result.label) if isinstance(result.label, list) else result.label
            yield f"{label}\t{result.score:.3f}\t{text}"

    def predict_records(self, predictor: Any, inputs: Sequence[str], **options: Any) -> list[dict[str, Any]]:
        results = predictor.predict(list(inputs), options.get("batch_size", 64))
        return [{"text": text, **r.to_dict()} for text, r in zip(inputs, results, strict=True)]

    def predict_file(self, predictor: Any, path: Path, output: Path, *, text_column: str | None = None,
                     batch_size: int = 64) -> int:  # fmt: skip
        """Predict every row of a table file; write it with the predictions (.csv or .jsonl); return the count."""
        from tunesmith.data import joined_from, read_text_column, trained_text_column
        from tunesmith.tasks.text_classification.evaluation import write_predictions

        frame, column = read_text_column(path, text_column, trained_text_column(predictor.meta) or None)
        results = predictor.predict(frame[column].astype(str).tolist(), batch_size)
        parts = joined_from(column)
        if len(parts) > 1 and set(parts) <= set(frame.columns):  # built for the model from several: not written back
            frame = frame.drop(columns=[column])
        write_predictions(frame, results, output)
        return len(results)

    def export_check(self, path: str | Path) -> ExportCheck:
        from tunesmith.artifact import read_meta
        from tunesmith.errors import ModelError
        from tunesmith.tasks.text_classification.baseline import ARCHITECTURE
        from tunesmith.tasks.text_classification.checking import ClassifierCheck

        if read_meta(path).get("architecture") == ARCHITECTURE:
            raise ModelError(f"{path} is a TF-IDF model (--method baseline): it has no network to export, and "
                             "scikit-learn already serves it faster than ONNX serves a transformer.")  # fmt: skip

        return ClassifierCheck(Path(path))

    def serve_compute(self, predictor: Any, items: list[Any], batch_size: int) -> np.ndarray:
        """One forward pass for the server: logits, row i for items[i]."""
        return predictor.predict_logits(items, batch_size)

    def serve_outputs(self, predictor: Any, outputs: Any, all_scores: bool = False) -> list[dict[str, Any]]:
        out = []
        for p in predictor.decide(predictor.activate(outputs)):
            item: dict[str, Any] = {"label": p.label, "score": p.score}
            if all_scores:
                item["scores"] = p.scores
            out.append(item)
        return out

    def hf_outputs(self, predictor: Any, outputs: Any, single: bool, top_k: int | None, function: str | None) -> Any:
        """One list of {label, score} per input, most probable first (`top_k` of them)."""
        probs = predictor.activate(outputs, function)
        labels = predictor.label_names
        k = min(top_k or len(labels), len(labels))
        return [[{"label": labels[i], "score": float(row[i])} for i in np.argsort(-row, kind="stable")[:k]]
                for row in probs]  # fmt: skip

    def counted_labels(self, predictor: Any, outputs: Any) -> Iterable[str]:
        if predictor.multi_label:  # a multi-label decision is a set; counting argmax would mislead
            return []
        return [predictor.label_names[int(i)] for i in outputs.argmax(axis=1)]

    def log_outputs(self, predictor: Any, outputs: Any) -> list[dict[str, Any]]:
        probs = predictor.activate(outputs)
        return [{"label": p.label, "confidence": round(p.score, 5), "scores": row}
                for p, row in zip(predictor.decide(probs), np.round(probs, 5).tolist(), strict=True)]  # fmt: skip

    def reference(self, path: Path, split: str) -> tuple[list[Any], list[Any] | None]:
        import json

        file = Path(path) / "data" / f"{split}.jsonl"
        if not file.is_file():
            return [], None
        rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [r["text"] for r in rows], [r["label"] for r in rows]

    def is_correct(self, output: dict[str, Any], answer: Any) -> bool:
        label = output.get("label")
        if isinstance(answer, list) or isinstance(label, list):
            return sorted(label if isinstance(label, list) else [label]) == sorted(answer if isinstance(answer, list)
                                                                                   else [answer])  # fmt: skip
        return bool(label == answer)

    def check_feedback(self, meta: dict[str, Any], item: Any, answer: Any) -> Any:
        from tunesmith.errors import DataError

        multi = bool(meta.get("multi_label"))
        if multi and isinstance(answer, str):
            answer = [answer]
        if multi:
            if not isinstance(answer, list) or not all(isinstance(a, str) and a.strip() for a in answer):
                raise DataError('This model is multi-label: send the correct labels as a list of names, e.g. '
                                '{"answer": ["billing", "bug"]} ([] for none).')  # fmt: skip
            return sorted({a.strip() for a in answer})
        if not isinstance(answer, str) or not answer.strip():
            raise DataError('Send the correct label as a non-empty string, e.g. {"answer": "refund"}; this model '
                            f"knows {', '.join(meta.get('label_names', [])[:10])}.")  # fmt: skip
        # A label the model does not know is kept: it is how a new class enters the next training run.
        return answer.strip()

    def feedback_rows(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"text": r["input"], "label": r["answer"]} for r in records]

    def summary(self, result: TrainResult) -> Summary:
        keys = ("accuracy", "f1_macro", "f1_micro", "f1_weighted")
        return Summary(
            title=f"{result.version.ref} - test split ({result.metrics['n']} texts)",
            columns=["metric", "fine-tuned", "TF-IDF baseline"],
            rows=[[k, f"{result.metrics[k]:.4f}", f"{result.baseline[k]:.4f}"] for k in keys],
        )
