"""Comparing finished runs: one row per registered version, read from the artifacts themselves."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tunesmith.artifact import read_meta
from tunesmith.registry import is_export_file
from tunesmith.tasks.catalog import TASKS


def compare_runs(versions: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per registered version: method, settings, validation and test metrics, time, size.

    Everything comes from the artifacts themselves (tunesmith.json, metrics.json, config.yaml), so versions
    trained by different tunesmith releases or on other machines compare the same way.
    """
    rows = []
    for version in versions:
        path = Path(version.path)
        meta = read_meta(path)
        evaluation = (
            json.loads((path / "metrics.json").read_text(encoding="utf-8")) if (path / "metrics.json").is_file() else {}
        )
        config = (
            yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
            if (path / "config.yaml").is_file()
            else {}
        )
        train = (config or {}).get("train", {})
        keys = TASKS[version.task].headline_metrics if version.task in TASKS else ()
        test = evaluation.get("test", {})
        validation = evaluation.get("validation", {})
        files = [p for p in path.rglob("*") if p.is_file() and not is_export_file(p.relative_to(path))]
        rows.append({
            "ref": version.ref,
            "task": version.task,
            "method": meta.get("method", "full"),
            "base_model": meta.get("base_model"),
            "learning_rate": train.get("learning_rate"),
            "epochs": train.get("epochs"),
            "batch_size": train.get("batch_size"),
            "train_size": (meta.get("data") or {}).get("sizes", {}).get("train"),
            "test": {k: test[k] for k in keys if isinstance(test.get(k), int | float)},
            "validation": {k: validation[k] for k in keys if isinstance(validation.get(k), int | float)},
            "baseline": {k: v for k, v in (meta.get("baseline_metrics") or {}).items() if k in keys},
            "train_minutes": evaluation.get("train_minutes"),
            "trainable_parameters": (meta.get("parameters") or {}).get("trainable"),
            "size_mb": sum(p.stat().st_size for p in files) / 2**20,
            "created_at": meta.get("created_at"),
        })  # fmt: skip
    return rows
