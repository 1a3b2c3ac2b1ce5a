"""Training speed of tunesmith's defaults against a naive Trainer set-up, same model, data and run.

    python bench/train_speed.py [--dataset trec|banking77] [--train-size 2000] [--epochs 4]

Naive: transformers.Trainer, every text padded to 128 tokens, random batches, fp32.
tunesmith: dynamic padding, length-grouped batches, data-driven max_length, bf16 autocast where the
CPU supports it; also run with fp32 (what bf16 adds) and with random batches (what grouping adds).
All three train on the same subset for the same epochs (no early stopping) and are scored on the
dataset's full test split. TREC by default: its questions converge within a few epochs, so the
accuracies compare trained models rather than points on a steep early learning curve.
Writes bench/results/train_speed_<dataset>.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import tempfile
import time
from pathlib import Path

import tunesmith
from _common import require_shared_data, save
from accuracy import prepare
from tunesmith.config import DataConfig, TrainConfig
from tunesmith.data import load_classification_data
from tunesmith.models import load_classifier, load_tokenizer

MODEL = "embedded:all-MiniLM-L6-v2"
DEFAULTS = TrainConfig()  # the naive set-up shares every optimisation setting with ours


def naive(train_file: Path, test_file: Path, epochs: int, seed: int) -> dict[str, float]:
    """What a tutorial does: pad everything to 128, random batches, fp32 (same optimiser settings as ours)."""
    import numpy as np
    from transformers import Trainer, TrainingArguments, set_seed

    data = load_classification_data(DataConfig(train=str(train_file), test=str(test_file)), seed=seed)
    tokenizer = load_tokenizer(MODEL)
    set_seed(seed)
    model = load_classifier(MODEL, data.label_names, multi_label=False)

    def encode(split: object) -> list[dict[str, object]]:
        enc = tokenizer(split.texts, padding="max_length", truncation=True, max_length=128)  # type: ignore[attr-defined]
        return [{**{k: v[i] for k, v in enc.items()}, "labels": y} for i, y in enumerate(split.labels)]  # type: ignore[attr-defined]

    train_set, val_set, test_set = encode(data.train), encode(data.validation), encode(data.test)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, num_train_epochs=epochs, learning_rate=DEFAULTS.learning_rate,
            per_device_train_batch_size=DEFAULTS.batch_size, per_device_eval_batch_size=DEFAULTS.eval_batch_size,
            warmup_steps=DEFAULTS.warmup_ratio, weight_decay=DEFAULTS.weight_decay, eval_strategy="epoch",
            save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, seed=seed,
        )  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=val_set)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        logits = trainer.predict(test_set).predictions  # no length grouping here, so order is kept
    accuracy = float((np.asarray(logits).argmax(-1) == np.asarray(data.test.labels)).mean())
    return {"seconds": seconds, "examples_per_s": len(train_set) * epochs / seconds, "accuracy": accuracy}


def ours(
    train_file: Path, test_file: Path, epochs: int, seed: int, precision: str, home: Path, group: bool = True
) -> dict[str, float]:
    start = time.perf_counter()
    result = tunesmith.train(
        train_file, test=str(test_file), registry=tunesmith.Registry(home), name=f"speed-{precision}-{group}",
        progress=False, epochs=epochs, early_stopping_patience=0, precision=precision, seed=seed,
        group_by_length=group,
    )  # fmt: skip
    seconds = result.train_minutes * 60
    sizes = json.loads(result.version.path.joinpath("tunesmith.json").read_text())["data"]["sizes"]
    return {
        "seconds": seconds,
        "examples_per_s": sizes["train"] * epochs / seconds,
        "accuracy": result.metrics["accuracy"],
        "wall_seconds_incl_baseline_and_report": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["trec", "banking77"], default="trec")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    data = require_shared_data()
    with tempfile.TemporaryDirectory() as work:
        work_dir = Path(work)
        files = prepare(args.dataset, data, work_dir)  # the accuracy benchmark's own conversion
        with Path(files["data"]).open(encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        header, body = rows[0], rows[1:]
        random.Random(args.seed).shuffle(body)
        train_file = work_dir / "subset.csv"
        with train_file.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([header, *body[: args.train_size]])
        test_file = Path(str(files["test"]))
        runs = {
            "naive (pad to 128, random batches, fp32)": naive(train_file, test_file, args.epochs, args.seed),
            "tunesmith fp32 (dynamic padding + length grouping)": ours(
                train_file, test_file, args.epochs, args.seed, "fp32", work_dir / "home"
            ),
            "tunesmith defaults (+ bf16 autocast)": ours(
                train_file, test_file, args.epochs, args.seed, "auto", work_dir / "home"
            ),
            "tunesmith defaults, random batches (group_by_length off)": ours(
                train_file, test_file, args.epochs, args.seed, "auto", work_dir / "home", group=False
            ),
        }
    base = next(iter(runs.values()))
    print(f"\n{args.dataset}, {args.train_size} training texts x {args.epochs} epochs, accuracy on its test split")
    print(f"{'set-up':<58} {'examples/s':>10} {'speed-up':>8} {'accuracy':>8}")
    for name, r in runs.items():
        r["speedup"] = r["examples_per_s"] / base["examples_per_s"]
        print(f"{name:<58} {r['examples_per_s']:>10.1f} {r['speedup']:>7.2f}x {r['accuracy']:>8.4f}")
    payload = {"dataset": args.dataset, "train_size": args.train_size, "epochs": args.epochs, "runs": runs}
    path = save(f"train_speed_{args.dataset}", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
