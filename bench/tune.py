"""Hyperparameter search on TREC within a time budget: gain of the best trial over the defaults.

    python bench/tune.py [--minutes 20] [--methods full,lora]

Trial 0 is always the defaults; TPE then searches learning rate, epochs, batch size, warmup, weight decay
(and LoRA's r/alpha/dropout, and the method itself when several are given), pruning trials that trail the
median after any epoch. Selection uses the validation split only; the test figures (TREC_10, 500
questions) are reported beside. Writes bench/results/tune_trec.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import tunesmith
from _common import require_shared_data, save
from accuracy import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--methods", default="full,lora")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        kwargs = prepare("trec", require_shared_data(), Path(work))
        started = time.perf_counter()
        result = tunesmith.tune(kwargs.pop("data"), trials=50, timeout=args.minutes * 60, name="trec",
                                methods=args.methods.split(","), registry=tunesmith.Registry(Path(work) / "home"),
                                **kwargs)  # fmt: skip
        minutes = (time.perf_counter() - started) / 60
    trials = result.trials
    best = next(t for t in trials if t["number"] == result.best["number"])
    default = next((t for t in trials if t["defaults"]), None)
    states = [t["state"] for t in trials]
    print(f"\n{len(trials)} trials in {minutes:.1f} min: {states.count('COMPLETE')} complete, "
          f"{states.count('PRUNED')} pruned, {states.count('FAIL')} failed")  # fmt: skip
    print("| | validation macro-F1 | test accuracy | test macro-F1 | settings |\n|---|---|---|---|---|")
    for label, t in (("defaults (trial 0)", default), (f"best (trial {best['number']})", best)):
        if t is None or t["value"] is None:
            continue
        test = t.get("test") or {}
        print(f"| {label} | {t['value']:.4f} | {test.get('accuracy', float('nan')):.4f} | "
              f"{test.get('f1_macro', float('nan')):.4f} | {t['params']} |")  # fmt: skip
    save("tune_trec", {"budget_minutes": args.minutes, "total_minutes": minutes, "methods": args.methods,
                       "trials": trials, "best": result.best, "defaults_value": result.default_value})  # fmt: skip


if __name__ == "__main__":
    main()
