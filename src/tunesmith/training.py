"""Fine-tuning shared by every task: a thin layer over `transformers.Trainer`.

What this adds over a plain Trainer set-up, each measured on these 2-core CPUs (see
bench/train_speed.py): pre-tokenized rows padded per batch to the batch's longest, batches grouped by
length, bf16 autocast where the CPU supports it, early stopping on the task's selection score, time
and step budgets, resumable runs, and registration of the result as a new immutable version.
The tasks themselves live in `tunesmith.tasks`.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith import artifact, methods
from tunesmith.config import RunConfig, TrainConfig, dump_config
from tunesmith.errors import ConfigError, DataError
from tunesmith.languages import choose_encoder
from tunesmith.models import bf16_supported, load_tokenizer
from tunesmith.planning import Plan, padded_tokens_per_step, planned_scheduler, planning_callback
from tunesmith.registry import ModelVersion, Registry
from tunesmith.runs import default_name

if TYPE_CHECKING:  # tasks reach this module through `Task.train`; at run time it needs nothing of theirs
    from tunesmith.tasks.base import Task, TrainResult

Log = Callable[[str], None]
SELECTION_METRIC = "selection_score"
MIN_STEPS = 300  # optimisation steps a default run makes however small the data (up to MAX_EPOCHS)
MAX_EPOCHS = 300
# Below this many validation rows, early stopping and the best-checkpoint choice follow noise (3 held-out texts
# ended a 32-text run after 3 epochs): such runs train the planned steps and keep the last weights.
SMALL_VALIDATION = 50
NEVER = 10**9  # the Trainer's own eval/save interval; the plan triggers both


class ListDataset:
    """Pre-tokenized rows; the Trainer's length-grouped sampler reads `input_ids` lengths from them."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


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
    """The configured epochs, or 8 raised so a small dataset still gets ~300 steps (a few hundred rows at 8
    epochs stop far from convergence; 32 texts at the old cap of 30 epochs made 60 steps and scored below
    TF-IDF). The plan and early stopping usually end sooner."""
    if wanted is not None:
        return wanted
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    return float(min(MAX_EPOCHS, max(8, math.ceil(MIN_STEPS / steps_per_epoch))))


def budget_callback(minutes: float, checkpoint: bool = True) -> Any:
    """A Trainer callback that stops training after `minutes`; with `checkpoint`, it evaluates and saves first
    so the best model is kept (off for trainers that neither evaluate nor save, e.g. setfit's)."""
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):

        def __init__(self) -> None:
            self.start = time.monotonic()
            self.stopped = False

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.monotonic()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not self.stopped and time.monotonic() - self.start > minutes * 60:
                self.stopped = True
                control.should_training_stop = True
                control.should_evaluate = checkpoint
                control.should_save = checkpoint

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.stopped:  # already evaluated and saved at the step where the budget ran out
                control.should_evaluate = False
                control.should_save = False

    return TimeBudget()


