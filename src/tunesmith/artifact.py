"""A model artifact on disk: the one reader and writer of `tunesmith.json` and of export records.

An artifact folder holds `model/` (or `adapter/`), the tokenizer, `tunesmith.json` (what the model is:
task, labels, token limit, metrics, data fingerprint, library versions), `config.yaml` (the resolved
settings), `metrics.json`, `report.md` and `data/` (the held-out splits). Exports live under `exports/`
behind the `onnx` (or `merged`) pointer, each with its `export.json` record. Everything here is plain
files, so a model folder is loadable and explainable on its own, by any later tunesmith release.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelError
from tunesmith.pointers import current

ARTIFACT_META = "tunesmith.json"
FORMAT = 1  # the version of tunesmith.json's layout; readers accept every earlier one
EXPORT_DIR = "onnx"
EXPORT_META = "export.json"
BACKENDS = ("auto", "onnx", "onnx-fp32", "pytorch")


def library_versions() -> dict[str, str]:
    """The versions of the libraries that shape a model's numbers, recorded with every artifact."""
    versions = {}
    for package in ("tunesmith", "torch", "transformers", "tokenizers", "scikit-learn", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return versions


def describe(config: Any, **fields: Any) -> dict[str, Any]:
    """The `tunesmith.json` record of a model trained from `config` (a `RunConfig`): the fields every task
    writes, then the task's own `fields` (labels, token limit, metrics, data, ...), which win."""
    lineage = {"lineage": config.lineage} if getattr(config, "lineage", None) else {}
    return {"format": FORMAT, "task": config.task, "name": config.name, "base_model": config.train.base_model,
            "method": config.train.method, "created_at": datetime.now(UTC).isoformat(),
            "library_versions": library_versions(), **lineage, **fields}  # fmt: skip


def write_meta(folder: str | Path, meta: dict[str, Any]) -> None:
    (Path(folder) / ARTIFACT_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def write_export(folder: str | Path, record: dict[str, Any]) -> None:
    """Write an export's record into its folder (before `pointers.publishing` makes the folder current)."""
    (Path(folder) / EXPORT_META).write_text(json.dumps(record, indent=2), encoding="utf-8")


def is_artifact(path: str | Path) -> bool:
    return (Path(path) / ARTIFACT_META).is_file()


def task_of(path: str | Path) -> str:
    """The task of the artifact at `path` (artifacts from before tasks were recorded are text classifiers)."""
    return str(read_meta(path).get("task", "text-classification"))

def read_meta(path: str | Path) -> dict[str, Any]:
    meta_file = Path(path) / ARTIFACT_META
    if not meta_file.is_file():
        raise ModelError(f"{path} is not a tunesmith model: it has no {ARTIFACT_META}.")
    return json.loads(meta_file.read_text(encoding="utf-8"))


def read_export(path: str | Path) -> dict[str, Any] | None:
    """The export record of an artifact (`onnx/export.json`), or None when it was never exported. Its
    "folder" is where the pointer led when it was read: load the variant files from there, so a record
    and the files read with it always come from the same export."""
    folder = current(Path(path), EXPORT_DIR)
    if folder is None:
        return None
    try:
        record = json.loads((folder / EXPORT_META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None  # a folder being pruned under us: as if never exported; the next look finds the new one
    return {**record, "folder": str(folder)}


def choose_variant(path: str | Path, backend: str = "auto") -> str | None:
    """The exported variant `backend` asks for in the artifact at `path`, or None for PyTorch.

    backend: "auto" (the export's default variant if one passed its agreement check, else PyTorch), "onnx"
    (the default variant; fails without one), "onnx-fp32" / "onnx-int8" (that variant), or "pytorch".
    """
    if backend == "pytorch":
        return None
    export = read_export(path)
    if backend == "auto":
        return None if export is None else export.get("default")
    if not backend.startswith("onnx"):
        raise ModelError(f"Unknown backend {backend!r}: use one of {', '.join(BACKENDS)}, onnx-int8.")
    variant = backend.removeprefix("onnx").removeprefix("-") or None
    if export is None:
        raise ModelError(f"{path} has no ONNX export; run `tunesmith export` first or use --backend pytorch.")
    if variant is not None and variant not in export["variants"]:
        raise ModelError(f"The export has no {variant!r} variant; it has {', '.join(export['variants'])}.")
    if variant is None and export.get("default") is None:
        raise ModelError("No exported variant passed its agreement check; name one (onnx-fp32) or use pytorch.")
    return variant or export["default"]


def export_file(path: str | Path, variant: str) -> Path:
    """The ONNX file of an exported variant."""
    export = read_export(path)
    assert export is not None
    return Path(export["folder"]) / export["variants"][variant]["file"]
