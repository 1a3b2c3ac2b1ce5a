"""Fine-tune a text classifier: a thin layer over `transformers.Trainer`.

What this adds over a plain Trainer set-up, each measured on these 2-core CPUs (see
bench/train_speed.py): texts tokenized once and padded per batch to the batch's longest text,
batches grouped by length, bf16 autocast where the CPU supports it, a token limit taken from the
data rather than the model's 512. Around it: data checks, a TF-IDF baseline, a test report, and
registration of the result as a new immutable version.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.baseline import train_baseline
from tunesmith.config import RunConfig, TrainConfig, dump_config
from tunesmith.data import (
    ClassificationData,
    DataIssue,
    Split,
    check_lengths,
    check_unknown_tokens,
    load_classification_data,
)
from tunesmith.errors import ConfigError, DataError
from tunesmith.evaluation import classification_metrics, headline, multi_hot, tune_threshold, write_report
from tunesmith.inference import ARTIFACT_META, TextClassifier
from tunesmith.models import bf16_supported, load_classifier, load_tokenizer, model_max_length
from tunesmith.registry import ModelVersion, Registry

Log = Callable[[str], None]
SELECTION_METRIC = "selection_score"


@dataclass
class TrainResult:
    """What a training run produced."""

    version: ModelVersion
    metrics: dict[str, Any]  # test-split metrics of the fine-tuned model
    baseline: dict[str, Any]  # the same for the TF-IDF baseline
    issues: list[DataIssue] = field(default_factory=list)
    train_minutes: float = 0.0


class _ListDataset:
    """Pre-tokenized rows; the Trainer's length-grouped sampler reads `input_ids` lengths from them."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


def _encode(tokenizer: Any, split: Split, max_length: int, n_classes: int, multi_label: bool) -> _ListDataset:
    encoded = tokenizer(split.texts, truncation=True, max_length=max_length)
    rows = []
    for i, label in enumerate(split.labels):
        row = {key: values[i] for key, values in encoded.items()}
        if multi_label:
            target = np.zeros(n_classes, dtype=np.float32)
            target[list(label)] = 1.0
            row["labels"] = target.tolist()
        else:
            row["labels"] = int(label)
        rows.append(row)
    return _ListDataset(rows)


def choose_max_length(lengths: list[int], limit: int, wanted: int | None) -> int:
    """The configured token limit, or the longest training text rounded up to 8, within the model's limit.

    Length-grouped batches pad each batch only to its own longest text, so a generous limit costs little
    and nothing is cut that the model could have read.
    """
    if wanted is not None:
        return min(wanted, limit)
    longest = max(lengths, default=limit)
    return max(16, min(limit, int(math.ceil(longest / 8) * 8)))


def choose_epochs(n_train: int, batch_size: int, wanted: float | None) -> float:
    """The configured epochs, or 8 raised so a small dataset still gets ~300 steps (a few hundred rows
    at 8 epochs stop far from convergence); capped at 30. Early stopping usually ends sooner."""
    if wanted is not None:
        return wanted
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    return float(min(30, max(8, math.ceil(300 / steps_per_epoch))))


