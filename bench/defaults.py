"""The measurements behind the default batch size, learning rate and epochs (by data size).

    python bench/defaults.py                                   # trec and banking77, the grid below
    python bench/defaults.py --only trec --grid 32:1e-4:3 16:1e-4:8

Each grid point is `batch:learning_rate:epochs`, trained with tunesmith (the rest of its defaults: the run
plan, length-grouped batches, bf16 autocast, early stopping) on the dataset's training file and scored on
its official test file. Test accuracy and macro-F1, minutes of training and training examples per second.
Run it alone on the machine. Writes bench/results/defaults.json (merged per dataset).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import tunesmith
from _common import RESULTS, require_shared_data, save
from accuracy import prepare

GRID = ["16:1e-4:8", "32:1e-4:3", "32:2e-4:3", "32:1e-4:5"]


def one(kwargs: dict[str, Any], batch: int, lr: float, epochs: float, work: Path) -> dict[str, Any]:
    options = {k: v for k, v in kwargs.items() if k not in {"data", "max_minutes"}}
    result = tunesmith.train(kwargs["data"], registry=tunesmith.Registry(work / f"home-{batch}-{lr}-{epochs}"),
                             name="bench", progress=False, log=lambda _m: None, batch_size=batch, learning_rate=lr,
                             epochs=epochs, **options)  # fmt: skip
    plan = json.loads((result.version.path / "tunesmith.json").read_text())["plan"]
    history = json.loads((result.version.path / "metrics.json").read_text())
    examples = history["epochs_run"] * plan["examples"]
    return {"batch_size": batch, "learning_rate": lr, "epochs": epochs, "epochs_run": history["epochs_run"],
            "accuracy": result.metrics["accuracy"], "f1_macro": result.metrics["f1_macro"],
            "minutes": result.train_minutes, "examples_per_second": examples / (result.train_minutes * 60),
            "train_rows": plan["examples"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=["trec", "banking77"])
    parser.add_argument("--grid", nargs="*", default=GRID)
    args = parser.parse_args()
    shared = require_shared_data()
    path = RESULTS / "defaults.json"
    results: dict[str, Any] = json.loads(path.read_text())["datasets"] if path.is_file() else {}
    for name in args.only:
        rows = []
        with tempfile.TemporaryDirectory() as folder:
            kwargs = prepare(name, shared, Path(folder))
            kwargs["data"] = str(kwargs["data"])
            for point in args.grid:
                batch, lr, epochs = point.split(":")
                rows.append(one(kwargs, int(batch), float(lr), float(epochs), Path(folder)))
                r = rows[-1]
                print(f"{name} batch {batch} lr {lr} epochs {epochs}: accuracy {r['accuracy']:.4f} macro-F1 "
                      f"{r['f1_macro']:.4f}, {r['minutes']:.1f} min, {r['examples_per_second']:.0f} examples/s, "
                      f"{r['epochs_run']:.2f} epochs run", flush=True)  # fmt: skip
        results[name] = rows
        save("defaults", {"datasets": results})
    print(f"wrote {RESULTS / 'defaults.json'}")


if __name__ == "__main__":
    main()
