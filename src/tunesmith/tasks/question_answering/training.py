"""Fine-tuning an extractive QA model inside the shared `training.fit`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.inference import torch_runner
from tunesmith.models import load_with_new_head, model_max_length
from tunesmith.tasks.base import TrainResult
from tunesmith.tasks.question_answering.baseline import score_baseline
from tunesmith.tasks.question_answering.examples import (
    Example,
    load_qa_data,
    normalize_answer,
    read_examples,
    squad_scores,
)
from tunesmith.tasks.question_answering.predictor import DOC_STRIDE, MAX_LENGTH, OUTPUTS, AnswerFinder, features
from tunesmith.training import Run


def _trainer_metrics() -> Callable[[Any], dict[str, float]]:
    from tunesmith.training import SELECTION_METRIC

    def compute(eval_pred: Any) -> dict[str, float]:
        (start_logits, end_logits), (starts, ends) = eval_pred.predictions, eval_pred.label_ids
        exact = (start_logits.argmax(-1) == starts) & (end_logits.argmax(-1) == ends)
        # Window-level exact spans are a cheap stand-in for answer EM while training; the real EM/F1 come after.
        return {"span_accuracy": float(exact.mean()), SELECTION_METRIC: float(exact.mean())}

    return compute


def evaluate_examples(finder: AnswerFinder, examples: list[Example]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    answers = finder.answer([e.question for e in examples], [e.context for e in examples])
    predictions = [a[0].text for a in answers]
    scores = squad_scores(examples, predictions)
    errors = [
        {"id": e.id, "question": e.question, "answers": [a for a, _ in e.answers], "predicted": p}
        for e, p in zip(examples, predictions, strict=True)
        if normalize_answer(p) not in {normalize_answer(a) for a, _ in e.answers or [("", 0)]}
    ]
    return scores, errors


def train(run: Run) -> TrainResult:
    """Fine-tune, evaluate (exact match, F1) and register an extractive question-answering model."""
    from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding

    config, settings, log, name = run.config, run.settings, run.log, run.name
    tokenizer = run.tokenizer(offsets_for="question answering")
    data = load_qa_data(config)
    model = load_with_new_head(AutoModelForQuestionAnswering, settings.base_model,
                               trust_remote_code=settings.trust_remote_code,
                               attention_dropout=settings.attention_dropout)  # fmt: skip
    max_length = min(settings.max_length or MAX_LENGTH, model_max_length(tokenizer, model.config))
    stride = min(DOC_STRIDE, max_length // 3)
    for issue in data.issues:
        log(str(issue))
    log(f"Data: {len(data.train)} train / {len(data.validation)} validation / {len(data.test)} test questions"
        f"{' (some unanswerable)' if data.allow_no_answer else ''}; windows of {max_length} tokens, stride {stride}.")  # fmt: skip

    baseline = score_baseline(data.test)
    log(f"Lexical baseline: test F1 {baseline.metrics['f1']:.4f} ({baseline.seconds:.1f} s).")

    checkpoint = run.checkpoint(data.fingerprint)
    trainer = run.trainer(
        model, tokenizer,
        features(tokenizer, data.train, max_length, stride, labels=True),
        features(tokenizer, data.validation, max_length, stride, labels=True),
        collator=DataCollatorWithPadding(tokenizer), compute_metrics=_trainer_metrics(),
    )  # fmt: skip
    model, minutes = run.fine_tune(trainer, checkpoint)
    finder = AnswerFinder(torch_runner(model, OUTPUTS), tokenizer, max_length, data.allow_no_answer)
    metrics, errors = evaluate_examples(finder, data.test)
    validation_metrics, _ = evaluate_examples(finder, data.validation)
    log(f"Test: exact match {metrics['exact_match']:.4f}, F1 {metrics['f1']:.4f} ({metrics['n']} questions).")
    splits = {
        f"data/{what}.jsonl": "".join(
            json.dumps({"id": e.id, "question": e.question, "context": e.context,
                        "answers": {"text": [a for a, _ in e.answers], "answer_start": [s for _, s in e.answers]}},
                       ensure_ascii=False) + "\n"
            for e in getattr(data, what)
        )
        for what in ("train", "validation", "test")
    }  # fmt: skip
    report = (
        f"# {name}: extractive question answering\n\nOn {metrics['n']} test questions: exact match "
        f"{metrics['exact_match']:.4f}, F1 {metrics['f1']:.4f} (SQuAD normalisation). Validation: exact match "
        f"{validation_metrics['exact_match']:.4f}, F1 {validation_metrics['f1']:.4f}. The lexical baseline (a "
        f"sliding window of word matches) on the same test questions: exact match "
        f"{baseline.metrics['exact_match']:.4f}, F1 {baseline.metrics['f1']:.4f}.\n\n{len(errors)} test "
        "question(s) answered wrongly: see errors.jsonl.\n"
    )
    version = run.register_artifact(
        model, tokenizer,
        files=splits,
        evaluation={"test": metrics, "validation": validation_metrics, "baseline": baseline.metrics,
                    "train_minutes": minutes},
        errors=errors,
        report=report,
        meta={
            "label_names": [], "max_length": max_length, "allow_no_answer": data.allow_no_answer,
            "precision": "bf16" if run.bf16 else "fp32",
            "data": {"fingerprint": data.fingerprint, "train_file": config.data.train,
                     "sizes": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test)}},
        },
        metrics={k: metrics[k] for k in ("exact_match", "f1")},
    )  # fmt: skip
    return TrainResult(version, metrics, baseline.metrics, data.issues, minutes)


def evaluate_file(finder: AnswerFinder, path: str | Path, out_dir: str | Path, **_columns: Any) -> dict[str, Any]:
    """Score a QA model on a SQuAD JSON or JSONL file; write metrics.json, errors.jsonl and report.md."""
    examples, issues = read_examples(path)
    metrics, errors = evaluate_examples(finder, examples)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"test": metrics}, indent=2), encoding="utf-8")
    (folder / "errors.jsonl").write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors))
    (folder / "report.md").write_text(
        f"# {finder.meta.get('name', 'model')} on {Path(path).name}\n\nExact match {metrics['exact_match']:.4f}, "
        f"F1 {metrics['f1']:.4f} over {metrics['n']} questions; wrong answers in errors.jsonl.\n", encoding="utf-8")  # fmt: skip
    return {"test": metrics, "issues": [str(i) for i in issues]}
