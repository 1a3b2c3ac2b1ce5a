"""Models shipped in a format transformers cannot train, converted once into an ordinary Hugging Face folder.

A conversion costs seconds to minutes, so its result is kept in the cache (`$TUNESMITH_CACHE`, by default
`~/.cache/tunesmith`), under a folder named by the source file's SHA-256. The folder is written beside its
final place and renamed into it, so a killed conversion never leaves a half-written model; `source.json` inside
records the checksum, and a folder whose checksum does not match its source file is converted anew.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tunesmith.errors import ModelError

SOURCE = "source.json"


def cache_dir(kind: str) -> Path:
    """Where conversions of `kind` ("gguf", "e5") are kept."""
    return Path(os.environ.get("TUNESMITH_CACHE", Path.home() / ".cache" / "tunesmith")) / kind


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def converted_folder(source: str | Path, cache: Path, convert: Callable[[Path, Path], None]) -> Path:
    """The folder `convert(source, folder)` makes from `source`, under `cache` (converted now if it has none)."""
    source = Path(source)
    if not source.is_file():
        raise ModelError(f"Model file {source} does not exist.")
    checksum = sha256_of(source)
    target = cache / f"{source.stem}-{checksum[:16]}"
    recorded = target / SOURCE
    if recorded.is_file() and json.loads(recorded.read_text())["sha256"] == checksum:
        return target
    if target.exists():  # converted from other bytes, or damaged: convert again
        shutil.rmtree(target)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        convert(source, partial)
        (partial / SOURCE).write_text(json.dumps({"source": str(source), "sha256": checksum}, indent=2))
        partial.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(partial, target)
        except OSError:  # another process finished the same conversion first
            if not (target / SOURCE).is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