def _trainer_metrics(multi_label: bool) -> Callable[[Any], dict[str, float]]:
    from sklearn.metrics import accuracy_score, f1_score

    def compute(eval_pred: Any) -> dict[str, float]:
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        logits = logits.astype(np.float64)
        if multi_label:
            predicted = (logits >= 0).astype(np.int64)  # sigmoid(x) >= 0.5
            truth = labels.astype(np.int64)
            loss = float(np.mean(np.logaddexp(0, logits) - truth * logits))
            metrics = {
                "f1_micro": f1_score(truth, predicted, average="micro", zero_division=0),
                "f1_macro": f1_score(truth, predicted, average="macro", zero_division=0),
                "accuracy": accuracy_score(truth, predicted),
            }
            main = metrics["f1_micro"]
        else:
            predicted = logits.argmax(axis=-1)
            shifted = logits - logits.max(axis=-1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
            loss = float(-log_probs[np.arange(len(labels)), labels].mean())
            metrics = {
                "accuracy": accuracy_score(labels, predicted),
                "f1_macro": f1_score(labels, predicted, average="macro", zero_division=0),
            }
            main = metrics["f1_macro"]
        # Model selection and early stopping use the main F1, with ties broken by lower validation loss:
        # on small validation sets F1 saturates early, and the first checkpoint to reach it is undertrained.
        metrics[SELECTION_METRIC] = main + 1e-4 / (1.0 + loss)
        return metrics

    return compute


def _weighted_loss(data: ClassificationData) -> Callable[..., Any]:
    """Loss weighted by inverse class frequency (capped at 10x) for imbalanced data."""
    import torch

    n = len(data.label_names)
    if data.multi_label:
        positives = multi_hot(data.train.labels, n).sum(axis=0)
        weights = np.clip((len(data.train) - positives) / np.maximum(positives, 1), 1.0, 10.0)
    else:
        counts = np.bincount(np.asarray(data.train.labels), minlength=n)
        weights = np.clip(counts.max() / np.maximum(counts, 1), 1.0, 10.0)
    tensor = torch.tensor(weights, dtype=torch.float32)

    def loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits = outputs["logits"].float()
        if data.multi_label:
            return torch.nn.functional.binary_cross_entropy_with_logits(
                logits, labels.float(), pos_weight=tensor.to(logits.device)
            )
        return torch.nn.functional.cross_entropy(logits, labels, weight=tensor.to(logits.device))

    return loss


def _budget_callback(minutes: float) -> Any:
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        """Stop after a wall-clock budget, evaluating and saving first so the best model is kept."""

        def __init__(self) -> None:
            self.start = time.monotonic()
            self.stopped = False

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.monotonic()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not self.stopped and time.monotonic() - self.start > minutes * 60:
                self.stopped = True
                control.should_training_stop = True
                control.should_evaluate = True
                control.should_save = True

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.stopped:  # already evaluated and saved at the step where the budget ran out
                control.should_evaluate = False
                control.should_save = False

    return TimeBudget()


def _progress_callback(log: Log, bar: bool) -> Any:
    from transformers.trainer_callback import ProgressCallback

    class Progress(ProgressCallback):
        """A step bar (optional) and one line per evaluation, instead of a dict per logging step."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if bar:
                super().on_train_begin(args, state, control, **kwargs)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.training_bar is not None:
                super().on_step_end(args, state, control, **kwargs)

        def on_prediction_step(self, *args: Any, **kwargs: Any) -> None:
            pass

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if not logs or "eval_loss" not in logs:
                return
            scores = ", ".join(
                f"{k.removeprefix('eval_')} {v:.4f}" for k, v in logs.items()
                if k.startswith("eval_") and isinstance(v, float)
                and not k.endswith(("runtime", "per_second", SELECTION_METRIC))
            )  # fmt: skip
            line = f"epoch {logs.get('epoch', state.epoch):.2f}: validation {scores}"
            if self.training_bar is not None:
                self.training_bar.write(line)
            else:
                log(line)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.training_bar is not None:
                super().on_train_end(args, state, control, **kwargs)

    return Progress()


def default_name(config: RunConfig) -> str:
    if config.name:
        return config.name
    stem = Path(config.data.train or "model").name.split(".")[0]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "model"


def library_versions() -> dict[str, str]:
    versions = {}
    for package in ("tunesmith", "torch", "transformers", "tokenizers", "scikit-learn", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return versions


def _last_complete_checkpoint(folder: Path, log: Log) -> str | None:
    """The newest checkpoint that was written to the end; a process killed mid-save leaves a partial one."""
    if not folder.is_dir():
        return None
    found = sorted(
        (p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for checkpoint in found:
        # The Trainer writes trainer_state.json after the weights and optimizer state.
        try:
            json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
            return str(checkpoint)
        except (OSError, ValueError):
            pass
        log(f"Skipping {checkpoint.name}: it was not completely written (the run was stopped while saving it).")
        shutil.rmtree(checkpoint, ignore_errors=True)
    return None


def _prepare_run_dir(run_dir: Path, fingerprint: str, config: RunConfig, resume: bool, log: Log) -> str | None:
    """Set up the folder holding checkpoints; return the checkpoint to resume from, if any."""
    state_file = run_dir / "run.json"
    if resume:
        if not state_file.is_file():
            raise ConfigError(f"Nothing to resume: no interrupted run in {run_dir}. Run without --resume.")
        state = json.loads(state_file.read_text(encoding="utf-8"))
        if state["fingerprint"] != fingerprint:
            raise ConfigError(
                "The training data differs from the interrupted run's, so it cannot be resumed. "
                "Run without --resume to start afresh."
            )
        checkpoint = _last_complete_checkpoint(run_dir / "checkpoints", log)
        if checkpoint is None:
            log("The interrupted run saved no checkpoint yet; starting from the first step.")
        else:
            log(f"Resuming from {checkpoint}.")
        return checkpoint
    if run_dir.exists():
        log(f"Discarding an unfinished earlier run in {run_dir} (pass --resume to continue it instead).")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    state_file.write_text(json.dumps({"fingerprint": fingerprint, "config": config.model_dump(mode="json")}))
    return None


def build_trainer(
    model: Any,
    tokenizer: Any,
    settings: TrainConfig,
    run_dir: Path,
    train_set: Any,
    val_set: Any,
    *,
    collator: Any,
    compute_metrics: Callable[[Any], dict[str, float]],
    bf16: bool,
    log: Log,
    progress: bool,
    compute_loss_func: Callable[..., Any] | None = None,
) -> Any:
    """The Trainer every task uses: AdamW + linear warmup, eval and save each epoch, the best checkpoint kept
    (by `SELECTION_METRIC`, which `compute_metrics` must return), early stopping, budgets, our progress lines."""
    import torch
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    steps_per_epoch = math.ceil(len(train_set) / settings.batch_size)
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=choose_epochs(len(train_set), settings.batch_size, settings.epochs),
        max_steps=settings.max_steps or -1,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.eval_batch_size,
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a ratio of all steps in transformers 5
        weight_decay=settings.weight_decay,
        lr_scheduler_type="linear",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model=SELECTION_METRIC,
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=max(1, steps_per_epoch // 5),
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        seed=settings.seed,
        data_seed=settings.seed,
        report_to=[],
        disable_tqdm=True,  # replaced by _progress_callback
        dataloader_num_workers=0,
    )
    callbacks: list[Any] = []
    if settings.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience))
    if settings.max_minutes:
        callbacks.append(_budget_callback(settings.max_minutes))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics,
        compute_loss_func=compute_loss_func,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_progress_callback(log, progress))
    return trainer


def begin_run(
    config: RunConfig, registry: Registry | None, offsets_for: str | None = None
) -> tuple[RunConfig, Registry, Any]:
    """The run's config with its name settled, the registry, and the base model's tokenizer (which must be a
    fast one when `offsets_for` names a task that maps tokens back to characters)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight loading/saving bars; the training bar is ours
    config = config.model_copy(update={"name": default_name(config)})
    tokenizer = load_tokenizer(config.train.base_model, config.train.trust_remote_code)
    if offsets_for and not getattr(tokenizer, "is_fast", False):
        raise DataError(f"{config.train.base_model} has no fast tokenizer; {offsets_for} needs its character offsets.")
    return config, registry or Registry(), tokenizer


def run_trainer(trainer: Any, checkpoint: str | None) -> tuple[Any, float]:
    """Train (from `checkpoint` if resuming); return the best model without accelerate's autocast wrapper, and
    the minutes it took. Metrics must come from the model as it is saved and served (fp32)."""
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoint)
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    return model, (time.perf_counter() - started) / 60


