"""Fine-tuning a text classifier (binary, multi-class, multi-label) inside the shared `training.fit`.

What this adds to the shared skeleton: texts tokenized once, a token limit taken from the data, optional
class weights, a TF-IDF baseline on the same split, multi-label thresholds tuned per label on validation, and a
test report with plots. The held-out splits are kept in the artifact so exports and later versions are
checked on the same rows. Few-shot (SetFit-style) training takes the `fewshot` path instead of the Trainer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tunesmith.config import RunConfig
from tunesmith.models import load_classifier, model_max_length, prior_bias, resolve_model
from tunesmith.tasks.base import TrainResult
from tunesmith.tasks.text_classification import embedding
from tunesmith.tasks.text_classification.evaluation import (
    MIN_POSITIVES,
    classification_metrics,
    headline,
    multi_hot,
    tune_thresholds,
    write_report,
)
from tunesmith.tasks.text_classification.predictor import TextClassifier
from tunesmith.training import SELECTION_METRIC, SMALL_VALIDATION, ListDataset, Run, choose_max_length

if TYPE_CHECKING:  # pandas and scikit-learn load only to train, never in a server
    from tunesmith.data import ClassificationData, Split

FEWSHOT_HINT = 16  # at most this many examples in the smallest class: suggest fewshot
FEWSHOT_DEFAULT = 16  # at most this many a class on average: few-shot is the default method
MANY_PER_CLASS = 500  # training examples a class (on average) from which fewer, larger epochs suffice


def _encode(tokenizer: Any, split: Split, max_length: int, n_classes: int, multi_label: bool) -> ListDataset:
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
    return ListDataset(rows)


def _trainer_metrics(multi_label: bool) -> Callable[[Any], dict[str, float]]:
    from sklearn.metrics import accuracy_score, f1_score

    def compute(eval_pred: Any) -> dict[str, float]:
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        logits = logits.astype(np.float64)
        if multi_label:
            truth = labels.astype(np.int64)
            probs = 1 / (1 + np.exp(-logits))
            # Scored at the thresholds the model will be used with, tuned here as they are on validation at
            # the end: at 0.5 a model early in training (or a budget's one epoch) predicts no label at all, and
            # every checkpoint would tie at F1 0.
            predicted = (probs >= np.asarray(tune_thresholds(truth, probs)[0])).astype(np.int64)
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


def _prior_bias(data: ClassificationData) -> list[float] | None:
    """Multi-label data's head starts at each label's log-odds (see `prior_bias`). A single-label head keeps bias
    0: started at the class shares, TREC's macro-F1 fell from 0.958 to 0.797 (accuracy 0.962 -> 0.946; the AVX2
    EPYC, defaults), the rare classes lost."""
    if not data.multi_label:
        return None
    n = len(data.label_names)
    return prior_bias(multi_hot(data.train.labels, n).sum(axis=0), len(data.train))


def _new_model(settings: Any, data: ClassificationData) -> Any:
    """The model to fine-tune: the base's encoder under a new linear head on its `[CLS]` vector or its embedding
    where `embedding.pooling_for` measured that better (a sentence-embedding base with multi-label data or a
    frozen encoder), or the architecture's own sequence-classification head. peft adapters keep the
    architecture's head: peft wraps transformers' model classes."""
    bias = None if settings.class_weights else _prior_bias(data)
    pooling = embedding.pooling_for(settings.base_model, settings.classifier_pooling,
                                    frozen=settings.method == "frozen", multi_label=data.multi_label)
    if pooling is None or settings.method not in ("full", "frozen"):
        return load_classifier(settings.base_model, data.label_names, data.multi_label, settings.trust_remote_code,
                               head_bias=bias, attention_dropout=settings.attention_dropout)  # fmt: skip
    return embedding.fresh(settings.base_model, data.label_names, pooling=pooling, multi_label=data.multi_label,
                           bias=bias, trust_remote_code=settings.trust_remote_code,
                           attention_dropout=settings.attention_dropout)  # fmt: skip


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


def train(run: Run) -> TrainResult:
    """Train, evaluate and register a text classifier as `run.config` describes."""
    from transformers import DataCollatorWithPadding

    config, settings, log, name = run.config, run.settings, run.log, run.name
    from tunesmith.data import check_lengths, check_unknown_tokens, load_classification_data
    from tunesmith.tasks.text_classification.baseline import train_baseline

    data = load_classification_data(config.data, seed=config.seed)
    if settings.method == "baseline":
        return _register_baseline(run, data)
    folded = _fold_small_validation(run, data)
    settings = _size_defaults(run, data)
    tokenizer = run.tokenizer()
    fewshot = settings.method == "fewshot"
    if fewshot:
        from transformers import AutoConfig

        model: Any = None
        model_config = AutoConfig.from_pretrained(resolve_model(settings.base_model))
    else:
        model = _new_model(settings, data)
        model_config = model.config
    limit = model_max_length(tokenizer, model_config)
    token_ids = tokenizer(data.train.texts, add_special_tokens=False)["input_ids"]
    lengths = [len(ids) + tokenizer.num_special_tokens_to_add() for ids in token_ids]
    max_length = choose_max_length(lengths, limit, settings.max_length)
    for issue in (
        check_lengths(data.train.texts, lengths, max_length),
        check_unknown_tokens(token_ids, tokenizer.unk_token_id, settings.base_model),
    ):
        if issue is not None:
            data.issues.append(issue)
    _announce_checks(run, data)
    kind = "multi-label" if data.multi_label else "single-label"
    log(
        f"Data: {len(data.train)} train{' (the validation rows among them)' if folded else ''} / "
        f"{len(data.validation)} validation / {len(data.test)} test texts, "
        f"{len(data.label_names)} classes ({kind}); text column {data.text_column!r}, label column "
        f"{data.label_column!r}; max_length {max_length} tokens."
    )

    per_class = _examples_per_class(data)
    if per_class <= FEWSHOT_HINT and settings.method == "full":
        log(f"hint: the smallest class has {per_class} training examples; with this little data --method fewshot "
            "(SetFit-style) can be more accurate than full fine-tuning (docs/methods.md has the measurements).")  # fmt: skip
    baseline = train_baseline(data, seed=settings.seed)
    log(f"TF-IDF baseline trained in {baseline.seconds:.1f} s.")

    n_classes = len(data.label_names)
    use_bf16 = run.bf16
    metric = "f1_micro" if data.multi_label else "f1_macro"
    if fewshot:
        use_bf16 = False
        from tunesmith.tasks.text_classification import fewshot as few

        model, details = few.fit(settings.base_model, tokenizer, data.train.texts, data.train.labels, n_classes,
                                 data.multi_label, settings, max_length, log)  # fmt: skip
        minutes, log_history = details.pop("train_minutes"), []
        extra: dict[str, Any] = {"fewshot": details}
    else:
        checkpoint = run.checkpoint(data.fingerprint)
        train_set = _encode(tokenizer, data.train, max_length, n_classes, data.multi_label)
        val_set = _encode(tokenizer, data.validation, max_length, n_classes, data.multi_label)
        trainer = run.trainer(
            model, tokenizer, train_set, val_set, collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=_trainer_metrics(data.multi_label),
            compute_loss_func=_weighted_loss(data) if settings.class_weights else None,
        )  # fmt: skip
        model, minutes = run.fine_tune(trainer, checkpoint)
        log_history = trainer.state.log_history
        extra = {"epochs_run": trainer.state.epoch, "best_checkpoint_metric": trainer.state.best_metric}
    classifier = TextClassifier(model, tokenizer, data.label_names, multi_label=data.multi_label, max_length=max_length)
    val_probs = classifier.predict_proba(data.validation.texts, settings.eval_batch_size)
    threshold: float | list[float] = 0.5
    if data.multi_label:
        threshold, rare = tune_thresholds(multi_hot(data.validation.labels, n_classes), val_probs)
        if rare:
            log(f"Thresholds: {len(rare)} of {n_classes} labels have fewer than {MIN_POSITIVES} validation examples, "
                f"too few to tune a threshold on ({', '.join(data.label_names[j] for j in rare[:8])}"
                f"{', ...' if len(rare) > 8 else ''}); they share the global one.")  # fmt: skip
    test_probs = classifier.predict_proba(data.test.texts, settings.eval_batch_size)
    validation_metrics = classification_metrics(
        data.validation.labels, val_probs, data.label_names, data.multi_label, threshold
    )

    with run.staging() as staged:
        report = write_report(
            staged,
            name=name,
            test_texts=data.test.texts,
            test_labels=data.test.labels,
            probs=test_probs,
            baseline_probs=baseline.probabilities,
            # Thresholds are tuned on validation for both models, never on the test split they are scored on.
            baseline_threshold=tune_thresholds(
                multi_hot(data.validation.labels, n_classes), baseline.validation_probabilities
            )[0]
            if data.multi_label
            else 0.5,
            label_names=data.label_names,
            multi_label=data.multi_label,
            threshold=threshold,
            log_history=log_history,
            metric=metric,
            extra={
                "validation": headline(validation_metrics),
                # When the validation rows trained the model, their scores say how well it fits, not how it generalises.
                "validation_trained_on": folded,
                "train_minutes": minutes,
                "baseline_seconds": baseline.seconds,
                **extra,
            },
        )
        _write_splits(staged / "data", data)
        meta = _artifact_meta(config, data, report, threshold=threshold, max_length=max_length, bf16=use_bf16)
        if isinstance(model, embedding.EmbeddingHead):
            meta.update(architecture=embedding.ARCHITECTURE, pooling=model.pooling, normalize=model.normalize)
            run.save(staged, model, tokenizer, meta, save=embedding.save)
        else:
            run.save(staged, model, tokenizer, meta)
        version = run.register(staged, headline(report["test"]))
    return TrainResult(version, report["test"], report["baseline"], data.issues, minutes)


def _fold_small_validation(run: Run, data: ClassificationData) -> bool:
    """Train on the validation rows too when they were split off the training file and are too few to stop on
    or choose a checkpoint by (the run then makes its planned steps and keeps its last weights): with 32 texts,
    the 3 held out for validation are a tenth of the data, and the test split still measures the model. True
    when folded in."""
    from tunesmith.data import Split, fingerprint

    chosen = run.config.data
    # A multi-label model's thresholds are tuned on the validation rows: they must stay unseen to be tuned on.
    if chosen.validation is not None or not chosen.train_on_small_validation or data.multi_label:
        return False
    if not 0 < len(data.validation) < SMALL_VALIDATION:
        return False
    run.log(f"Validation: {len(data.validation)} rows are too few to choose a checkpoint by (fewer than "
            f"{SMALL_VALIDATION}), so they train the model too; the {len(data.test)} test rows still measure it.")  # fmt: skip
    data.train = Split(data.train.texts + data.validation.texts, data.train.labels + data.validation.labels)
    data.fingerprint = fingerprint(data.train.texts, data.train.labels)
    return True


def _announce_checks(run: Run, data: ClassificationData) -> None:
    """What loading found, then `inspect`'s quick checks (when on)."""
    for issue in data.issues:
        run.log(str(issue))
    if run.config.data.inspect:
        from tunesmith.quality import summary_lines

        summary_lines(run.config, run.task.data_shape, run.log)


