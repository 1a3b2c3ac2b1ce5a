"""The task contract: everything the rest of tunesmith may ask of a task, and nothing else.

A task is one package under `tunesmith.tasks` holding a `Task` subclass, plus one line in
`tasks/catalog.py`. The training, export, serving, quality and command-line code reach a task only
through this interface, never by its name. `tests/test_tasks.py` runs every registered task through it
(train -> evaluate -> register -> export -> serve -> predict) and checks each implementation's
signatures against the ones declared here.

Importing a task's `task.py` must stay cheap (no torch, no transformers, no training code): servers
import every task to route requests, and a server running an ONNX model never imports torch. Heavy
modules are imported inside the methods that need them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from tunesmith.errors import ModelError

if TYPE_CHECKING:
    from tunesmith.config import RunConfig
    from tunesmith.data import DataIssue
    from tunesmith.export import ExportCheck
    from tunesmith.registry import ModelVersion, Registry

Log = Callable[[str], None]
# The request shapes of the HTTP API; a task answers exactly one of them.
Request = Literal["texts", "question", "chat"]
# The data shapes `tunesmith inspect` knows how to check.
DataShape = Literal["labeled-texts", "tagged-sentences", "questions", "conversations", "text-pairs"]
METHODS = ("full", "lora", "adalora", "ia3", "frozen")


@runtime_checkable
class Predictor(Protocol):
    """A loaded model, on whichever backend it runs: what every task's `load` returns."""

    task: str
    backend: str  # "pytorch", "onnx-fp32", "onnx-int8"
    meta: dict[str, Any]  # its tunesmith.json


@dataclass
class TrainResult:
    """What a training run produced."""

    version: ModelVersion
    metrics: dict[str, Any]  # test-split metrics of the fine-tuned model
    baseline: dict[str, Any]  # the same for the reference it is compared with (TF-IDF, or the untrained base)
    issues: list[DataIssue] = field(default_factory=list)
    train_minutes: float = 0.0


