"""The Python API: each function is what one CLI command does, with the same settings and defaults."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.artifact import is_artifact, task_of
from tunesmith.config import TRIALS, DataConfig, RunConfig, TrainConfig, load_config
from tunesmith.errors import ConfigError
from tunesmith.export import DEFAULT_MIN_AGREEMENT
from tunesmith.registry import Registry
from tunesmith.tasks.base import Log, Predictor, TrainResult
from tunesmith.tasks.catalog import TASKS

if TYPE_CHECKING:  # tuning pulls in the training code, which a server never needs
    from tunesmith.tuning import TuneResult


def train(
    data: str | Path | None = None,
    *,
    config: RunConfig | str | Path | None = None,
    registry: Registry | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Log = print,
    **overrides: Any,
) -> TrainResult:
    """Fine-tune, evaluate and register a model; returns a `TrainResult`.

    `overrides` are dotted settings with '__' for the dot, e.g. ``train__epochs=3``, or plain names
    of training settings (``epochs=3``) and data settings (``text_column="body"``).
    """
    if not isinstance(config, RunConfig):
        config = _config_from(data, overrides, config)
    elif data is not None or overrides:
        raise ConfigError("Pass either a RunConfig or a data path with overrides, not both.")
    return TASKS[config.task].train(config, registry=registry, resume=resume, progress=progress, log=log)


def _config_from(data: str | Path | None, overrides: dict[str, Any], file: str | Path | None = None) -> RunConfig:
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        if "__" in key:
            flat[key.replace("__", ".")] = value
        elif key in TrainConfig.model_fields:
            flat[f"train.{key}"] = value
        elif key in DataConfig.model_fields:
            flat[f"data.{key}"] = value
        else:
            flat[key] = value
    if data is not None:
        flat["data.train"] = str(data)
    return load_config(file, flat)


def load_model(ref: str | Path, registry: Registry | None = None, backend: str = "auto") -> Predictor:
    """Load a registered model ('name', 'name@3', 'name@production') or a model folder, ready to predict.

    backend "auto" uses the ONNX export when one passed its agreement check (see `export`), else PyTorch.
    """
    path = model_path(ref, registry)
    return TASKS[task_of(path)].load(path, backend)


def model_path(ref: str | Path, registry: Registry | None = None) -> Path:
    """The artifact folder of a model reference ('name', 'name@3', 'name@production') or of a folder path."""
    path = Path(ref)
    return path if is_artifact(path) else (registry or Registry()).resolve(str(ref)).path


def index(ref: str, corpus: str | Path, *, registry: Registry | None = None, text_column: str | None = None,
          id_column: str | None = None, backend: str = "auto", log: Log = print) -> dict[str, Any]:  # fmt: skip
    """Embed a corpus file (a `text` column, an optional `id`) with a registered embedding model ('name' as served:
    production, else latest) into the name's search index; return the index record."""
    registry = registry or Registry()
    version = registry.resolve(ref)
    return TASKS[version.task].build_index(version, registry.home, Path(corpus), log=log, text_column=text_column,
                                           id_column=id_column, backend=backend)  # fmt: skip


def search(ref: str, queries: str | list[str], *, top_k: int = 10, registry: Registry | None = None,
           backend: str = "auto") -> list[list[dict[str, Any]]]:  # fmt: skip
    """The `top_k` best matches ({id, text, score}) of each query in the model's index, re-embedded first when the
    version `ref` names is not the one that built it."""
    registry = registry or Registry()
    version = registry.resolve(ref)
    texts = [queries] if isinstance(queries, str) else list(queries)
    return TASKS[version.task].search(version, registry.home, texts, top_k, backend)


def tune(
    data: str | Path,
    *,
    trials: int = TRIALS,
    timeout: float | None = None,
    methods: list[str] | None = None,
    registry: Registry | None = None,
    **overrides: Any,
) -> TuneResult:
    """Search hyperparameters with Optuna for a training file (overrides as for `train`); returns a
    `tuning.TuneResult` whose `version` is the best trial's model, registered."""
    from tunesmith.tuning import tune as run_search

    search = {k: overrides.pop(k) for k in ("pruner", "space", "study_name", "seed", "log") if k in overrides}
    config = _config_from(data, overrides)
    return run_search(config, trials=trials, timeout=timeout, methods=methods, registry=registry, **search)


