"""Active learning on Banking77: test accuracy against labelled-set size, `tunesmith suggest` vs random picks.

    python bench/active_learning.py [--start 3] [--step 154] [--rounds 2] [--pool 2000] [--max-steps 150]

Both strategies start from the same seed set (--start examples per class) and the same first model. Each
round, the current model picks --step texts from an unlabelled pool (--pool texts of Banking77's training
split; their true labels play the annotator), the model is retrained from the base on everything labelled
so far, and scored on the official test split (3,080). Training is a fixed number of steps so that rounds
compare. Writes bench/results/active_learning_banking77.json.
"""

from __future__ import annotations

import argparse
import csv
import random
import tempfile
from collections import defaultdict
from pathlib import Path

import tunesmith
from _common import require_shared_data, save, write_csv


def write(path: Path, rows: list[tuple[str, str]]) -> Path:
    return write_csv(path, rows, ("text", "category"))  # the test file's column names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", type=int, default=3, help="seed examples per class")
    parser.add_argument("--step", type=int, default=154, help="texts labelled per round (2 per class)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pool", type=int, default=2000, help="unlabelled pool size")
    parser.add_argument("--max-steps", type=int, default=150, help="training steps per model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = require_shared_data() / "banking77"
    with (data / "train.csv").open(encoding="utf-8") as handle:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(handle)]
    rng = random.Random(args.seed)
    rng.shuffle(rows)
    by_class: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in rows:
        by_class[row[1]].append(row)
    seed_set = [row for members in by_class.values() for row in members[: args.start]]
    taken = {t for t, _ in seed_set}
    pool = [row for row in rows if row[0] not in taken][: args.pool]
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        registry = tunesmith.Registry(work / "home")

        def fit(labelled: list[tuple[str, str]], name: str) -> tuple[object, float]:
            train = write(work / f"{name}.csv", labelled)
            result = tunesmith.train(train, test=str(data / "test.csv"), name=name, registry=registry, progress=False,
                                     max_steps=args.max_steps, inspect=False)  # fmt: skip
            return result, result.metrics["accuracy"]

        first, accuracy = fit(seed_set, "seed")
        print(f"seed set {len(seed_set)}: accuracy {accuracy:.3f}", flush=True)
        pool_file = write(work / "pool.csv", pool)
        strategies = ("uncertainty-diversity", "random")
        state = {s: (list(seed_set), first.version.ref) for s in strategies}  # type: ignore[attr-defined]
        results += [{"strategy": s, "labelled": len(seed_set), "accuracy": accuracy} for s in strategies]
        for r in range(1, args.rounds + 1):  # the strategies alternate, so a cut-short run still compares
            for strategy in strategies:
                labelled, model_ref = state[strategy]
                current = write(work / f"{strategy}-{r}-labelled.csv", labelled)
                model = tunesmith.load_model(model_ref, registry=registry)
                picked = tunesmith.suggest(model, pool_file, args.step, output=work / f"{strategy}-{r}.csv",
                                           strategy=strategy, exclude=current, seed=args.seed + r)  # fmt: skip
                labelled = labelled + [pool[s.pool_row - 1] for s in picked.suggestions]  # the annotator
                result, acc = fit(labelled, f"{strategy.split('-')[0]}-{r}")
                state[strategy] = (labelled, result.version.ref)  # type: ignore[attr-defined]
                results.append({"strategy": strategy, "labelled": len(labelled), "accuracy": acc})
                print(f"{strategy} round {r}: {len(labelled)} labelled, accuracy {acc:.3f}", flush=True)
                save("active_learning_banking77", {"args": vars(args), "rows": results})
    print("\n| labelled | uncertainty-diversity | random |\n|---|---|---|")
    sizes = sorted({int(r["labelled"]) for r in results})  # type: ignore[call-overload]
    for size in sizes:
        cells = [next((f"{r['accuracy']:.3f}" for r in results if r["strategy"] == s and r["labelled"] == size), "-")
                 for s in ("uncertainty-diversity", "random")]  # fmt: skip
        print(f"| {size} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
