"""Tasks, registered by their Hugging Face pipeline names.

A task module provides `train(config, *, registry, resume, progress, log) -> TrainResult`. Adding a
task is one new module and one line here.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tunesmith.errors import ConfigError

TASKS = {
    "text-classification": "tunesmith.training",
    "token-classification": "tunesmith.tasks.token_classification",
    "question-answering": "tunesmith.tasks.question_answering",
}


def get_task(name: str) -> ModuleType:
    if name not in TASKS:
        raise ConfigError(f"Unknown task {name!r}. Available tasks: {', '.join(TASKS)}.")
    return importlib.import_module(TASKS[name])
