"""Fine-tuning a token classifier inside the shared `training.fit`: sub-word labels, windows, seqeval."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.data import DataIssue
from tunesmith.inference import torch_runner
from tunesmith.models import load_with_new_head, model_max_length
from tunesmith.tasks.base import TrainResult
from tunesmith.tasks.token_classification.baseline import train_baseline
from tunesmith.tasks.token_classification.metrics import repair_tags, seqeval_report
from tunesmith.tasks.token_classification.predictor import EntityTagger, stride_for
from tunesmith.tasks.token_classification.sentences import Sentence, load_token_data, normalize_tags, read_sentences
from tunesmith.training import Run


def encode(
    tokenizer: Any, sentences: list[Sentence], label2id: dict[str, int], max_length: int
) -> list[dict[str, Any]]:
    """Windows of at most `max_length` tokens; each word's first sub-token carries its tag (others: -100)."""
    encoded = tokenizer(
        [s.tokens for s in sentences], is_split_into_words=True, truncation=True, max_length=max_length,
        stride=stride_for(max_length), return_overflowing_tokens=True,
    )  # fmt: skip
    rows = []
    for window, sentence_index in enumerate(encoded["overflow_to_sample_mapping"]):
        tags = sentences[sentence_index].tags
        labels, previous = [], None
        for word in encoded.word_ids(window):
            labels.append(-100 if word is None or word == previous else label2id.get(tags[word], 0))
            previous = word
        rows.append({"input_ids": encoded["input_ids"][window], "attention_mask": encoded["attention_mask"][window],
                     "labels": labels})  # fmt: skip
    return rows


def _trainer_metrics(label_names: list[str]) -> Callable[[Any], dict[str, float]]:
    from tunesmith.training import SELECTION_METRIC

    def compute(eval_pred: Any) -> dict[str, float]:
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        predicted = logits.argmax(-1)
        true_tags, pred_tags = [], []
        for p_row, l_row in zip(predicted, labels, strict=True):
            keep = l_row != -100
            true_tags.append([label_names[i] for i in l_row[keep]])
            pred_tags.append([label_names[i] for i in p_row[keep]])
        report = seqeval_report(true_tags, pred_tags)
        shifted = logits - logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        mask = labels != -100
        loss = float(-np.take_along_axis(log_probs, np.where(mask, labels, 0)[..., None], -1)[..., 0][mask].mean())
        metrics = {k: report[k] for k in ("f1", "precision", "recall")}
        metrics[SELECTION_METRIC] = report["f1"] + 1e-4 / (1.0 + loss)  # ties broken by lower loss, as for text
        return metrics

    return compute


def train(run: Run) -> TrainResult:
    """Fine-tune, evaluate (seqeval, entity level) and register a token classifier."""
    from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification

    config, settings, log, name = run.config, run.settings, run.log, run.name
    tokenizer = run.tokenizer(offsets_for="token classification")
    data = load_token_data(config)
    label2id = {t: i for i, t in enumerate(data.label_names)}
    model = load_with_new_head(
        AutoModelForTokenClassification, settings.base_model, num_labels=len(data.label_names),
        id2label=dict(enumerate(data.label_names)), label2id=label2id, trust_remote_code=settings.trust_remote_code,
        attention_dropout=settings.attention_dropout,
    )  # fmt: skip
    limit = model_max_length(tokenizer, model.config)
    lengths = [len(ids) for ids in tokenizer([s.tokens for s in data.train], is_split_into_words=True)["input_ids"]]
    max_length = min(settings.max_length or limit, limit, max(16, int(np.ceil(max(lengths) / 8) * 8)))
    long = sum(n > max_length for n in lengths)
    if long:
        data.issues.append(DataIssue("warning", "long_sentences", f"{long} training sentence(s) are longer than "
                                     f"{max_length} tokens; they are split into overlapping windows."))  # fmt: skip
    for issue in data.issues:
        log(str(issue))
    if config.data.inspect:
        from tunesmith.quality import summary_lines

        summary_lines(config, run.task.data_shape, log)
    types = sorted({t[2:] for t in data.label_names if t != "O"})
    log(f"Data: {len(data.train)} train / {len(data.validation)} validation / {len(data.test)} test sentences, "
        f"{len(types)} entity types ({', '.join(types)}); tags {data.scheme}; max_length {max_length} tokens.")  # fmt: skip

    baseline = train_baseline(data.train, data.test)
    log(f"CRF baseline trained in {baseline.seconds:.1f} s (test F1 {baseline.metrics['f1']:.4f}).")

    checkpoint = run.checkpoint(data.fingerprint)
    trainer = run.trainer(
        model, tokenizer,
        encode(tokenizer, data.train, label2id, max_length), encode(tokenizer, data.validation, label2id, max_length),
        collator=DataCollatorForTokenClassification(tokenizer), compute_metrics=_trainer_metrics(data.label_names),
    )  # fmt: skip
    model, minutes = run.fine_tune(trainer, checkpoint)
    tagger = EntityTagger(torch_runner(model, ["logits"]), tokenizer, data.label_names, max_length)
    metrics, errors = evaluate_sentences(tagger, data.test)
    validation_metrics, _ = evaluate_sentences(tagger, data.validation)
    splits = {
        f"data/{what}.jsonl": "".join(json.dumps({"tokens": s.tokens, "tags": s.tags}, ensure_ascii=False) + "\n"
                                      for s in getattr(data, what))
        for what in ("train", "validation", "test")
    }  # fmt: skip
    version = run.register_artifact(
        model, tokenizer,
        files=splits,
        evaluation={"test": metrics, "validation": validation_metrics, "baseline": baseline.metrics,
                    "train_minutes": minutes, "baseline_seconds": baseline.seconds},
        errors=errors,
        report=report_markdown(name, metrics, len(errors), baseline.metrics),
        meta={
            "label_names": data.label_names, "max_length": max_length, "precision": "bf16" if run.bf16 else "fp32",
            "tag_scheme_in_data": data.scheme,
            "data": {"fingerprint": data.fingerprint, "train_file": config.data.train,
                     "sizes": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test)}},
        },
        metrics={k: metrics[k] for k in ("f1", "precision", "recall", "f1_macro", "token_accuracy")},
    )  # fmt: skip
    return TrainResult(version, metrics, baseline.metrics, data.issues, minutes)


