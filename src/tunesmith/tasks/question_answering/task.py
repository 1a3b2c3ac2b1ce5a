"""Extractive question answering: find the answer to a question as a span of its context.

Inputs: SQuAD v1.1 / v2.0 JSON (`{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}`) and JSONL
with `question`, `context` and `answers` (`{"text": [...], "answer_start": [...]}` as Hugging Face datasets
write it, or a list of `{"text", "answer_start"}`); an empty answer list means "no answer" (SQuAD v2).

Contexts longer than the token limit are cut into windows overlapping by `doc_stride` tokens; each window
is trained to point at the answer if it holds all of it, else at [CLS] ("not here"). At prediction time
the best span over all windows wins; for data with unanswerable questions the model answers "" when [CLS]
scores higher than the best span. Scores: exact match and F1 with SQuAD's official answer normalisation.

The package: `examples` (reading, splitting, SQuAD scores), `predictor` (the answer finder), `training`
and `checking` (the export check).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import DataError
from tunesmith.tasks.base import Summary, Task, TrainResult

if TYPE_CHECKING:
    from tunesmith.export import ExportCheck
    from tunesmith.tasks.question_answering.predictor import Answer, AnswerFinder


class QuestionAnswering(Task):
    name = "question-answering"
    peft_task_type = "QUESTION_ANS"
    main_metric = "f1"
    headline_metrics = ("exact_match", "f1")
    warm_up = ("warm-up?", "warm-up")
    request = "question"
    training = "tunesmith.tasks.question_answering.training"
    baseline_name = "lexical baseline"
    compared_metric = "f1"
    below_baseline_hint = ("Try more steps (--epochs, --max-minutes) or a base model already tuned for "
        "extractive QA.")
    data_shape = "questions"

    def load(self, path: str | Path, backend: str = "auto", threads: int | None = None) -> AnswerFinder:
        from tunesmith.tasks.question_answering.predictor import AnswerFinder

        return AnswerFinder.from_artifact(path, backend, threads)

    def evaluate_file(self, predictor: Any, data: str | Path, out_dir: str | Path, **options: Any) -> dict[str, Any]:
        from tunesmith.tasks.question_answering.training import evaluate_file

        return evaluate_file(predictor, data, out_dir)

    def _answers(self, predictor: Any, inputs: Sequence[str], context: str | None) -> list[Any]:
        if not context:
            raise DataError('A question-answering model needs --context "the text holding the answer".')
        return predictor.answer(list(inputs), [context] * len(inputs))

    def predict_lines(self, predictor: Any, inputs: Sequence[str], **options: Any) -> Iterator[str]:
        for question, answers in zip(inputs, self._answers(predictor, inputs, options.get("context")), strict=True):
            a = answers[0]
            yield f"{a.text or '(no answer)'}\t[{a.start}:{a.end}]\t{a.score:.3f}\t{question}"

    def predict_records(self, predictor: Any, inputs: Sequence[str], **options: Any) -> list[dict[str, Any]]:
        found = self._answers(predictor, inputs, options.get("context"))
        return [{"question": q, "answer": answers[0].to_dict()} for q, answers in zip(inputs, found, strict=True)]

    def export_check(self, path: str | Path) -> ExportCheck:
        from tunesmith.tasks.question_answering.checking import FinderCheck

        return FinderCheck(Path(path))

    def serve_compute(self, predictor: Any, items: list[Any], batch_size: int) -> list[list[Answer]]:
        """One server batch of (question, context) pairs: the best answers of each, best first."""
        from tunesmith.tasks.question_answering.predictor import MAX_ANSWERS

        return predictor.answer([q for q, _ in items], [c for _, c in items], top_k=MAX_ANSWERS, batch_size=batch_size)

    def log_outputs(self, predictor: Any, outputs: Any) -> list[dict[str, Any]]:
        return [{"answer": a[0].text, "start": a[0].start, "end": a[0].end, "confidence": round(a[0].score, 5),
                 "figures": {"answer_chars": len(a[0].text), "no_answer": float(not a[0].text)}}
                for a in outputs]  # fmt: skip

    def reference(self, path: Path, split: str) -> tuple[list[Any], list[Any] | None]:
        from tunesmith.tasks.question_answering.examples import read_examples

        file = Path(path) / "data" / f"{split}.jsonl"
        if not file.is_file() or not file.stat().st_size:
            return [], None
        examples = read_examples(file)[0]
        return [(e.question, e.context) for e in examples], [[text for text, _ in e.answers] for e in examples]

    def is_correct(self, output: dict[str, Any], answer: Any) -> bool:
        from tunesmith.tasks.question_answering.examples import normalize_answer

        truths = [a if isinstance(a, str) else a["text"] for a in (answer if isinstance(answer, list) else [answer])]
        given = normalize_answer(output.get("answer", ""))
        return any(given == normalize_answer(t) for t in truths) if truths else not given

    def check_feedback(self, meta: dict[str, Any], item: Any, answer: Any) -> Any:
        context = item["context"] if isinstance(item, dict) else item[1]
        if isinstance(answer, str):
            answer = {"text": answer}
        if not isinstance(answer, dict) or not isinstance(answer.get("text", answer.get("answer")), str):
            raise DataError('Send the correct answer as {"text": span of the context, "answer_start": offset} '
                            '({"text": ""} when the context holds no answer).')  # fmt: skip
        text = answer.get("text", answer.get("answer"))
        if not text:
            return {"text": "", "answer_start": -1}
        start = answer.get("answer_start", answer.get("start"))
        if start is None:
            start = context.find(text)
        if not isinstance(start, int) or context[start : start + len(text)] != text:
            raise DataError(f"The answer {text[:80]!r} is not a span of the context at offset {start}: send the exact "
                            "characters of the context and where they start (answer_start).")  # fmt: skip
        return {"text": text, "answer_start": start}

    def feedback_rows(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows = []
        for r in records:
            item, answer = r["input"], r["answer"]
            found = {"text": [answer["text"]], "answer_start": [answer["answer_start"]]} if answer["text"] else \
                {"text": [], "answer_start": []}
            rows.append({"question": item["question"], "context": item["context"], "answers": found})
        return rows

    def summary(self, result: TrainResult) -> Summary:
        m, base = result.metrics, result.baseline
        rows = [[name, f"{m[key]:.4f}", f"{base[key]:.4f}" if key in base else "-"]
                for name, key in (("exact match", "exact_match"), ("F1", "f1"))]  # fmt: skip
        return Summary(f"{result.version.ref} - test split ({m['n']} questions)",
                       ["metric", "fine-tuned", "lexical baseline"], rows)  # fmt: skip
