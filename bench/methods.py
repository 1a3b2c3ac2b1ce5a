"""Training methods on little data: a dataset with k labelled examples per class.

    python bench/methods.py [--dataset banking77|trec|agnews] [--shots 8,16,32,64]
                            [--methods default,fewshot,full,lora] [--max-minutes 3] [--resume]

For each k, the same k examples per class (seeded) train every method; all are scored on the dataset's
test split (Banking77: the official 3,080 questions; TREC: the official 500; AG News: bench/accuracy.py's
held-out 20 %). `default` passes no method: what tunesmith picks for data of that size. The TF-IDF
baseline is the one every run trains on the same split. Also reported: trainable parameters, training
examples per second, artifact size. Writes bench/results/methods_<dataset>.json.
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
from accuracy import prepare


def k_shot(source: Path, k: int, seed: int, out: Path) -> Path:
    by_class: dict[str, list[str]] = defaultdict(list)
    with source.open(encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)  # text column first, label second, as the test file has them
        for text, label in reader:
            by_class[label].append(text)
    rng = random.Random(seed)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for label, texts in sorted(by_class.items()):
            for text in rng.sample(texts, min(k, len(texts))):
                writer.writerow([text, label])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["banking77", "trec", "agnews"], default="banking77")
    parser.add_argument("--shots", default="8,16", help="examples per class, comma-separated")
    parser.add_argument("--methods", default="default,fewshot,full,lora")
    parser.add_argument("--max-minutes", type=float, default=3.0, help="training budget per run (few-shot too)")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in the results file")
    args = parser.parse_args()
    results = f"methods_{args.dataset}"
    rows = []
    if args.resume and (RESULTS / f"{results}.json").is_file():
        rows = json.loads((RESULTS / f"{results}.json").read_text())["rows"]
    done = {(r["shots"], r["method"]) for r in rows}
    with tempfile.TemporaryDirectory() as work:
        files = prepare(args.dataset, require_shared_data(), Path(work))
        registry = tunesmith.Registry(Path(work) / "home")
        for k in [int(s) for s in args.shots.split(",")]:
            train = k_shot(Path(files["data"]), k, seed=0, out=Path(work) / f"k{k}.csv")
            for method in args.methods.split(","):
                if (k, method) in done:
                    continue
                print(f"== k={k} {method}", flush=True)
                started = time.perf_counter()
                chosen = {} if method == "default" else {"method": method}
                result = tunesmith.train(train, test=files["test"], name=f"k{k}-{method}", registry=registry,
                                         progress=False, max_minutes=args.max_minutes, **chosen)  # fmt: skip
                minutes = (time.perf_counter() - started) / 60
                meta = json.loads((result.version.path / "tunesmith.json").read_text())
                evaluation = json.loads((result.version.path / "metrics.json").read_text())
                size = sum(p.stat().st_size for p in result.version.path.rglob("*") if p.is_file()) / 2**20
                epochs = evaluation.get("epochs_run")
                seen = meta["data"]["sizes"]["train"] * epochs if epochs else None
                rows.append({
                    "shots": k, "method": method, "method_used": meta.get("method"), "accuracy": result.metrics["accuracy"],
                    "f1_macro": result.metrics["f1_macro"], "tfidf_accuracy": result.baseline["accuracy"],
                    "train_minutes": result.train_minutes, "total_minutes": minutes,
                    "trainable_parameters": meta["parameters"]["trainable"], "artifact_mb": size,
                    "examples_per_second": seen / (result.train_minutes * 60) if seen else None,
                    "details": evaluation.get("fewshot"),
                })  # fmt: skip
                save(results, {"rows": rows, "max_minutes": args.max_minutes})
    print("\n| k/class | method | accuracy | macro-F1 | TF-IDF acc | train min | trainable params | examples/s | MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        speed = f"{r['examples_per_second']:.1f}" if r["examples_per_second"] else "-"
        print(f"| {r['shots']} | {r['method']} | {r['accuracy']:.3f} | {r['f1_macro']:.3f} | {r['tfidf_accuracy']:.3f} | "
              f"{r['train_minutes']:.1f} | {r['trainable_parameters']:,} | {speed} | {r['artifact_mb']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