def export_model(
    ref: str | Path, registry: Registry | None = None, quantize: bool = True,
    min_agreement: float = DEFAULT_MIN_AGREEMENT, log: Log | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Export a registered model as its task exports it (ONNX fp32 and int8, checked against PyTorch; the merged
    model for text generation) and return the export record."""
    return export_artifact(model_path(ref, registry), quantize=quantize, min_agreement=min_agreement,
                           log=log or (lambda _m: None))  # fmt: skip


def export_artifact(
    path: str | Path, *, quantize: bool = True, min_agreement: float = DEFAULT_MIN_AGREEMENT, log: Log = print
) -> dict[str, Any]:
    """Export the model in artifact folder `path` as its task exports it and return the export record."""
    from tunesmith.errors import ModelError

    if not 0 < min_agreement <= 1:
        raise ModelError(f"min_agreement must be in (0, 1], e.g. 0.99; got {min_agreement}.")
    return TASKS[task_of(path)].export(path, log=log, quantize=quantize, min_agreement=min_agreement)


def inspect_data(
    data: str | Path,
    *,
    output_dir: str | Path | None = None,
    fix: str | list[str] | None = None,
    output: str | Path | None = None,
    progress: bool = False,
    **overrides: Any,
) -> Any:
    """Check a data file before training; returns an `InspectionResult` (`.findings`, `.report`).

    `overrides` are settings as for `train` (``validation="dev.csv"``, ``task="token-classification"``).
    With `output_dir`, writes report.html, report.json and plots there; with `fix` and `output`, writes a
    cleaned copy of the training file (the input is never changed).
    """
    from tunesmith import quality

    config = _config_from(data, overrides)
    result = quality.inspect_data(config, TASKS[config.task].data_shape, output_dir=output_dir, progress=progress)
    if fix:
        if output is None:
            raise ConfigError("`fix` needs `output`, the path of the cleaned copy.")
        quality.write_fixed(result, quality.parse_fixes(fix), output)
    return result


def suggest(
    model: str | Predictor, pool: str | Path, n: int = 200, *, output: str | Path, **options: Any
) -> Any:
    """Pick the `n` texts of `pool` most worth labelling next; writes a CSV and a Label Studio import file.

    Returns a `SuggestResult`. `options`: strategy ("uncertainty-diversity", "uncertainty", "random"),
    exclude (a file of texts never to suggest), text_column, seed.
    """
    from tunesmith.tasks.text_classification.active_learning import suggest as pick

    version = model if isinstance(model, str) else "tunesmith"
    loaded = load_model(model) if isinstance(model, str) else model
    return pick(loaded, pool, n, output=output, model_version=version, **options)


def evaluate(model: str | Predictor, data: str | Path, out_dir: str | Path, **columns: Any) -> dict[str, Any]:
    """Score a model (a reference or a loaded model) on a labeled file; write report.md etc. to `out_dir`.

    `columns` may name `text_column` and `label_column`; returns the metrics written to metrics.json.
    """
    predictor = load_model(model) if isinstance(model, str) else model
    return TASKS[predictor.task].evaluate_file(predictor, data, out_dir, **columns)


def retrain(name: str, registry: Registry | None = None, *, strategy: str = "rehearsal", log: Log | None = None,
            **options: Any) -> Any:  # fmt: skip
    """Train the next version of `name` from its production version's training rows and the feedback since,
    export it and gate it (`tunesmith retrain`); returns a `retraining.Retrained` (`.result`, `.gate`,
    `.lineage`). Options: against, files, replay, overrides, gate, export, progress."""
    from tunesmith.retraining import retrain as run_retrain

    return run_retrain(registry or Registry(), name, strategy=strategy, log=log or (lambda _m: None), **options)


__all__ = ["evaluate", "export_artifact", "export_model", "inspect_data", "load_model", "model_path", "retrain",
           "suggest", "train", "tune"]  # fmt: skip