def _register_baseline(run: Run, data: ClassificationData) -> TrainResult:
    """`--method baseline`: the TF-IDF model alone, registered as a version that predicts and serves."""
    from tunesmith.tasks.text_classification import baseline as tfidf

    _announce_checks(run, data)
    run.log(f"Data: {len(data.train)} train / {len(data.validation)} validation / {len(data.test)} test texts, "
            f"{len(data.label_names)} classes; training the TF-IDF model alone (--method baseline).")  # fmt: skip
    result = tfidf.train_baseline(data, seed=run.settings.seed)
    n_classes = len(data.label_names)
    threshold: float | list[float] = 0.5
    if data.multi_label:
        threshold = tune_thresholds(multi_hot(data.validation.labels, n_classes), result.validation_probabilities)[0]
    validation = classification_metrics(data.validation.labels, result.validation_probabilities, data.label_names,
                                        data.multi_label, threshold)  # fmt: skip
    with run.staging() as staged:
        report = write_report(
            staged, name=run.name, test_texts=data.test.texts, test_labels=data.test.labels,
            probs=result.probabilities, baseline_probs=result.probabilities, baseline_threshold=threshold,
            label_names=data.label_names, multi_label=data.multi_label, threshold=threshold, log_history=[],
            metric="f1_micro" if data.multi_label else "f1_macro",
            extra={"validation": headline(validation), "train_minutes": result.seconds / 60,
                   "baseline_seconds": result.seconds},
        )  # fmt: skip
        _write_splits(staged / "data", data)
        result.model.save(staged / tfidf.FOLDER)
        meta = _artifact_meta(run.config, data, report, threshold=threshold, max_length=0, bf16=False)
        run.describe(staged, {**meta, "architecture": tfidf.ARCHITECTURE, "precision": "fp64", "base_model": None})
        version = run.register(staged, headline(report["test"]))
    run.log(f"TF-IDF model trained in {result.seconds:.1f} s and registered as {version.ref}.")
    return TrainResult(version, report["test"], report["baseline"], data.issues, result.seconds / 60)


