"""A file as it is distributed, read whole: AG News' header-less `class,title,description` rows, where the loader
now reads the title and the description as one text, against the description alone (what it read before).

    python bench/text_columns.py [--max-minutes 5]

AG News ships only test.csv offline (7,600 rows): its first 80 % is written back, unchanged in format, as the
training file and the rest as the test file, as bench/accuracy.py splits it (there, the two columns were joined by
the script). Both runs train with defaults and `max_minutes`, on the same rows, and are scored on the same 1,520
test rows, each beside its TF-IDF baseline. Run it alone on the machine. Writes bench/results/text_columns_agnews.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tunesmith
from _common import require_shared_data, save

RUNS = {"whole row (default now)": None, "description only (before)": "column2"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-minutes", type=float, default=5.0, help="training budget a run (default 5)")
    args = parser.parse_args()
    lines = (require_shared_data() / "ag_news" / "test.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    cut = int(len(lines) * 0.8)  # the original order is mixed across classes
    results = []
    with tempfile.TemporaryDirectory() as work:
        train, test = Path(work) / "train.csv", Path(work) / "test.csv"
        train.write_text("".join(lines[:cut]), encoding="utf-8")
        test.write_text("".join(lines[cut:]), encoding="utf-8")
        for run, column in RUNS.items():
            print(f"== {run}", flush=True)
            started = time.perf_counter()
            options = {"text_column": column} if column else {}
            result = tunesmith.train(train, name="agnews", test=str(test), max_minutes=args.max_minutes,
                                     registry=tunesmith.Registry(Path(work) / run.split()[0]), progress=False,
                                     **options)  # fmt: skip
            m, b = result.metrics, result.baseline
            results.append({
                "run": run, "text_column": column or "detected", "accuracy": m["accuracy"], "f1_macro": m["f1_macro"],
                "test_size": m["n"], "baseline_accuracy": b["accuracy"], "baseline_f1_macro": b["f1_macro"],
                "train_minutes": round(result.train_minutes, 2),
                "total_minutes": round((time.perf_counter() - started) / 60, 2), "max_minutes": args.max_minutes,
            })  # fmt: skip
    path = save("text_columns_agnews", {"results": results})
    print(f"\nAG News as distributed, {results[0]['test_size']} test rows, {args.max_minutes:g}-minute budget\n")
    print("| text read | accuracy | macro-F1 | TF-IDF accuracy | TF-IDF macro-F1 | train minutes |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['run']} | {r['accuracy']:.3f} | {r['f1_macro']:.3f} | {r['baseline_accuracy']:.3f} | "
              f"{r['baseline_f1_macro']:.3f} | {r['train_minutes']:.1f} |")  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
