"""Folders published behind a pointer, switched in one atomic step.

An export (`onnx`, `merged`) is written into a fresh folder `<artifact>/exports/<kind>-<id>/`, and the
pointer `<artifact>/<kind>` — a relative symlink — is then replaced by `rename(2)`, which is atomic: a
reader resolves the pointer once and reads everything from that one folder, so it sees the old export or
the new one, never a mix and never none. A process killed at any step leaves the previous pointer valid
and at most a folder nobody points at, which `tunesmith doctor --repair` removes.

Artifacts written before this layout hold a real `onnx/` folder; the first new export moves it under
`exports/` and points at the new one. Readers take either form.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from tunesmith.locks import hold

EXPORTS = "exports"
LOCK = ".lock"
_TMP = ".tmp-"


def current(root: Path, pointer: str) -> Path | None:
    """The folder `root/pointer` names now (resolved once), or None when there is none or it is broken."""
    link = Path(root) / pointer
    if link.is_symlink():
        target = (link.parent / os.readlink(link)).resolve()
        exports = (Path(root) / EXPORTS).resolve()
        if target.parent != exports or not target.is_dir():
            return None  # broken, or pointing outside its artifact: treated as no export
        return target
    return link if link.is_dir() else None  # a folder of the layout before pointers


@contextmanager
def publishing(root: Path, kind: str) -> Iterator[Path]:
    """A fresh hidden folder to write a `kind` export into; on success it is published as `root/kind`.
    Exports of one artifact are serialised by a lock; a failed block leaves the published one as it was."""
    exports = Path(root) / EXPORTS
    exports.mkdir(exist_ok=True)
    with hold(exports / LOCK):  # released when the process ends, however it ends
        stamp = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"
        work = exports / f"{_TMP}{kind}-{stamp}"
        work.mkdir()
        try:
            yield work
            _publish(work, Path(root), kind, f"{kind}-{stamp}")
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _publish(work: Path, root: Path, kind: str, name: str) -> None:
    exports = root / EXPORTS
    final = exports / name
    os.rename(work, final)  # complete, but nobody points at it yet
    previous = current(root, kind)
    link = root / kind
    staged_link = root / f".{kind}-link-{uuid.uuid4().hex[:8]}"
    os.symlink(Path(EXPORTS) / name, staged_link)
    if link.is_dir() and not link.is_symlink():
        # The old layout's real folder: move it under exports/ first (the one moment a reader finds no export).
        legacy = exports / f"{kind}-legacy-{uuid.uuid4().hex[:8]}"
        os.rename(link, legacy)
        previous = legacy
    os.replace(staged_link, link)  # the switch
    prune(root, kind, keep={final, *([previous] if previous else [])})


def prune(root: Path, kind: str, keep: set[Path]) -> list[Path]:
    """Remove `kind` export folders other than `keep` (the current one and the one it replaced, which a reader
    may still be loading from), and unfinished ones. Callers hold the export lock or know no export runs."""
    exports = Path(root) / EXPORTS
    kept = {p.resolve() for p in keep}
    removed = []
    for folder in exports.glob(f"*{kind}-*") if exports.is_dir() else []:
        name = folder.name.removeprefix(_TMP)
        if folder.is_dir() and name.startswith(f"{kind}-") and folder.resolve() not in kept:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def leftovers(root: Path, kinds: tuple[str, ...]) -> list[Path]:
    """Folders under `root` that no pointer needs: unfinished or superseded exports, staged links, and the
    `.onnx-*` / `.merged-*` work folders of the layout before pointers."""
    root = Path(root)
    live = {p.resolve() for k in kinds if (p := current(root, k)) is not None}
    found = []
    exports = root / EXPORTS
    for folder in sorted(exports.iterdir()) if exports.is_dir() else []:
        if folder.name != LOCK and folder.resolve() not in live:
            found.append(folder)
    for kind in kinds:
        found += sorted(p for p in root.glob(f".{kind}-*") if p.is_dir() or p.is_symlink())
    return found


__all__ = ["EXPORTS", "current", "leftovers", "prune", "publishing"]
