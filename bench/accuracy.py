"""Accuracy of tunesmith's defaults on real datasets, beside the TF-IDF baseline every run trains.

    python bench/accuracy.py                 # all datasets
    python bench/accuracy.py --only trec     # one of: banking77, trec, agnews, goemotions

Each dataset is trained with default settings (embedded all-MiniLM-L6-v2) and evaluated on its
official test split. Prints a table and writes bench/results/accuracy.json (merged per dataset).
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import tunesmith
from _common import RESULTS, machine, require_shared_data, save, write_csv

# Reference figures for context (same or larger models), with their source.
REFERENCES = {
    "banking77": "BERT-base ~0.93 accuracy (Casanueva et al. 2020, 'Efficient Intent Detection with Dual Sentence Encoders')",
    "trec": "BERT-base ~0.97 accuracy on TREC-6 (commonly reported fine-tuning figure)",
    "agnews": "BERT-base ~0.94-0.95 accuracy trained on the full 120k training set (we train on 6,080 rows)",
    "goemotions": "BERT-base macro-F1 0.46 (Demszky et al. 2020, GoEmotions paper)",
}


def prepare(name: str, data: Path, work: Path) -> dict[str, object]:
    """Arguments for tunesmith.train: the original files where our loader takes them as they are."""
    if name == "banking77":
        return {"data": data / "banking77/train.csv", "test": str(data / "banking77/test.csv")}
    if name == "trec":
        # 'COARSE:fine question' per line, Latin-1: not a tabular format, so convert.
        def read(file: str) -> list[tuple[str, str]]:
            rows = []
            for line in (data / "trec" / file).read_bytes().decode("latin-1").splitlines():
                label, _, text = line.partition(" ")
                rows.append((text.strip(), label.split(":")[0]))
            return rows

        return {
            "data": write_csv(work / "trec_train.csv", read("train_5500.label")),
            "test": str(write_csv(work / "trec_test.csv", read("TREC_10.label"))),
        }
    if name == "agnews":
        classes = (data / "ag_news/classes.txt").read_text().split()
        with (data / "ag_news/test.csv").open(encoding="utf-8") as handle:
            rows = [
                (f"{title}. {body}".replace("\\", " "), classes[int(c) - 1]) for c, title, body in csv.reader(handle)
            ]
        cut = int(len(rows) * 0.8)  # the original order is mixed across classes
        return {
            "data": write_csv(work / "agnews_train.csv", rows[:cut]),
            "test": str(write_csv(work / "agnews_test.csv", rows[cut:])),
        }
    if name == "goemotions":
        names = (data / "goemotions/labels.txt").read_text().split()

        def convert(file: str) -> str:
            out = work / f"goemotions_{file}.jsonl"
            with (data / "goemotions" / f"{file}.tsv").open(encoding="utf-8") as src, out.open("w") as dst:
                for line in src:
                    text, ids, _ = line.rstrip("\n").split("\t")
                    dst.write(json.dumps({"text": text, "labels": [names[int(i)] for i in ids.split(",")]}) + "\n")
            return str(out)

        return {"data": convert("train"), "validation": convert("dev"), "test": convert("test"),
                "max_minutes": 15.0}  # fmt: skip
    raise SystemExit(f"unknown dataset {name!r}")


def run(name: str, data: Path) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as work:
        kwargs = prepare(name, data, Path(work))
        registry = tunesmith.Registry(Path(work) / "home")
        start = time.perf_counter()
        result = tunesmith.train(kwargs.pop("data"), registry=registry, name=name, progress=False, **kwargs)
        total = (time.perf_counter() - start) / 60
    return {
        "dataset": name,
        "test_size": result.metrics["n"],
        "accuracy": result.metrics["accuracy"],
        "f1_macro": result.metrics["f1_macro"],
        "f1_micro": result.metrics["f1_micro"],
        "baseline_accuracy": result.baseline["accuracy"],
        "baseline_f1_macro": result.baseline["f1_macro"],
        "baseline_f1_micro": result.baseline["f1_micro"],
        "train_minutes": round(result.train_minutes, 2),
        "total_minutes": round(total, 2),
        "settings": "defaults" + (f", max_minutes={kwargs['max_minutes']}" if "max_minutes" in kwargs else ""),
        "reference": REFERENCES[name],
        "machine": machine(),  # per row: the file keeps rows of earlier runs, from other machines and days
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=list(REFERENCES), help="dataset(s) to run")
    args = parser.parse_args()
    data = require_shared_data()
    previous = RESULTS / "accuracy.json"
    results = {r["dataset"]: r for r in json.loads(previous.read_text())["results"]} if previous.exists() else {}
    for name in args.only or list(REFERENCES):
        print(f"== {name}", flush=True)
        results[name] = run(name, data)
        path = save("accuracy", {"results": list(results.values())})
    print(
        f"\n{'dataset':<11} {'acc':>6} {'macroF1':>7} {'microF1':>7} | {'tfidf acc':>9} {'macroF1':>7} | {'train min':>9}"
    )
    for r in results.values():
        print(f"{r['dataset']:<11} {r['accuracy']:>6.4f} {r['f1_macro']:>7.4f} {r['f1_micro']:>7.4f} | "
              f"{r['baseline_accuracy']:>9.4f} {r['baseline_f1_macro']:>7.4f} | {r['train_minutes']:>9.1f}")  # fmt: skip
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
