"""Training methods on little data: a dataset with k labelled examples per class.

    python bench/methods.py [--dataset banking77|trec|agnews] [--shots 8,16,32,64]
                            [--methods default,fewshot,full,lora,setfit] [--max-minutes 3] [--resume]

For each k, the same k examples per class (seeded) train every method; all are scored on the dataset's
test split (Banking77: the official 3,080 questions; TREC: the official 500; AG News: bench/accuracy.py's
held-out 20 %). `default` passes no method: what tunesmith picks for data of that size. The TF-IDF
baseline is the one every run trains on the same split. `setfit` is the peer, not tunesmith: the `setfit`
library run as its paper did (20 pair iterations a text, one epoch, batch 16, body lr 2e-5, a logistic-regression
head) on the same encoder and the same k examples, without a budget. Also reported: trainable parameters, training
examples per second, artifact size. Writes bench/results/methods_<dataset>[_<label>].json.
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
from typing import Any

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


def setfit_run(train: Path, test: Path) -> dict[str, Any]:
    """The peer: SetFit as its paper ran it, on the embedded encoder; test accuracy and macro-F1, minutes."""
    import datasets
    import setfit
    from sklearn.metrics import accuracy_score, f1_score

    from tunesmith.config import DEFAULT_MODEL
    from tunesmith.models import resolve_model

    def read(path: Path) -> tuple[list[str], list[str]]:
        with path.open(encoding="utf-8") as handle:
            rows = list(csv.reader(handle))[1:]
        return [r[0] for r in rows], [r[1] for r in rows]

    texts, labels = read(train)
    test_texts, test_labels = read(test)
    datasets.disable_progress_bars()
    started = time.perf_counter()
    model = setfit.SetFitModel.from_pretrained(resolve_model(DEFAULT_MODEL))
    with tempfile.TemporaryDirectory() as scratch:
        args = setfit.TrainingArguments(batch_size=16, num_epochs=1, num_iterations=20, body_learning_rate=2e-5,
                                        seed=0, show_progress_bar=False, report_to="none", save_strategy="no",
                                        output_dir=scratch)  # fmt: skip
        trainer = setfit.Trainer(model=model, args=args,
                                 train_dataset=datasets.Dataset.from_dict({"text": texts, "label": labels}))  # fmt: skip
        trainer.train()
    minutes = (time.perf_counter() - started) / 60
    predicted = [str(p) for p in model.predict(test_texts, batch_size=64)]
    return {"accuracy": accuracy_score(test_labels, predicted), "train_minutes": minutes,
            "f1_macro": f1_score(test_labels, predicted, average="macro", zero_division=0),
            "steps": trainer.st_trainer.state.global_step}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["banking77", "trec", "agnews"], default="banking77")
    parser.add_argument("--shots", default="8,16", help="examples per class, comma-separated")
    parser.add_argument("--methods", default="default,fewshot,full,lora")
    parser.add_argument("--max-minutes", type=float, default=3.0, help="training budget per run (few-shot too)")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in the results file")
    parser.add_argument("--label", default="", help="a suffix for the results file, to keep another run's rows")
    args = parser.parse_args()
    results = f"methods_{args.dataset}" + (f"_{args.label}" if args.label else "")
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
                if method == "setfit":
                    peer = setfit_run(train, Path(files["test"]))
                    rows.append({"shots": k, "method": method, "method_used": "setfit (the library)", **peer,
                                 "tfidf_accuracy": None, "total_minutes": peer["train_minutes"],
                                 "trainable_parameters": None, "artifact_mb": None, "examples_per_second": None,
                                 "details": {"steps": peer.pop("steps")}})  # fmt: skip
                    save(results, {"rows": rows, "max_minutes": args.max_minutes})
                    continue
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
        tfidf = f"{r['tfidf_accuracy']:.3f}" if r["tfidf_accuracy"] is not None else "-"
        params = f"{r['trainable_parameters']:,}" if r["trainable_parameters"] is not None else "-"
        size = f"{r['artifact_mb']:.1f}" if r["artifact_mb"] is not None else "-"
        print(f"| {r['shots']} | {r['method']} | {r['accuracy']:.3f} | {r['f1_macro']:.3f} | {tfidf} | "
              f"{r['train_minutes']:.1f} | {params} | {speed} | {size} |")  # fmt: skip


if __name__ == "__main__":
    main()
