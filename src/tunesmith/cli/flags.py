"""Flags shared by commands, each taking its help, choices and default from the setting it sets: one home
for each default and its reason."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from tunesmith.config import DataConfig, RunConfig, TrainConfig
from tunesmith.serving.settings import ServeSettings
from tunesmith.tasks.catalog import TASKS

BACKEND_HELP = "auto: the checked ONNX export if any, else PyTorch; onnx: the export's default variant."


def described(section: type[Any], field: str) -> str:
    """A flag's help is its setting's description and default: one home for each default and its reason."""
    info = section.model_fields[field]
    default = None if info.default_factory is not None else info.default
    shown = "" if default is None or default == [] else f" (default: {default})"
    return (info.description or "") + shown


def setting_type(section: type[Any], field: str) -> Any:
    """A setting's own type (a Literal shows its choices in --help), optional: a flag not given leaves it unset."""
    annotation = section.model_fields[field].annotation
    return annotation | None


Task = Literal[tuple(TASKS)]  # type: ignore[valid-type]


Method = setting_type(TrainConfig, "method")


Precision = setting_type(TrainConfig, "precision")


Auth = setting_type(ServeSettings, "auth")


Backend = Literal["auto", "onnx", "onnx-fp32", "onnx-int8", "pytorch"]


Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (and nothing else there).")]


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only warnings and errors.")]


# Flags shared by `train` and `tune`, and the setting each one sets.
NameFlag = Annotated[str | None, typer.Option(help=described(RunConfig, "name"))]


TaskFlag = Annotated[Task | None, typer.Option(help=described(RunConfig, "task"))]


ValidationFlag = Annotated[str | None, typer.Option(help=described(DataConfig, "validation"))]


TestFlag = Annotated[str | None, typer.Option(help=described(DataConfig, "test"))]


TextColumnFlag = Annotated[str | None, typer.Option(help=described(DataConfig, "text_column"))]


LabelColumnFlag = Annotated[str | None, typer.Option(help=described(DataConfig, "label_column"))]


MultiLabelFlag = Annotated[bool | None, typer.Option("--multi-label/--single-label", help=described(DataConfig, "multi_label"))]


DelimiterFlag = Annotated[str | None, typer.Option(help=described(DataConfig, "label_delimiter"))]


ModelFlag = Annotated[str | None, typer.Option(help=described(TrainConfig, "base_model"))]


MethodFlag = Annotated[Method, typer.Option(help=described(TrainConfig, "method"))]


ConfigFlag = Annotated[Path | None, typer.Option(help="YAML settings file (see docs/configuration.md).")]


SetFlag = Annotated[list[str] | None, typer.Option("--set", help="Any setting as section.key=value, e.g. train.weight_decay=0.")]


DATA_FLAGS = {"name": "name", "task": "task", "validation": "data.validation", "test": "data.test",
              "text_column": "data.text_column", "label_column": "data.label_column", "multi_label": "data.multi_label",
              "label_delimiter": "data.label_delimiter", "model": "train.base_model", "method": "train.method"}  # fmt: skip


TRAIN_FLAGS = {**DATA_FLAGS, "seed": "seed", "epochs": "train.epochs", "learning_rate": "train.learning_rate",
               "batch_size": "train.batch_size", "max_length": "train.max_length", "max_steps": "train.max_steps",
               "max_minutes": "train.max_minutes", "class_weights": "train.class_weights", "precision": "train.precision"}  # fmt: skip


def run_settings(data: str, config: Path | None, set_: list[str] | None, given: dict[str, Any], flags: dict[str, str]) -> RunConfig:
    """Layers, later ones winning: defaults < YAML file < --set overrides < named flags."""
    from tunesmith.config import load_config, parse_override

    overrides = dict(parse_override(item) for item in set_ or [])
    overrides["data.train"] = data
    overrides.update({key: given[flag] for flag, key in flags.items() if given.get(flag) is not None})
    if given.get("seed") is not None:
        overrides["train.seed"] = given["seed"]  # --seed seeds both the split and the training
    return load_config(config, overrides)