def _progress_callback(log: Log, bar: bool, plan: Plan) -> Any:
    from transformers.trainer_callback import ProgressCallback

    class Progress(ProgressCallback):
        """A step bar (optional) that counts to the plan as it stands, and one line per evaluation, instead of a
        dict per logging step."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if bar:
                super().on_train_begin(args, state, control, **kwargs)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.training_bar is not None:
                # The bar starts at the epochs' steps; a budget or a re-plan moves the end, and its time left.
                self.training_bar.total = plan.total_steps
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


def prepare_run_dir(run_dir: Path, fingerprint: str, config: RunConfig, resume: bool, log: Log) -> str | None:
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
    task: Task,
    collator: Any,
    compute_metrics: Callable[[Any], dict[str, float]],
    bf16: bool,
    log: Log,
    progress: bool,
    compute_loss_func: Callable[..., Any] | None = None,
    select_by: str = SELECTION_METRIC,
    extra_callbacks: Sequence[Any] = (),
) -> Any:
    """The Trainer every task uses: the training method applied to `model` (`trainer.model` is the result),
    AdamW + linear warmup, eval and save each epoch, the best checkpoint kept (by `SELECTION_METRIC`, which
    `compute_metrics` must return, or by `select_by="loss"`: the validation loss, lowest best, with no
    predictions gathered), early stopping, budgets, our progress lines."""
    import torch
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    epochs = choose_epochs(len(train_set), settings.batch_size, settings.epochs)
    if len(val_set) > settings.eval_sample:  # checkpoints are chosen on a sample; the task scores the full split
        val_set = _sample(val_set, settings.eval_sample, settings.seed)
    plan = Plan(examples=len(train_set), batch_size=settings.batch_size, epochs=epochs, max_steps=settings.max_steps,
                budget_seconds=settings.max_minutes * 60 if settings.max_minutes else None,
                warmup_ratio=settings.warmup_ratio, evaluations=settings.evaluations, eval_examples=len(val_set),
                tokens_per_step=padded_tokens_per_step(_lengths(train_set), settings.batch_size,
                                                       settings.group_by_length, settings.seed))  # fmt: skip
    model = methods.prepare(model, settings, task, plan.bound_steps)
    counts = methods.parameter_counts(model)
    log(f"Method {settings.method}: {counts['trainable']:,} of {counts['total']:,} parameters train "
        f"({counts['trainable'] / max(1, counts['total']):.2%}).")  # fmt: skip
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=epochs,
        max_steps=plan.bound_steps,
        learning_rate=methods.learning_rate(settings),
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.eval_batch_size,
        weight_decay=settings.weight_decay,
        # Evaluations and checkpoints come when the plan says (planning_callback), spread over the planned steps.
        eval_strategy="steps",
        save_strategy="steps",
        eval_steps=NEVER,
        save_steps=NEVER,
        save_total_limit=2,
        load_best_model_at_end=settings.method not in methods.LAST_WEIGHTS_ONLY and len(val_set) >= SMALL_VALIDATION,
        metric_for_best_model=select_by,
        greater_is_better=select_by != "loss",
        # A language model's logits over the validation set (tokens x vocabulary) would not fit in memory.
        prediction_loss_only=select_by == "loss",
        logging_strategy="steps",
        logging_steps=max(1, plan.steps_per_epoch // 5),
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        seed=settings.seed,
        data_seed=settings.seed,
        report_to=[],
        disable_tqdm=True,  # replaced by _progress_callback
        dataloader_num_workers=0,
        include_num_input_tokens_seen="all",  # padded tokens: what the planner times the steps by
    )
    shown = _progress_callback(log, progress, plan)

    def say(line: str) -> None:  # above the step bar when there is one, not through it
        bar = shown.training_bar
        bar.write(line) if bar is not None else log(line)

    callbacks: list[Any] = [planning_callback(plan, say), *methods.callbacks(model), *extra_callbacks]
    if settings.early_stopping_patience and len(val_set) >= SMALL_VALIDATION:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience))
    elif settings.early_stopping_patience:
        log(f"No early stopping: {len(val_set)} validation rows are too few to stop on or to choose a checkpoint "
            f"by (fewer than {SMALL_VALIDATION}); the run makes its planned {plan.bound_steps:,} steps and keeps "
            "the last weights.")  # fmt: skip
    log(plan.describe())

    class PlannedTrainer(Trainer):
        plan: Plan  # the schedule the run follows, as it stands: read by `Run` for the artifact

        def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
            if self.lr_scheduler is None:
                self.lr_scheduler = planned_scheduler(plan, optimizer or self.optimizer)
            return self.lr_scheduler

    trainer = PlannedTrainer(
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
    trainer.add_callback(shown)
    trainer.plan = plan
    return trainer


def _lengths(dataset: Sequence[Any]) -> list[int]:
    """Token counts of pre-tokenized rows; empty when the rows are not token lists (the plan then times steps)."""
    try:
        return [len(dataset[i]["input_ids"]) for i in range(len(dataset))]
    except (KeyError, TypeError, IndexError):
        return []


def _sample(dataset: Sequence[Any], size: int, seed: int) -> ListDataset:
    import random

    picked = sorted(random.Random(seed).sample(range(len(dataset)), size))
    return ListDataset([dataset[i] for i in picked])


def run_trainer(trainer: Any, checkpoint: str | None) -> tuple[Any, float]:
    """Train (from `checkpoint` if resuming); return the best model without accelerate's autocast wrapper, and
    the minutes it took. Metrics must come from the model as it is saved and served (fp32)."""
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoint)
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    return model, (time.perf_counter() - started) / 60




@dataclass
class Run:
    """One training run in progress, as `fit` hands it to a task's training body: the settled config, the
    registry, the run folder (checkpoints, for --resume), the precision, and the callbacks the caller passed
    (e.g. `tune`'s pruning). The body reads its data, builds its model and calls `trainer`, `fine_tune` and
    `register`; everything around that (name, lock, run folder, precision, registration) happens here once."""

    task: Task
    config: RunConfig
    registry: Registry
    resume: bool
    progress: bool
    log: Log
    callbacks: Sequence[Any] = ()
    # Settings left to "auto" and what they came to (epochs, learning rate): saved in the artifact's config.yaml.
    chosen: dict[str, Any] = field(default_factory=dict)
    plan: Plan | None = None

    @property
    def name(self) -> str:
        return str(self.config.name)

    @property
    def settings(self) -> TrainConfig:
        return self.config.train

    @property
    def run_dir(self) -> Path:
        return self.registry.run_dir(self.name)

    @cached_property
    def bf16(self) -> bool:
        """bf16 autocast when asked for, or by default where the CPU (or GPU) computes it natively."""
        precision = self.settings.precision
        return precision == "bf16" or (precision == "auto" and bf16_supported())

    def tokenizer(self, offsets_for: str | None = None) -> Any:
        """The base model's tokenizer (a fast one when `offsets_for` names a task that maps tokens back to
        characters)."""
        tokenizer = load_tokenizer(self.settings.base_model, self.settings.trust_remote_code)
        if offsets_for and not getattr(tokenizer, "is_fast", False):
            raise DataError(f"{self.settings.base_model} has no fast tokenizer; {offsets_for} needs its character offsets.")
        return tokenizer

    def checkpoint(self, fingerprint: str) -> str | None:
        """Set up the run folder for data with this fingerprint; the checkpoint to resume from, if any."""
        return prepare_run_dir(self.run_dir, fingerprint, self.config, self.resume, self.log)

    def trainer(self, model: Any, tokenizer: Any, train_set: Any, val_set: Any, **options: Any) -> Any:
        """`build_trainer` for this run (options: collator, compute_metrics, compute_loss_func, select_by)."""
        options.setdefault("bf16", self.bf16)
        trainer = build_trainer(model, tokenizer, self.settings, self.run_dir, train_set, val_set, task=self.task,
                                log=self.log, progress=self.progress, extra_callbacks=self.callbacks, **options)  # fmt: skip
        self.chosen.update(epochs=trainer.args.num_train_epochs, learning_rate=trainer.args.learning_rate)
        self.plan = trainer.plan
        return trainer

    def fine_tune(self, trainer: Any, checkpoint: str | None) -> tuple[Any, float]:
        bf16 = trainer.args.bf16
        self.log(f"Fine-tuning {self.settings.base_model} for {self.task.name} ({self.settings.method}, "
                 f"{'bf16 autocast' if bf16 else 'fp32'}) ...")  # fmt: skip
        return run_trainer(trainer, checkpoint)

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A folder to write the artifact into; `register` it before the block ends."""
        with self.registry.staging() as staged:
            yield staged

    def save(self, staged: Path, model: Any, tokenizer: Any, meta: dict[str, Any],
             save: Callable[[Any, Path], None] = methods.save) -> None:  # fmt: skip
        """Weights (safetensors), tokenizer, config.yaml and tunesmith.json into `staged`. config.yaml is the
        fully resolved config: a setting left to "auto" holds the value the run used, so training again from
        it repeats the run."""
        save(model, staged)
        tokenizer.save_pretrained(staged / "model")
        self.describe(staged, {"parameters": methods.parameter_counts(model), **meta})

    def describe(self, staged: Path, meta: dict[str, Any]) -> None:
        """config.yaml (fully resolved) and tunesmith.json into `staged`: all an artifact needs beside its model
        files, for a model that has no network to save (`--method baseline`) as for one that has."""
        chosen = {**self.chosen, "max_length": meta.get("max_length") or None}  # 0: no token limit (TF-IDF)
        unset = {k: v for k, v in chosen.items() if v is not None and getattr(self.settings, k) is None}
        config = self.config.model_copy(update={"train": self.settings.model_copy(update=unset)})
        (staged / "config.yaml").write_text(dump_config(config), encoding="utf-8")
        if self.plan is not None:  # the schedule as it was at the end: steps, what ended it, measured speed
            meta = {"plan": self.plan.as_dict(), **meta}
        artifact.write_meta(staged, artifact.describe(self.config, **meta))

    def register(self, staged: Path, metrics: dict[str, Any]) -> ModelVersion:
        return self.registry.register(self.name, staged, self.task.name, metrics=metrics)

    def register_artifact(
        self, model: Any, tokenizer: Any, *, files: dict[str, str], meta: dict[str, Any], metrics: dict[str, Any],
        evaluation: dict[str, Any], errors: list[dict[str, Any]], report: str,
    ) -> ModelVersion:  # fmt: skip
        """Write a complete artifact (weights, tokenizer, `files`, metrics.json from `evaluation`, errors.jsonl,
        report.md, config.yaml, tunesmith.json) and register it as the next version."""
        files = {
            **files,
            "metrics.json": json.dumps(evaluation, indent=2),
            "errors.jsonl": "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors),
            "report.md": report,
        }
        with self.staging() as staged:
            for relative, content in files.items():
                (staged / relative).parent.mkdir(parents=True, exist_ok=True)
                (staged / relative).write_text(content, encoding="utf-8")
            self.save(staged, model, tokenizer, {**meta, "metrics": metrics})
            return self.register(staged, metrics)


def fit(
    task: Task,
    config: RunConfig,
    body: Callable[[Run], TrainResult],
    *,
    registry: Registry | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Log = print,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """The one training skeleton: the task's defaults applied (the multilingual encoder for data in another
    script), the method checked, the name settled and its
    lock held for the whole run (a second run of the same name stops with a clear message instead of deleting
    the first one's checkpoints); then the task's `body`; then the run folder removed once registered."""
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    config = choose_encoder(task.resolve(config), log)
    task.check_method(config.train.method)
    config = config.model_copy(update={"name": default_name(config)})
    registry = registry or Registry()
    hf_logging.disable_progress_bar()  # weight loading/saving bars; the training bar is ours
    with registry.run_lock(str(config.name)):
        run = Run(task, config, registry, resume, progress, log, tuple(callbacks))
        set_seed(config.train.seed)  # before a new head's weights are drawn
        result = body(run)
        shutil.rmtree(run.run_dir, ignore_errors=True)  # checkpoints are only needed to resume an unfinished run
    return result