def _size_defaults(run: Run, data: ClassificationData) -> Any:
    """Method, epochs and batch size by data size, for what the user did not set (bench/methods.py,
    bench/defaults.py; docs/methods.md has the tables):
    - at most FEWSHOT_DEFAULT training examples a class on average: few-shot, the one method never far from the
      best there (against full fine-tuning at 8 a class: TREC +11 points, Banking77 +11, AG News -1.5; at 16:
      TREC even, Banking77 +12, AG News -1.8);
    - 500+ examples a class on average: 3 epochs of 32 (TREC's 807 a class: 0.966 in 1.3 min against 0.962 in
      4.3 min with 8 epochs of 16); in between, 8 of 16 (Banking77's 117 a class: 0.928 with 8 of 16,
      0.906-0.908 with 3-5 of 32)."""
    chosen = run.settings.model_fields_set
    update: dict[str, Any] = {}
    mean = len(data.train) / max(1, len(data.label_names))
    # On the mean, not the smallest class: one rare class in a large dataset is no reason to train few-shot.
    if "method" not in chosen and run.settings.method == "full" and mean <= FEWSHOT_DEFAULT:
        run.log(f"{mean:.1f} training examples a class: few-shot training (SetFit-style), measured more accurate "
                "than full fine-tuning on this little data (--method full to choose).")  # fmt: skip
        update["method"] = "fewshot"
    fixed = {"epochs", "batch_size", "max_steps"} & chosen
    if not update and run.settings.method == "full" and not fixed and mean >= MANY_PER_CLASS:
        run.log(f"{mean:.0f} training examples a class: 3 epochs of 32 (set --epochs or --batch-size to choose).")
        update.update(epochs=3.0, batch_size=32)
    if not update:
        return run.settings
    settings = run.settings.model_copy(update=update)
    run.config = run.config.model_copy(update={"train": settings})
    return settings


