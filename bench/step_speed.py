"""What one training step costs, where the time goes, and what freezing the word embeddings buys.

    python bench/step_speed.py                       # the step profile, then TREC and Banking77 end to end
    python bench/step_speed.py --skip-runs           # the step profile only
    python bench/step_speed.py --only trec --budget 0

1. Step profile: the embedded all-MiniLM-L6-v2 with a 77-class head, one AdamW (fused) step on random token
   ids, for batches of 16/32/64 and 16/64 tokens, with the word embeddings trained or frozen; forward,
   backward and optimizer milliseconds (median of the timed steps), in the precision tunesmith picks here.
2. End to end: `tunesmith.train` with its defaults and `freeze_embeddings` off and on, on each dataset's
   training file, scored on its official test file; with `--budget` minutes (0: no budget) both runs get
   the same time, so a faster step shows as more steps and, if it pays, accuracy.
Run it alone on the machine. Writes bench/results/step_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import tunesmith
from _common import require_shared_data, save
from accuracy import prepare
from tunesmith.config import DEFAULT_MODEL
from tunesmith.models import bf16_supported, load_classifier


def profile(batch: int, length: int, freeze: bool, bf16: bool, steps: int = 10) -> dict[str, Any]:
    import torch

    from tunesmith.methods import freeze_embeddings

    torch.manual_seed(0)
    model = load_classifier(DEFAULT_MODEL, [str(i) for i in range(77)], multi_label=False)
    model.train()
    freeze_embeddings(model, freeze)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    ids = torch.randint(1000, 20000, (batch, length))
    mask, labels = torch.ones_like(ids), torch.randint(0, 77, (batch,))
    parts: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    for step in range(steps + 2):  # two warm-up steps
        a = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        b = time.perf_counter()
        loss.backward()
        c = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        d = time.perf_counter()
        if step >= 2:
            for key, seconds in zip(parts, (b - a, c - b, d - c), strict=True):
                parts[key].append(seconds * 1000)
    ms = {key: statistics.median(values) for key, values in parts.items()}
    total = sum(ms.values())
    return {"batch": batch, "tokens": length, "frozen_embeddings": freeze, **{f"{k}_ms": v for k, v in ms.items()},
            "step_ms": total, "examples_per_second": batch / total * 1000}  # fmt: skip


def end_to_end(kwargs: dict[str, Any], freeze: bool, budget: float, work: Path) -> dict[str, Any]:
    options = {k: v for k, v in kwargs.items() if k not in {"data", "max_minutes"}}
    if budget:
        options["max_minutes"] = budget
    result = tunesmith.train(kwargs["data"], registry=tunesmith.Registry(work / f"home-{freeze}"), name="bench",
                             progress=False, log=lambda _m: None, freeze_embeddings=freeze, **options)  # fmt: skip
    plan = json.loads((result.version.path / "tunesmith.json").read_text())["plan"]
    history = json.loads((result.version.path / "metrics.json").read_text())
    examples = history["epochs_run"] * plan["examples"]
    return {"frozen_embeddings": freeze, "budget_minutes": budget or None, "accuracy": result.metrics["accuracy"],
            "f1_macro": result.metrics["f1_macro"], "minutes": result.train_minutes,
            "epochs_run": history["epochs_run"], "examples_per_second": examples / (result.train_minutes * 60)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=["trec", "banking77"])
    parser.add_argument("--budget", type=float, default=6.0, help="minutes per end-to-end run; 0: none")
    parser.add_argument("--skip-runs", action="store_true")
    args = parser.parse_args()
    bf16 = bf16_supported()
    steps = []
    print(f"Step profile ({'bf16 autocast' if bf16 else 'fp32'}):")
    print("| batch | tokens | embeddings | forward ms | backward ms | optimizer ms | step ms | examples/s |")
    print("|---|---|---|---|---|---|---|---|")
    for length in (16, 64):
        for batch in (16, 32, 64):
            for freeze in (False, True):
                r = profile(batch, length, freeze, bf16)
                steps.append(r)
                print(f"| {batch} | {length} | {'frozen' if freeze else 'trained'} | {r['forward_ms']:.0f} | "
                      f"{r['backward_ms']:.0f} | {r['optimizer_ms']:.0f} | {r['step_ms']:.0f} | "
                      f"{r['examples_per_second']:.1f} |", flush=True)  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {}
    if not args.skip_runs:
        shared = require_shared_data()
        for name in args.only:
            with tempfile.TemporaryDirectory() as folder:
                kwargs = prepare(name, shared, Path(folder))
                kwargs["data"] = str(kwargs["data"])
                runs[name] = [end_to_end(kwargs, freeze, args.budget, Path(folder)) for freeze in (False, True)]
            for r in runs[name]:
                print(f"{name} embeddings {'frozen' if r['frozen_embeddings'] else 'trained'}: accuracy "
                      f"{r['accuracy']:.4f} macro-F1 {r['f1_macro']:.4f}, {r['minutes']:.1f} min, "
                      f"{r['examples_per_second']:.0f} examples/s, {r['epochs_run']:.2f} epochs", flush=True)  # fmt: skip
            save("step_speed", {"precision": "bf16" if bf16 else "fp32", "steps": steps, "runs": runs})
    save("step_speed", {"precision": "bf16" if bf16 else "fp32", "steps": steps, "runs": runs})


if __name__ == "__main__":
    main()
