"""Advisory file locks (`flock`) that say "a live process is using this".

The kernel drops a lock when its process ends, however it ends (SIGKILL included), so a lock that can be
taken means its owner is gone: `doctor` uses that to tell a killed run's leftovers from a running one's
work in progress.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def hold(lock_file: Path, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on `lock_file` for the block; yields False (holding nothing) if `wait` is off and
    another process has it. The file records the holder's pid, for messages."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield True


def holder(lock_file: Path) -> str:
    """Who holds `lock_file`, as it recorded itself ("pid 123"), for messages."""
    try:
        return lock_file.read_text().strip() or "another process"
    except OSError:
        return "another process"


def in_use(lock_file: Path) -> bool:
    """Whether a live process holds `lock_file` (False if it does not exist)."""
    if not lock_file.exists():
        return False
    with open(lock_file, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


__all__ = ["hold", "holder", "in_use"]
