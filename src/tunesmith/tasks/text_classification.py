"""Text classification (binary, multi-class, multi-label): train, load, evaluate, export check, serve.

Training adds to the shared `training.build_trainer`: texts tokenized once, a token limit taken from the
data, optional class weights, a TF-IDF baseline on the same split, a multi-label threshold tuned on
validation, and a test report with plots. The held-out splits are kept in the artifact so exports and
later versions are checked on the same rows.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tunesmith import methods
from tunesmith.config import RunConfig, dump_config
from tunesmith.evaluation import classification_metrics, headline, multi_hot, tune_threshold, write_report
from tunesmith.export import CALIBRATION_ITEMS, ExportCheck, timed
from tunesmith.inference import (
    ARTIFACT_META,
    BaseClassifier,
    OnnxClassifier,
    TextClassifier,
    load_predictor,
)
from tunesmith.models import bf16_supported, load_classifier, load_tokenizer, model_max_length, resolve_model
from tunesmith.registry import Registry
from tunesmith.runs import locked_run
from tunesmith.training import (
    SELECTION_METRIC,
    Log,
    TrainResult,
    _ListDataset,
    _prepare_run_dir,
    build_trainer,
    choose_max_length,
    default_name,
    library_versions,
    run_trainer,
)

if TYPE_CHECKING:  # pandas and scikit-learn load only to train, never in a server
    from tunesmith.data import ClassificationData, Split

TASK = "text-classification"
WARM_UP = "warm-up"
FEWSHOT_HINT = 16  # at most this many examples in the smallest class: suggest lora or fewshot


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


@locked_run
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

    from tunesmith.baseline import train_baseline
    from tunesmith.data import check_lengths, check_unknown_tokens, load_classification_data

    data = load_classification_data(config.data, seed=config.seed)
    tokenizer = load_tokenizer(settings.base_model, settings.trust_remote_code)
    set_seed(settings.seed)  # before the new head's weights are drawn
    fewshot = settings.method == "fewshot"
    if fewshot:
        from transformers import AutoConfig

        model: Any = None
        model_config = AutoConfig.from_pretrained(resolve_model(settings.base_model))
    else:
        model = load_classifier(settings.base_model, data.label_names, data.multi_label, settings.trust_remote_code)
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
    for issue in data.issues:
        log(str(issue))
    if config.data.inspect:
        from tunesmith.quality import summary_lines

        summary_lines(config, log)
    kind = "multi-label" if data.multi_label else "single-label"
    log(
        f"Data: {len(data.train)} train / {len(data.validation)} validation / {len(data.test)} test texts, "
        f"{len(data.label_names)} classes ({kind}); text column {data.text_column!r}, label column "
        f"{data.label_column!r}; max_length {max_length} tokens."
    )

    per_class = _examples_per_class(data)
    if per_class <= FEWSHOT_HINT and settings.method == "full":
        # Measured (bench/methods.py, Banking77, 8 per class): LoRA 0.76, few-shot 0.71, full fine-tuning 0.60.
        log(f"hint: the smallest class has {per_class} training examples; with this little data --method lora or "
            "--method fewshot (SetFit-style) is usually more accurate than full fine-tuning.")  # fmt: skip
    baseline = train_baseline(data, seed=settings.seed)
    log(f"TF-IDF baseline trained in {baseline.seconds:.1f} s.")

    run_dir = registry.run_dir(name)
    n_classes = len(data.label_names)
    use_bf16 = settings.precision == "bf16" or (settings.precision == "auto" and bf16_supported())
    metric = "f1_micro" if data.multi_label else "f1_macro"
    if fewshot:
        use_bf16 = False
        from tunesmith import embedding
        from tunesmith import fewshot as few

        model, details = few.fit(settings.base_model, tokenizer, data.train.texts, data.train.labels, n_classes,
                                 data.multi_label, settings, max_length, log)  # fmt: skip
        minutes, log_history = details.pop("train_minutes"), []
        extra: dict[str, Any] = {"fewshot": details}
    else:
        checkpoint = _prepare_run_dir(run_dir, data.fingerprint, config, resume, log)
        train_set = _encode(tokenizer, data.train, max_length, n_classes, data.multi_label)
        val_set = _encode(tokenizer, data.validation, max_length, n_classes, data.multi_label)
        trainer = build_trainer(
            model, tokenizer, settings, run_dir, train_set, val_set,
            task=TASK, collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=_trainer_metrics(data.multi_label),
            compute_loss_func=_weighted_loss(data) if settings.class_weights else None,
            bf16=use_bf16, log=log, progress=progress,
        )  # fmt: skip
        log(f"Fine-tuning {settings.base_model} ({'bf16 autocast' if use_bf16 else 'fp32'}) ...")
        model, minutes = run_trainer(trainer, checkpoint)
        log_history = trainer.state.log_history
        extra = {"epochs_run": trainer.state.epoch, "best_checkpoint_metric": trainer.state.best_metric}
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
            log_history=log_history,
            metric=metric,
            extra={
                "validation": headline(validation_metrics),
                "train_minutes": minutes,
                "baseline_seconds": baseline.seconds,
                **extra,
            },
        )
        if fewshot:
            embedding.save(model, staged)
        else:
            methods.save(model, staged)
        tokenizer.save_pretrained(staged / "model")
        _write_splits(staged / "data", data)
        (staged / "config.yaml").write_text(dump_config(config), encoding="utf-8")
        meta = _artifact_meta(
            config,
            data,
            report,
            threshold=threshold,
            max_length=max_length,
            bf16=use_bf16,
            parameters=methods.parameter_counts(model),
        )
        if fewshot:
            meta.update(architecture=embedding.ARCHITECTURE, pooling=model.pooling, normalize=model.normalize)
        (staged / ARTIFACT_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        version = registry.register(name, staged, config.task, metrics=headline(report["test"]))
    shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints are only needed to resume an unfinished run
    return TrainResult(version, report["test"], report["baseline"], data.issues, minutes)


def _examples_per_class(data: ClassificationData) -> int:
    counts: dict[int, int] = {i: 0 for i in range(len(data.label_names))}
    for label in data.train.labels:
        for i in label if data.multi_label else [label]:
            counts[i] += 1
    return min(counts.values(), default=0)


def _artifact_meta(
    config: RunConfig,
    data: ClassificationData,
    report: dict[str, Any],
    *,
    parameters: dict[str, int],
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
        "method": config.train.method,
        "parameters": parameters,
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


# -- the task contract beyond training ----------------------------------------------------------------


def load(path: str | Path, backend: str = "auto", threads: int | None = None) -> BaseClassifier:
    """The classifier in artifact `path`, on the backend asked for (see `inference.choose_variant`)."""
    return load_predictor(path, backend, threads)


def evaluate_file(model: BaseClassifier, data: str | Path, out_dir: str | Path, **columns: Any) -> dict[str, Any]:
    """Score `model` on a labeled file (`text_column` / `label_column` may be named); write the report."""
    from tunesmith.evaluation import evaluate

    return evaluate(model, data, out_dir, **columns)


def serve_compute(model: BaseClassifier, texts: list[str], batch_size: int) -> np.ndarray:
    """One forward pass for the server: logits, row i for texts[i]."""
    return model.predict_logits(texts, batch_size)


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


class _ClassifierCheck(ExportCheck):
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


def export_check(path: str | Path) -> ExportCheck:
    return _ClassifierCheck(Path(path))
