"""Training runs: the name a run registers under, and the lock that keeps two runs of one name apart.

A run keeps its checkpoints in `<home>/runs/NAME/` until it is registered, so `--resume` can continue it.
Every task's `train` is wrapped by `locked_run`: the name is settled and checked before anything is read or
written, and `runs/NAME.lock` is held for the whole run, so a second run of the same name stops with a
clear message instead of deleting the first one's checkpoints.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tunesmith.config import RunConfig
from tunesmith.paths import MAX_NAME, check_name
from tunesmith.registry import Registry

Result = TypeVar("Result")


def default_name(config: RunConfig) -> str:
    """The run's name: `config.name` (checked), or the training file's stem made into a valid name."""
    if config.name:
        return check_name(config.name, "model name")
    stem = Path(config.data.train or "model").name.split(".")[0]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:MAX_NAME].rstrip("-._") or "model"
    try:
        return check_name(name, "model name")
    except ValueError:  # a stem such as "con" or "nul": a reserved device name
        return f"{name}-model"


def locked_run(train: Callable[..., Result]) -> Callable[..., Result]:
    """Wrap a task's `train(config, *, registry, ...)`: settle and check the name, then hold the run's lock."""

    @functools.wraps(train)
    def run(config: RunConfig, *, registry: Registry | None = None, **kwargs: Any) -> Result:
        config = config.model_copy(update={"name": default_name(config)})
        registry = registry or Registry()
        with registry.run_lock(str(config.name)):
            return train(config, registry=registry, **kwargs)

    return run


__all__ = ["default_name", "locked_run"]