@dataclass
class Summary:
    """A result as a table: the CLI draws it, `--json` prints `rows` as they are."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


BELOW_BASELINE = 0.01  # a lead of the baseline's smaller than this is called noise, not a warning


class Task(ABC):
    """One task. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]  # the Hugging Face pipeline name: "text-classification", ...
    peft_task_type: ClassVar[str]  # peft's TaskType for adapters on this task's models
    main_metric: ClassVar[str]  # the validation metric model selection and `tune` maximise
    headline_metrics: ClassVar[tuple[str, ...]]  # the test metrics `evaluate` and `runs compare` show
    warm_up: ClassVar[Any]  # one input run before a loaded model takes traffic
    request: ClassVar[Request]  # the HTTP request shape it answers
    data_shape: ClassVar[DataShape]
    methods: ClassVar[tuple[str, ...]] = METHODS
    default_method: ClassVar[str] = "full"
    default_base_model: ClassVar[str | None] = None  # None: the embedded encoder (config.DEFAULT_MODEL)
    # Full fine-tuning keeps the word embeddings fixed unless told otherwise (train.freeze_embeddings): set where
    # it was measured to pay (text classification: 1.15x steps on short texts, equal or better accuracy).
    freezes_embeddings: ClassVar[bool] = False
    reads_pooler: ClassVar[bool] = False  # the head reads the encoder's pooler, which adapters must then train
    # The training-row field whose proportions `retrain`'s replay sample keeps (every value is rehearsed); None: a
    # plain random sample.
    replay_stratify: ClassVar[str | None] = None
    export_format: ClassVar[Literal["onnx", "merged"]] = "onnx"
    training: ClassVar[str]  # the module whose `train(run: training.Run) -> TrainResult` is the training body
    # The reference every run is scored beside, by the test metric compared, and what to try when it wins.
    baseline_name: ClassVar[str] = "baseline"
    compared_metric: ClassVar[str]
    below_baseline_hint: ClassVar[str] = ""

    # -- training -----------------------------------------------------------------------------------

    def resolve(self, config: RunConfig) -> RunConfig:
        """`config` with this task's defaults for what the user left unset (base model, method, embeddings)."""
        from tunesmith.config import DEFAULT_MODEL

        chosen = config.train.model_fields_set
        updates: dict[str, Any] = {}
        if self.default_base_model and "base_model" not in chosen and config.train.base_model == DEFAULT_MODEL:
            updates["base_model"] = self.default_base_model
        if "method" not in chosen and config.train.method != self.default_method:
            updates["method"] = self.default_method
        if config.train.freeze_embeddings is None:
            updates["freeze_embeddings"] = self.freezes_embeddings
        if not updates:
            return config
        return config.model_copy(update={"train": config.train.model_copy(update=updates)})

    def check_method(self, method: str) -> None:
        from tunesmith.errors import ConfigError
        from tunesmith.methods import UNAVAILABLE

        if method in UNAVAILABLE:
            raise ConfigError(UNAVAILABLE[method])
        if method not in self.methods:
            raise ConfigError(f"--method {method} is not available for {self.name}; choose {', '.join(self.methods)}.")

    def train(
        self,
        config: RunConfig,
        *,
        registry: Registry | None = None,
        resume: bool = False,
        progress: bool = True,
        log: Log = print,
        callbacks: Sequence[Any] = (),
    ) -> TrainResult:
        """Fine-tune, evaluate and register a model as `config` describes, through the shared skeleton
        (`training.fit`) with this task's `training.train(run)` as the body; `callbacks` go to the Trainer
        (e.g. `tune`'s pruning)."""
        from importlib import import_module

        from tunesmith.training import fit

        body = import_module(self.training).train  # imported only to train: a server never loads it
        result = fit(self, config, body, registry=registry, resume=resume, progress=progress, log=log,
                     callbacks=callbacks)  # fmt: skip
        warning = self.baseline_warning(result)
        if warning:
            log(warning)
        return result

    def baseline_warning(self, result: TrainResult) -> str | None:
        """One line when the fine-tuned model ends clearly below its own baseline on the test split."""
        from tunesmith.artifact import read_meta

        fine, base = result.metrics.get(self.compared_metric), result.baseline.get(self.compared_metric)
        if not isinstance(fine, float) or not isinstance(base, float) or fine >= base - BELOW_BASELINE:
            return None
        meta = read_meta(result.version.path)  # the run may have chosen its method and base model itself
        return (f"warning: the fine-tuned model's test {self.compared_metric} is {fine:.4f}, below its "
                f"{self.baseline_name}'s {base:.4f}. {self.below_baseline_advice(meta)}").rstrip()

    def below_baseline_advice(self, meta: dict[str, Any]) -> str:
        """What to do when the run whose artifact says `meta` (method, base model) ended below its baseline."""
        return self.below_baseline_hint

    # -- using a model ------------------------------------------------------------------------------

    @abstractmethod
    def load(self, path: str | Path, backend: str = "auto", threads: int | None = None) -> Predictor:
        """The predictor of the artifact at `path`, on PyTorch or on the ONNX variant that passed its check."""

    @abstractmethod
    def evaluate_file(self, predictor: Any, data: str | Path, out_dir: str | Path, **options: Any) -> dict[str, Any]:
        """Score `predictor` on a labeled file; write the report to `out_dir`; return {"test": metrics, ...}."""

    @abstractmethod
    def predict_lines(self, predictor: Any, inputs: Sequence[str], **options: Any) -> Iterator[str]:
        """What `tunesmith predict` prints for `inputs`, one line each (options: context, max_tokens, batch_size)."""

    def predict_records(self, predictor: Any, inputs: Sequence[str], **options: Any) -> list[dict[str, Any]]:
        """`tunesmith predict --json`: one record per input."""
        return [{"input": text, "output": line} for text, line in zip(inputs, self.predict_lines(predictor, inputs,
                **options), strict=True)]  # fmt: skip

    def predict_file(self, predictor: Any, path: Path, output: Path, *, text_column: str | None = None,
                     batch_size: int = 64) -> int:  # fmt: skip
        """`tunesmith predict --input FILE --output FILE`: predict every row; return how many."""
        from tunesmith.errors import DataError

        raise DataError(f"--input takes text classifiers; pass what a {self.name} model reads as arguments, or "
                        "score a labeled file with `tunesmith evaluate`.")  # fmt: skip

    # -- release --------------------------------------------------------------------------------------

    def export_check(self, path: str | Path) -> ExportCheck:
        """How to trace, calibrate and compare an ONNX export of the artifact at `path`."""
        raise ModelError(f"{self.name} models are not exported to ONNX.")

    def export(self, path: str | Path, *, log: Log = print, quantize: bool = True,
               min_agreement: float | None = None) -> dict[str, Any]:  # fmt: skip
        """Export the artifact and return the export record: ONNX (fp32 and int8) checked against PyTorch."""
        from tunesmith.export import DEFAULT_MIN_AGREEMENT, export_onnx

        return export_onnx(self.export_check(path), path, quantize=quantize, log=log,
                           min_agreement=DEFAULT_MIN_AGREEMENT if min_agreement is None else min_agreement)  # fmt: skip

    # -- serving --------------------------------------------------------------------------------------

    @abstractmethod
    def serve_compute(self, predictor: Any, items: list[Any], batch_size: int) -> Any:
        """One server batch: an output per item (a row of logits, an entity list, answers, a generation)."""

    def serve_outputs(self, predictor: Any, outputs: Any, all_scores: bool = False) -> list[dict[str, Any]]:
        """The JSON items `/v1/models/NAME/predict` answers for a batch's `outputs`."""
        raise NotImplementedError(f"{self.name} answers at another route")

    def hf_outputs(self, predictor: Any, outputs: Any, single: bool, top_k: int | None, function: str | None) -> Any:
        """The Hugging Face Inference API answer (`/models/NAME`) for a batch's `outputs`."""
        raise NotImplementedError(f"{self.name} answers at another route")

    def counted_labels(self, predictor: Any, outputs: Any) -> Iterable[str]:
        """The labels a batch predicted, for the server's per-label prediction counter."""
        return ()

    answers_with_label: ClassVar[bool] = False  # the original `/predict` route ({label, score}) applies

    def routes(self, server: Any, read: list[Any]) -> Any:
        """A FastAPI router of routes only this task's models answer (e.g. `/v1/embeddings`), added when a served
        model has this task; `read` are the read routes' dependencies (auth). None: no routes of its own."""
        return None

    # -- after release: the prediction log, monitoring and feedback --------------------------------------

    # Whether one logged output can be judged right or wrong against a feedback answer (`is_correct`): off for
    # free text and embeddings, whose feedback is training data only (no feedback accuracy, no gate on it).
    judges_feedback: ClassVar[bool] = True

    @abstractmethod
    def log_outputs(self, predictor: Any, outputs: Any) -> list[dict[str, Any]]:
        """What the prediction log keeps of each output of a server batch. Keys monitoring reads: `label` (a
        name or a list of names) or `labels` (names counted per item, e.g. entity types), `confidence` (0-1,
        left out when the task has none), and `figures` ({name: number}: what else is compared over time)."""

    def reference(self, path: Path, split: str) -> tuple[list[Any], list[Any] | None]:
        """(inputs as `serve_compute` takes them, the right answers or None) of a split stored in the artifact
        (`validation`, `test`): the traffic a model's live traffic is compared with."""
        return [], None

    @abstractmethod
    def is_correct(self, output: dict[str, Any], answer: Any) -> bool:
        """Whether a logged output (a `log_outputs` item) is the right answer (a checked feedback answer)."""

    @abstractmethod
    def check_feedback(self, meta: dict[str, Any], item: Any, answer: Any) -> Any:
        """`answer` to input `item` checked as training data is and put in the task's shape; a DataError says
        what is wrong and how to write it. `meta` is the served model's tunesmith.json."""

    @abstractmethod
    def feedback_rows(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Feedback records (`input`, `answer`) as rows of a JSONL training file this task's loader reads."""

    # -- search: tasks whose models embed texts ------------------------------------------------------------

    def build_index(self, version: ModelVersion, home: Path, corpus: Path, *, log: Log = print,
                    **options: Any) -> dict[str, Any]:  # fmt: skip
        """Embed the texts of `corpus` with `version` into its name's search index; return the index record."""
        raise ModelError(f"{version.ref} is a {self.name} model; `tunesmith index` takes models that embed texts "
                         "(sentence-similarity).")  # fmt: skip

    def search(self, version: ModelVersion, home: Path, queries: Sequence[str], top_k: int = 10,
               backend: str = "auto") -> list[list[dict[str, Any]]]:  # fmt: skip
        """The `top_k` best matches ({id, text, score}) of each query in the index of `version`'s name."""
        raise ModelError(f"{version.ref} is a {self.name} model; `tunesmith search` takes models that embed texts "
                         "(sentence-similarity).")  # fmt: skip

    # -- the command line -------------------------------------------------------------------------------

    @abstractmethod
    def summary(self, result: TrainResult) -> Summary:
        """The table `tunesmith train` prints for a finished run."""

    def evaluation_lines(self, result: dict[str, Any]) -> list[str]:
        """What `tunesmith evaluate` prints after the report is written."""
        metrics = result["test"]
        return [", ".join(f"{k} {metrics[k]:.4f}" for k in self.headline_metrics if k in metrics),
                f"{metrics['n']} scored."]  # fmt: skip

    def export_lines(self, ref: str, record: dict[str, Any]) -> list[str]:
        """What `tunesmith export` prints for this task's export record (ONNX is drawn by the CLI)."""
        return []


def signature_problems(task: Task) -> list[str]:
    """Where `task`'s methods differ from the contract's (names, order and kinds of parameters): the
    contract test's check, stricter than "the method exists"."""
    import inspect

    problems = []
    for name, declared in inspect.getmembers(Task, inspect.isfunction):
        if name.startswith("_"):
            continue
        wanted = inspect.signature(declared)
        found = inspect.signature(getattr(type(task), name))
        expected = [(p.name, p.kind) for p in wanted.parameters.values()]
        actual = [(p.name, p.kind) for p in found.parameters.values()]
        if actual != expected:
            problems.append(f"{type(task).__name__}.{name}{found} differs from Task.{name}{wanted}")
    for attribute in ("name", "peft_task_type", "main_metric", "headline_metrics", "warm_up", "request", "data_shape",
                      "training"):  # fmt: skip
        if not hasattr(type(task), attribute):
            problems.append(f"{type(task).__name__} does not set {attribute}")
    return problems
