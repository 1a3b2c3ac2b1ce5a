"""Names that become folder names, and paths that must stay inside the folder they belong to.

Model names, aliases, run names, study names and key names all end up as one path component under the
registry home (`models/NAME/`, `runs/NAME/`, `tuning/STUDY/`). They are checked where they enter (CLI,
Python API, YAML, HTTP) with one rule, and every path built from them, or read back from the database or
from Optuna's trial attributes, is resolved and checked to stay inside its root before anything is
written or deleted there.
"""

from __future__ import annotations

import re
from pathlib import Path

from tunesmith.errors import ConfigError, InvalidNameError

MAX_NAME = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Folder names Windows refuses (also with any extension): a registry home copied to a Windows share or
# synced by a client there would break on them.
_RESERVED = re.compile(r"(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?", re.IGNORECASE)


def check_name(name: object, what: str = "model name") -> str:
    """`name` if it is safe as one folder name; else an InvalidNameError that says the rule."""
    rule = (
        f"use 1-{MAX_NAME} letters, digits, '.', '_' and '-', starting with a letter or digit "
        "(e.g. 'support-tickets')"
    )
    if not isinstance(name, str) or not name:
        raise InvalidNameError(f"The {what} is empty: {rule}.")
    shown = name if len(name) <= 80 else name[:77] + "..."
    if len(name) > MAX_NAME:
        raise InvalidNameError(f"The {what} {shown!r} has {len(name)} characters; {rule}.")
    # fullmatch: `re.match(r"...$")` would accept a trailing newline ("abc\n").
    if not _NAME.fullmatch(name) or name.endswith("."):
        raise InvalidNameError(f"Invalid {what} {shown!r}: {rule}.")
    if _RESERVED.fullmatch(name):
        raise InvalidNameError(f"Invalid {what} {name!r}: it is a reserved device name on Windows; choose another.")
    return name


def confine(root: Path, path: str | Path) -> Path:
    """`path` (absolute, or relative to `root`) resolved, if it lies strictly inside `root`; else an error."""
    root = Path(root).resolve()
    resolved = (root / path).resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise ConfigError(f"Refusing to touch {resolved}: it is outside {root}, where it belongs.")
    return resolved


__all__ = ["MAX_NAME", "check_name", "confine"]
