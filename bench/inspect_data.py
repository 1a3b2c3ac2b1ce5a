"""Data-quality benchmarks for `tunesmith inspect`.

    python bench/inspect_data.py flips [--rate 0.05] [--epochs 1]
    python bench/inspect_data.py scale [--rows 100000]

flips: 5% of Banking77's training labels are flipped at random (seeded) to another class. `inspect` flags
likely label errors; precision and recall are measured against the flips (Banking77's own label noise
makes some flags of unflipped rows real errors, so precision is a lower bound). Then the model is trained
on the flipped data as it is, and on it with the flagged rows dropped (`--fix drop-label-errors`), both
scored on the official test split, with the same fixed number of epochs (not a time budget, so the
comparison does not depend on what else the machine is doing). Writes bench/results/inspect_flips.json.

scale: GoEmotions train + dev + test (54k Reddit comments, multi-label) repeated up to --rows rows; every
check runs; wall time and peak memory (RSS of the process). Writes bench/results/inspect_scale.json.
"""

from __future__ import annotations

import argparse
import csv
import random
import resource
import tempfile
import time
from pathlib import Path

import tunesmith
from _common import require_shared_data, save
from tunesmith.quality import write_fixed


def flips(args: argparse.Namespace) -> None:
    data = require_shared_data() / "banking77"
    with (data / "train.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    classes = sorted({r["category"] for r in rows})
    rng = random.Random(args.seed)
    flipped = set(rng.sample(range(len(rows)), round(args.rate * len(rows))))
    for i in flipped:
        rows[i]["category"] = rng.choice([c for c in classes if c != rows[i]["category"]])
    with tempfile.TemporaryDirectory() as work:
        noisy = Path(work) / "banking77_noisy.csv"
        with noisy.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["text", "category"])
            writer.writeheader()
            writer.writerows(rows)
        started = time.perf_counter()
        result = tunesmith.inspect_data(noisy)
        inspect_minutes = (time.perf_counter() - started) / 60
        found = result.report["checks"]["label_errors"]
        flagged = {r["row"] - 1 for r in found["_all"]}
        hits = len(flagged & flipped)
        precision, recall = hits / max(1, len(flagged)), hits / len(flipped)
        print(f"flipped {len(flipped)}, flagged {len(flagged)}: precision {precision:.3f}, recall {recall:.3f} "
              f"({inspect_minutes:.1f} min)", flush=True)  # fmt: skip
        cleaned = Path(work) / "banking77_cleaned.csv"
        write_fixed(result, ["drop-label-errors"], cleaned)
        registry = tunesmith.Registry(Path(work) / "home")
        runs = {}
        for what, path in (("raw (flipped)", noisy), ("cleaned", cleaned)):
            print(f"== training on {what}", flush=True)
            trained = tunesmith.train(path, test=str(data / "test.csv"), name=what.split()[0], registry=registry,
                                      progress=False, epochs=args.epochs)  # fmt: skip
            runs[what] = {"accuracy": trained.metrics["accuracy"], "f1_macro": trained.metrics["f1_macro"],
                          "tfidf_accuracy": trained.baseline["accuracy"], "train_minutes": trained.train_minutes,
                          "train_rows": sum(1 for _ in csv.DictReader(path.open(encoding="utf-8")))}  # fmt: skip
    save("inspect_flips", {
        "rate": args.rate, "seed": args.seed, "flipped": len(flipped), "flagged": len(flagged), "hits": hits,
        "precision": precision, "recall": recall, "inspect_minutes": inspect_minutes,
        "out_of_fold_accuracy": found["out_of_fold_accuracy"], "epochs": args.epochs, "runs": runs,
    })  # fmt: skip
    print("\n| training data | rows | test accuracy | macro-F1 | TF-IDF accuracy | train min |\n|---|---|---|---|---|---|")
    for what, r in runs.items():
        print(f"| {what} | {r['train_rows']} | {r['accuracy']:.3f} | {r['f1_macro']:.3f} | {r['tfidf_accuracy']:.3f} | "
              f"{r['train_minutes']:.1f} |")  # fmt: skip


def scale(args: argparse.Namespace) -> None:
    data = require_shared_data() / "goemotions"
    lines: list[str] = []
    for split in ("train", "dev", "test"):
        lines += (data / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
    base = len(lines)
    while len(lines) < args.rows:
        lines += lines[: args.rows - len(lines)]
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "goemotions_x.tsv"
        path.write_text("text\tlabels\tid\n" + "\n".join(lines) + "\n", encoding="utf-8")
        started = time.perf_counter()
        result = tunesmith.inspect_data(path, output_dir=Path(work) / "report", progress=True, text_column="text",
                                        label_column="labels", label_delimiter=",")  # fmt: skip
        seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_check = {k: len(v.get("findings", [])) for k, v in result.report["checks"].items()}
    save("inspect_scale", {"rows": len(lines), "distinct_source_rows": base, "seconds": seconds,
                           "peak_rss_mb": peak_mb, "findings_per_check": per_check,
                           "seconds_per_check": result.report["seconds_per_check"],
                           "findings": result.findings})  # fmt: skip
    print(f"\n| rows | wall time | peak RSS |\n|---|---|---|\n| {len(lines):,} | {seconds / 60:.1f} min | {peak_mb:,.0f} MB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    one = sub.add_parser("flips")
    one.add_argument("--rate", type=float, default=0.05)
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--epochs", type=float, default=1.0, help="epochs of each training run")
    two = sub.add_parser("scale")
    two.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    flips(args) if args.what == "flips" else scale(args)


if __name__ == "__main__":
    main()
