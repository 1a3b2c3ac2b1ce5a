"""Shared bits of the benchmark scripts: where the data is, machine facts, writing results."""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from tunesmith.artifact import library_versions

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
    from tunesmith.models import bf16_supported

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "bf16": bf16_supported(),  # native bf16: what decides training precision, and so every speed figure
        "python": platform.python_version(),
        "versions": versions,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, ...] = ("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def save(name: str, payload: dict[str, object]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n", encoding="utf-8")
    return path


def export_and_print(model_path: Path) -> dict[str, object]:
    """Export a trained artifact to ONNX (fp32 + int8, checked against PyTorch); print the check as a table."""
    from tunesmith.api import export_artifact
    from tunesmith.export import export_summary

    record = export_artifact(model_path, log=lambda _message: None)
    rows = export_summary(record)
    reference = record["reference"]
    print(f"\nONNX export, checked on {record['checked_on']['n']} validation / {record['checked_on']['test_n']} test "
          f"items; PyTorch: {reference['texts_per_second']:.1f} items/s on the test split\n")  # fmt: skip
    print("| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(row.values()) + " |")
    return record