def register_artifact(
    registry: Registry,
    config: RunConfig,
    model: Any,
    tokenizer: Any,
    *,
    files: dict[str, str],
    meta: dict[str, Any],
    metrics: dict[str, Any],
    evaluation: dict[str, Any],
    errors: list[dict[str, Any]],
    report: str,
) -> ModelVersion:
    """Write a complete artifact (weights as safetensors, tokenizer, `files`, metrics.json from `evaluation`,
    errors.jsonl, report.md, config.yaml, tunesmith.json) to staging and register it as the next version."""
    files = {
        **files,
        "metrics.json": json.dumps(evaluation, indent=2),
        "errors.jsonl": "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors),
        "report.md": report,
    }
    with registry.staging() as staged:
        model.save_pretrained(staged / "model", safe_serialization=True)
        tokenizer.save_pretrained(staged / "model")
        for relative, content in files.items():
            (staged / relative).parent.mkdir(parents=True, exist_ok=True)
            (staged / relative).write_text(content, encoding="utf-8")
        (staged / "config.yaml").write_text(dump_config(config), encoding="utf-8")
        common = {"format": 1, "task": config.task, "name": config.name, "base_model": config.train.base_model,
                  "created_at": datetime.now(UTC).isoformat(), "metrics": metrics,
                  "library_versions": library_versions()}  # fmt: skip
        (staged / ARTIFACT_META).write_text(json.dumps({**common, **meta}, indent=2), encoding="utf-8")
        return registry.register(str(config.name), staged, config.task, metrics=metrics)


