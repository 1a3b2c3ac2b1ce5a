"""Shared bits of the benchmark scripts: where the data is, machine facts, writing results."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from tunesmith.training import library_versions

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("TUNESMITH_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "bench" / "results"


def require_shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        sys.exit(f"The benchmark datasets are not at {SHARED_DATA}; set TUNESMITH_SHARED_DATA.")
    return SHARED_DATA


def machine() -> dict[str, object]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = library_versions()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def save(name: str, payload: dict[str, object]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n", encoding="utf-8")
    return path