def _examples_per_class(data: ClassificationData) -> int:
    counts: dict[int, int] = {i: 0 for i in range(len(data.label_names))}
    for label in data.train.labels:
        for i in label if data.multi_label else [label]:
            counts[i] += 1
    return min(counts.values(), default=0)


def _artifact_meta(
    config: RunConfig, data: ClassificationData, report: dict[str, Any], *, threshold: float | list[float], max_length: int,
    bf16: bool,
) -> dict[str, Any]:  # fmt: skip
    """What `tunesmith.json` records beyond the common fields: enough to load, use and explain the model."""
    return {
        "label_names": data.label_names,
        "multi_label": data.multi_label,
        "threshold": threshold,
        "max_length": max_length,
        "precision": "bf16" if bf16 else "fp32",
        "metrics": headline(report["test"]),
        "baseline_metrics": headline(report["baseline"]),
        "data": {
            "fingerprint": data.fingerprint,
            "train_file": config.data.train,
            "text_column": data.text_column,
            "label_column": data.label_column,
            "sizes": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test)},
        },
    }


def _write_splits(folder: Path, data: ClassificationData) -> None:
    """Keep the splits with the model: the held-out ones to re-check exports and compare versions on the same
    rows, the training rows for `tunesmith retrain` to replay."""
    folder.mkdir()
    for what in ("train", "validation", "test"):
        split: Split = getattr(data, what)
        with (folder / f"{what}.jsonl").open("w", encoding="utf-8") as handle:
            for text, label in zip(split.texts, split.labels, strict=True):
                names = [data.label_names[i] for i in label] if data.multi_label else data.label_names[label]
                handle.write(json.dumps({"text": text, "label": names}, ensure_ascii=False) + "\n")
