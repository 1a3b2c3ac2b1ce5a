"""Training methods on little data: Banking77 with k labelled examples per class.

    python bench/methods.py [--shots 8,16,32,64] [--methods fewshot,full,lora] [--max-minutes 3] [--resume]

For each k, the same k examples per class (seeded) train every method; all are scored on the official
Banking77 test split (3,080 questions, 77 classes). tunesmith holds 10% of the k-shot set out for
validation (early stopping, thresholds), so the model sees ~0.9k per class. The TF-IDF baseline is the
one every run trains on the same split. Also reported: trainable parameters, training examples per
second, artifact size. Writes bench/results/methods_banking77.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import tunesmith
from _common import RESULTS, require_shared_data, save


def k_shot(source: Path, k: int, seed: int, out: Path) -> Path:
    by_class: dict[str, list[str]] = defaultdict(list)
    with source.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            by_class[row["category"]].append(row["text"])
    rng = random.Random(seed)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "category"])  # the test file's column names
        for label, texts in sorted(by_class.items()):
            for text in rng.sample(texts, min(k, len(texts))):
                writer.writerow([text, label])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", default="8,16", help="examples per class, comma-separated")
    parser.add_argument("--methods", default="fewshot,full,lora")
    parser.add_argument("--max-minutes", type=float, default=3.0, help="training budget per run (few-shot too)")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in the results file")
    args = parser.parse_args()
    data = require_shared_data() / "banking77"
    rows = []
    if args.resume and (RESULTS / "methods_banking77.json").is_file():
        rows = json.loads((RESULTS / "methods_banking77.json").read_text())["rows"]
    done = {(r["shots"], r["method"]) for r in rows}
    with tempfile.TemporaryDirectory() as work:
        registry = tunesmith.Registry(Path(work) / "home")
        for k in [int(s) for s in args.shots.split(",")]:
            train = k_shot(data / "train.csv", k, seed=0, out=Path(work) / f"k{k}.csv")
            for method in args.methods.split(","):
                if (k, method) in done:
                    continue
                print(f"== k={k} {method}", flush=True)
                started = time.perf_counter()
                result = tunesmith.train(train, test=str(data / "test.csv"), name=f"k{k}-{method}", method=method,
                                         registry=registry, progress=False, max_minutes=args.max_minutes)  # fmt: skip
                minutes = (time.perf_counter() - started) / 60
                meta = json.loads((result.version.path / "tunesmith.json").read_text())
                evaluation = json.loads((result.version.path / "metrics.json").read_text())
                size = sum(p.stat().st_size for p in result.version.path.rglob("*") if p.is_file()) / 2**20
                epochs = evaluation.get("epochs_run")
                seen = meta["data"]["sizes"]["train"] * epochs if epochs else None
                rows.append({
                    "shots": k, "method": method, "accuracy": result.metrics["accuracy"],
                    "f1_macro": result.metrics["f1_macro"], "tfidf_accuracy": result.baseline["accuracy"],
                    "train_minutes": result.train_minutes, "total_minutes": minutes,
                    "trainable_parameters": meta["parameters"]["trainable"], "artifact_mb": size,
                    "examples_per_second": seen / (result.train_minutes * 60) if seen else None,
                    "details": evaluation.get("fewshot"),
                })  # fmt: skip
                save("methods_banking77", {"rows": rows, "max_minutes": args.max_minutes})
    print("\n| k/class | method | accuracy | macro-F1 | TF-IDF acc | train min | trainable params | examples/s | MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        speed = f"{r['examples_per_second']:.1f}" if r["examples_per_second"] else "-"
        print(f"| {r['shots']} | {r['method']} | {r['accuracy']:.3f} | {r['f1_macro']:.3f} | {r['tfidf_accuracy']:.3f} | "
              f"{r['train_minutes']:.1f} | {r['trainable_parameters']:,} | {speed} | {r['artifact_mb']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
