"""Tasks, registered by their Hugging Face pipeline names.

Adding a task is one new module and one line in `TASKS`. A task module provides:

- `TASK`: its name; `WARM_UP`: one input to run before a loaded model takes traffic;
- `train(config, *, registry, resume, progress, log) -> TrainResult`: fine-tune, evaluate, register;
- `load(path, backend="auto", threads=None)`: the predictor of a registered artifact, on PyTorch or on
  the ONNX variant that passed its export check;
- `evaluate_file(predictor, path, out_dir, **options) -> dict`: score it on a labeled file, write a report;
- `export_check(path) -> export.ExportCheck`: how to trace, calibrate and compare an ONNX export;
- `serve_compute(predictor, items, batch_size) -> list`: one server batch, one result per item.

`tests/test_tasks.py` runs every registered task through train -> evaluate -> register -> export ->
serve -> predict.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tunesmith.errors import ConfigError

TASKS = {
    "text-classification": "tunesmith.tasks.text_classification",
    "token-classification": "tunesmith.tasks.token_classification",
    "question-answering": "tunesmith.tasks.question_answering",
    "text-generation": "tunesmith.tasks.text_generation",
}


def get_task(name: str) -> ModuleType:
    """The module of task `name`."""
    if name not in TASKS:
        raise ConfigError(f"Unknown task {name!r}. Available tasks: {', '.join(TASKS)}.")
    return importlib.import_module(TASKS[name])
