"""Training runs: the name a run registers under.

A run keeps its checkpoints in `<home>/runs/NAME/` until it is registered, so `--resume` can continue it;
`training.fit` settles the name with `default_name` and holds `runs/NAME.lock` for the whole run.
"""

from __future__ import annotations

import re
from pathlib import Path

from tunesmith.config import RunConfig
from tunesmith.paths import MAX_NAME, check_name


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


__all__ = ["default_name"]