def evaluate_sentences(tagger: EntityTagger, sentences: list[Sentence]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """seqeval metrics over `sentences`, and the sentences whose entities the model got wrong."""
    probs = tagger.word_probabilities([s.tokens for s in sentences]) if sentences else []
    predicted = [[tagger.label_names[j] for j in p.argmax(1)] for p in probs]
    # A stray I- after O is read as opening an entity, as group_entities does at prediction time.
    predicted = [repair_tags(p) for p in predicted]
    metrics = seqeval_report([s.tags for s in sentences], predicted)
    errors = [
        {"tokens": s.tokens, "gold": s.tags, "predicted": p}
        for s, p in zip(sentences, predicted, strict=True)
        if s.tags != p
    ]
    return metrics, errors


def report_markdown(name: str, metrics: dict[str, Any], n_errors: int, baseline: dict[str, Any] | None = None) -> str:
    """The report; with `baseline` (the CRF's metrics on the same split) each type's row shows its F1 too."""
    lines = [
        f"# {name}: token classification", "",
        f"Entity-level (seqeval, strict IOB2) on {metrics['n']} test sentences: precision {metrics['precision']:.4f}, "
        f"recall {metrics['recall']:.4f}, **F1 {metrics['f1']:.4f}** (macro over types {metrics['f1_macro']:.4f}).",
    ]  # fmt: skip
    if baseline:
        lines.append(f"The CRF baseline (word features, same split): F1 {baseline['f1']:.4f}.")
    lines += ["", "| type | precision | recall | F1 | CRF F1 | support |" if baseline else
              "| type | precision | recall | F1 | support |", "|---|---|---|---|---|---|" if baseline else "|---|---|---|---|---|"]  # fmt: skip
    for kind, m in sorted(metrics["per_type"].items()):
        crf = f" {baseline['per_type'].get(kind, {}).get('f1', 0.0):.4f} |" if baseline else ""
        lines.append(f"| {kind} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} |{crf} {m['support']} |")
    lines += ["", f"{n_errors} test sentence(s) with at least one wrong tag: see errors.jsonl.", ""]
    return "\n".join(lines)


def evaluate_file(tagger: EntityTagger, path: str | Path, out_dir: str | Path, **_columns: Any) -> dict[str, Any]:
    """Score a tagger on a labeled file (any input format above); write metrics.json, errors.jsonl, report.md."""
    sentences = read_sentences(path)
    scheme = normalize_tags(sentences, str(path))
    metrics, errors = evaluate_sentences(tagger, sentences)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"test": metrics}, indent=2), encoding="utf-8")
    (folder / "errors.jsonl").write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors))
    (folder / "report.md").write_text(report_markdown(str(tagger.meta.get("name", "model")), metrics, len(errors)))
    issues = [] if scheme == "IOB2" else [f"warning: {path}: tags are {scheme}; converted to IOB2."]
    return {"test": metrics, "issues": issues}
