"""Chinese text on the defaults: CLUE TNEWS (15 news-title classes) with the multilingual encoder the run now
chooses, against the English default it used before, each beside its TF-IDF baseline.

    python bench/multilingual.py [--max-minutes 15] [--runs auto english] [--export]

Trains on TNEWS's train.json (53,360 titles) and scores dev.json (10,000; its test split is unlabelled), each
run with `max_minutes`: `auto` is what `tunesmith train` does with no --model (the training text is Chinese, so
embedded:multilingual-e5-small), `english` names the English default (all-MiniLM-L6-v2) by hand. `--export`
also exports the auto run to ONNX fp32 / int8 and checks them. Run it alone on the machine. Writes
bench/results/multilingual_tnews.json (merged by run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tunesmith
from _common import RESULTS, export_and_print, machine, require_shared_data, save
from tunesmith.artifact import read_meta
from tunesmith.config import DEFAULT_MODEL

REFERENCE = ("CLUE (Xu et al. 2020, Table 5), TNEWS test accuracy: BERT-base-chinese 56.58, ALBERT-tiny 53.35, "
             "RoBERTa-wwm-ext-large 58.61 (full fine-tuning, GPUs, no time budget)")  # fmt: skip
RUNS = {"auto": None, "english": DEFAULT_MODEL}


def run(name: str, data: Path, minutes: float | None, export: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as work:
        said: list[str] = []

        def log(line: str) -> None:
            said.append(line)
            print(line, flush=True)

        start = time.perf_counter()
        options = {"base_model": RUNS[name]} if RUNS[name] else {}
        result = tunesmith.train(data / "train.json", name=f"tnews-{name}", test=str(data / "dev.json"),
                                 text_column="sentence", label_column="label_desc", max_minutes=minutes,
                                 registry=tunesmith.Registry(Path(work) / "home"), progress=False, log=log, **options)  # fmt: skip
        total = (time.perf_counter() - start) / 60
        meta = read_meta(result.version.path)
        exported = export_and_print(result.version.path) if export else None
    plan = meta.get("plan") or {}
    return {
        "run": name, "base_model": meta["base_model"], "accuracy": result.metrics["accuracy"],
        "f1_macro": result.metrics["f1_macro"], "test_size": result.metrics["n"],
        "baseline_accuracy": result.baseline["accuracy"], "baseline_f1_macro": result.baseline["f1_macro"],
        "train_minutes": round(result.train_minutes, 2), "total_minutes": round(total, 2), "max_minutes": minutes,
        "steps": plan.get("steps_done"), "plan": plan,
        "warnings": [line for line in said if line.startswith("warning") or "not Latin" in line],
        "export": exported, "machine": machine(),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-minutes", type=float, default=15.0, help="training budget a run (default 15)")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--export", action="store_true", help="export the auto run to ONNX and check it")
    args = parser.parse_args()
    data = require_shared_data() / "clue_tnews"
    previous = RESULTS / "multilingual_tnews.json"
    results = {r["run"]: r for r in json.loads(previous.read_text())["results"]} if previous.exists() else {}
    for name in args.runs:
        print(f"== {name}", flush=True)
        results[name] = run(name, data, args.max_minutes, args.export and name == "auto")
        path = save("multilingual_tnews", {"results": list(results.values()), "reference": REFERENCE})
    print(f"\nCLUE TNEWS dev (10,000 titles), {args.max_minutes:g}-minute budget\n")
    print("| run | base model | accuracy | macro-F1 | TF-IDF accuracy | TF-IDF macro-F1 | train minutes | steps |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results.values():
        print(f"| {r['run']} | {r['base_model']} | {r['accuracy']:.3f} | {r['f1_macro']:.3f} | {r['baseline_accuracy']:.3f}"
              f" | {r['baseline_f1_macro']:.3f} | {r['train_minutes']:.1f} | {r['steps']} |")  # fmt: skip
    print(f"\nReference: {REFERENCE}\nwrote {path}")


if __name__ == "__main__":
    main()
