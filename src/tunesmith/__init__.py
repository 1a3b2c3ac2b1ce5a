"""tunesmith: from a file of labeled examples to a fine-tuned, evaluated, registered transformer model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.config import DataConfig, RunConfig, TrainConfig, load_config
from tunesmith.errors import ConfigError, DataError, ModelError, RegistryError, TunesmithError
from tunesmith.inference import BaseClassifier, OnnxClassifier, Prediction, TextClassifier
from tunesmith.registry import ModelVersion, Registry

__version__ = "0.1.0"


def train(
    data: str | Path | None = None,
    *,
    config: RunConfig | str | Path | None = None,
    registry: Registry | None = None,
    resume: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> Any:
    """Fine-tune, evaluate and register a model; returns a `TrainResult`.

    `overrides` are dotted settings with '__' for the dot, e.g. ``train__epochs=3``, or plain names
    of training settings (``epochs=3``) and data settings (``text_column="body"``).
    """
    from tunesmith.tasks import get_task

    if not isinstance(config, RunConfig):
        config = _config_from(data, overrides, config)
    elif data is not None or overrides:
        raise ConfigError("Pass either a RunConfig or a data path with overrides, not both.")
    return get_task(config.task).train(config, registry=registry, resume=resume, progress=progress)


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


def load_model(ref: str, registry: Registry | None = None, backend: str = "auto") -> BaseClassifier:
    """Load a registered model ('name', 'name@3', 'name@production') or a model folder, ready to predict.

    backend "auto" uses the ONNX export when one passed its agreement check (see `export`), else PyTorch.
    """
    from tunesmith.tasks import get_task

    path = Path(ref)
    if not (path / "tunesmith.json").is_file():
        path = (registry or Registry()).resolve(ref).path
    task = json.loads((path / "tunesmith.json").read_text(encoding="utf-8")).get("task", "text-classification")
    return get_task(task).load(path, backend)


def tune(
    data: str | Path,
    *,
    trials: int = 20,
    timeout: float | None = None,
    methods: list[str] | None = None,
    registry: Registry | None = None,
    **overrides: Any,
) -> Any:
    """Search hyperparameters with Optuna for a training file (overrides as for `train`); returns a
    `tuning.TuneResult` whose `version` is the best trial's model, registered."""
    from tunesmith.tuning import tune as run_search

    search = {k: overrides.pop(k) for k in ("pruner", "space", "study_name", "seed", "log") if k in overrides}
    config = _config_from(data, overrides)
    return run_search(config, trials=trials, timeout=timeout, methods=methods, registry=registry, **search)


def export_model(
    ref: str, registry: Registry | None = None, quantize: bool = True, min_agreement: float = 0.99
) -> dict[str, Any]:
    """Export a registered model to ONNX (fp32 and int8), check it against PyTorch, return the record."""
    from tunesmith.export import export_artifact

    path = Path(ref)
    if not (path / "tunesmith.json").is_file():
        path = (registry or Registry()).resolve(ref).path
    return export_artifact(path, quantize=quantize, min_agreement=min_agreement, log=lambda _m: None)


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

    result = quality.inspect_data(_config_from(data, overrides), output_dir=output_dir, progress=progress)
    if fix:
        if output is None:
            raise ConfigError("`fix` needs `output`, the path of the cleaned copy.")
        quality.write_fixed(result, quality.parse_fixes(fix), output)
    return result


def suggest(
    model: str | BaseClassifier, pool: str | Path, n: int = 200, *, output: str | Path, **options: Any
) -> Any:
    """Pick the `n` texts of `pool` most worth labelling next; writes a CSV and a Label Studio import file.

    Returns a `SuggestResult`. `options`: strategy ("uncertainty-diversity", "uncertainty", "random"),
    exclude (a file of texts never to suggest), text_column, seed.
    """
    from tunesmith.active_learning import suggest as pick

    version = model if isinstance(model, str) else "tunesmith"
    loaded = load_model(model) if isinstance(model, str) else model
    return pick(loaded, pool, n, output=output, model_version=version, **options)


def evaluate(model: str | BaseClassifier, data: str | Path, out_dir: str | Path, **columns: Any) -> dict[str, Any]:
    """Score a model (a reference or a loaded model) on a labeled file; write report.md etc. to `out_dir`.

    `columns` may name `text_column` and `label_column`; returns the metrics written to metrics.json.
    """
    from tunesmith.tasks import get_task

    predictor = load_model(model) if isinstance(model, str) else model
    return get_task(predictor.task).evaluate_file(predictor, data, out_dir, **columns)


__all__ = [
    "BaseClassifier",
    "ConfigError",
    "DataConfig",
    "DataError",
    "ModelError",
    "ModelVersion",
    "OnnxClassifier",
    "Prediction",
    "Registry",
    "RegistryError",
    "RunConfig",
    "TextClassifier",
    "TrainConfig",
    "TunesmithError",
    "evaluate",
    "export_model",
    "inspect_data",
    "load_config",
    "load_model",
    "suggest",
    "train",
    "tune",
]