def train(
    config: RunConfig,
    *,
    registry: Registry | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Log = print,
) -> TrainResult:
    """Train, evaluate and register a text classifier as described by `config`."""
    from transformers import DataCollatorWithPadding, set_seed
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight loading/saving bars; the training bar is ours

    registry = registry or Registry()
    settings = config.train
    name = default_name(config)
    config = config.model_copy(update={"name": name})

    data = load_classification_data(config.data, seed=config.seed)
    tokenizer = load_tokenizer(settings.base_model, settings.trust_remote_code)
    set_seed(settings.seed)  # before the new head's weights are drawn
    model = load_classifier(settings.base_model, data.label_names, data.multi_label, settings.trust_remote_code)
    limit = model_max_length(tokenizer, model.config)
    token_ids = tokenizer(data.train.texts, add_special_tokens=False)["input_ids"]
    lengths = [len(ids) + tokenizer.num_special_tokens_to_add() for ids in token_ids]
    max_length = choose_max_length(lengths, limit, settings.max_length)
    for issue in (
        check_lengths(data.train.texts, lengths, max_length),
        check_unknown_tokens(token_ids, tokenizer.unk_token_id, settings.base_model),
    ):
        if issue is not None:
            data.issues.append(issue)
    for issue in data.issues:
        log(str(issue))
    kind = "multi-label" if data.multi_label else "single-label"
    log(
        f"Data: {len(data.train)} train / {len(data.validation)} validation / {len(data.test)} test texts, "
        f"{len(data.label_names)} classes ({kind}); text column {data.text_column!r}, label column "
        f"{data.label_column!r}; max_length {max_length} tokens."
    )

    baseline = train_baseline(data, seed=settings.seed)
    log(f"TF-IDF baseline trained in {baseline.seconds:.1f} s.")

    run_dir = registry.home / "runs" / name
    checkpoint = _prepare_run_dir(run_dir, data.fingerprint, config, resume, log)
    n_classes = len(data.label_names)
    train_set = _encode(tokenizer, data.train, max_length, n_classes, data.multi_label)
    val_set = _encode(tokenizer, data.validation, max_length, n_classes, data.multi_label)
    use_bf16 = settings.precision == "bf16" or (settings.precision == "auto" and bf16_supported())
    metric = "f1_micro" if data.multi_label else "f1_macro"
    trainer = build_trainer(
        model, tokenizer, settings, run_dir, train_set, val_set,
        collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=_trainer_metrics(data.multi_label),
        compute_loss_func=_weighted_loss(data) if settings.class_weights else None,
        bf16=use_bf16, log=log, progress=progress,
    )  # fmt: skip
    log(f"Fine-tuning {settings.base_model} ({'bf16 autocast' if use_bf16 else 'fp32'}) ...")
    model, minutes = run_trainer(trainer, checkpoint)
    classifier = TextClassifier(model, tokenizer, data.label_names, multi_label=data.multi_label, max_length=max_length)
    val_probs = classifier.predict_proba(data.validation.texts, settings.eval_batch_size)
    threshold = tune_threshold(multi_hot(data.validation.labels, n_classes), val_probs) if data.multi_label else 0.5
    test_probs = classifier.predict_proba(data.test.texts, settings.eval_batch_size)
    validation_metrics = classification_metrics(
        data.validation.labels, val_probs, data.label_names, data.multi_label, threshold
    )

    with registry.staging() as staged:
        report = write_report(
            staged,
            name=name,
            test_texts=data.test.texts,
            test_labels=data.test.labels,
            probs=test_probs,
            baseline_probs=baseline.probabilities,
            # Thresholds are tuned on validation for both models, never on the test split they are scored on.
            baseline_threshold=tune_threshold(
                multi_hot(data.validation.labels, n_classes), baseline.validation_probabilities
            )
            if data.multi_label
            else 0.5,
            label_names=data.label_names,
            multi_label=data.multi_label,
            threshold=threshold,
            log_history=trainer.state.log_history,
            metric=metric,
            extra={
                "validation": headline(validation_metrics),
                "train_minutes": minutes,
                "baseline_seconds": baseline.seconds,
                "epochs_run": trainer.state.epoch,
                "best_checkpoint_metric": trainer.state.best_metric,
            },
        )
        model.save_pretrained(staged / "model", safe_serialization=True)
        tokenizer.save_pretrained(staged / "model")
        _write_splits(staged / "data", data)
        (staged / "config.yaml").write_text(dump_config(config), encoding="utf-8")
        meta = _artifact_meta(config, data, report, threshold=threshold, max_length=max_length, bf16=use_bf16)
        (staged / ARTIFACT_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        version = registry.register(name, staged, config.task, metrics=headline(report["test"]))
    shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints are only needed to resume an unfinished run
    return TrainResult(version, report["test"], report["baseline"], data.issues, minutes)


def _artifact_meta(
    config: RunConfig,
    data: ClassificationData,
    report: dict[str, Any],
    *,
    threshold: float,
    max_length: int,
    bf16: bool,
) -> dict[str, Any]:
    """What `tunesmith.json` records: enough to load, use and explain the model without anything else."""
    return {
        "format": 1,
        "task": config.task,
        "name": config.name,
        "label_names": data.label_names,
        "multi_label": data.multi_label,
        "threshold": threshold,
        "max_length": max_length,
        "base_model": config.train.base_model,
        "precision": "bf16" if bf16 else "fp32",
        "created_at": datetime.now(UTC).isoformat(),
        "metrics": headline(report["test"]),
        "baseline_metrics": headline(report["baseline"]),
        "data": {
            "fingerprint": data.fingerprint,
            "train_file": config.data.train,
            "text_column": data.text_column,
            "label_column": data.label_column,
            "sizes": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test)},
        },
        "library_versions": library_versions(),
    }


def _write_splits(folder: Path, data: ClassificationData) -> None:
    """Keep the held-out splits with the model, to re-check exports and compare versions on the same rows."""
    folder.mkdir()
    for what in ("validation", "test"):
        split: Split = getattr(data, what)
        with (folder / f"{what}.jsonl").open("w", encoding="utf-8") as handle:
            for text, label in zip(split.texts, split.labels, strict=True):
                names = [data.label_names[i] for i in label] if data.multi_label else data.label_names[label]
                handle.write(json.dumps({"text": text, "label": names}, ensure_ascii=False) + "\n")
