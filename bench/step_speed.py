"""What one training step costs, where the time goes, and what a step-speed setting buys end to end.

    python bench/step_speed.py                                  # freeze_embeddings: the step profile, then
                                                                # TREC and Banking77 end to end
    python bench/step_speed.py --setting attention_dropout      # dropout on attention probabilities: BERT's
                                                                # 0.1 vs 0
    python bench/step_speed.py --skip-runs                      # the step profile only
    python bench/step_speed.py --only trec --budget 0
    python bench/step_speed.py --setting attention_dropout --only trec --budget 0 --seeds 1 2 --skip-profile
                                                                # more seeds of the end-to-end runs only, kept
                                                                # beside the earlier ones

1. Step profile: the embedded all-MiniLM-L6-v2 with a 77-class head, one AdamW (fused) step on random token
   ids, for the setting's two values at batch x token shapes where it matters (short texts for the word
   embeddings; up to QA's 16 windows of 384 tokens for attention); forward, backward and optimizer
   milliseconds (median of the timed steps), in the precision tunesmith picks here. Every other setting is
   tunesmith's text-classification default.
2. End to end: `tunesmith.train` with its defaults and the setting at each value, on each dataset's training
   file, scored on its official test file; with `--budget` minutes (0: no budget) both runs get the same time,
   so a faster step shows as more steps and, if it pays, accuracy.
Run it alone on the machine. Writes bench/results/step_speed_SETTING.json.
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
from _common import RESULTS, require_shared_data, save
from accuracy import prepare
from tunesmith.config import DEFAULT_MODEL, TrainConfig
from tunesmith.models import bf16_supported, load_classifier

COMPARISONS: dict[str, tuple[tuple[Any, Any], list[tuple[int, int]]]] = {
    # setting: (the values compared, the profiled (batch, tokens) shapes)
    "freeze_embeddings": ((False, True), [(b, n) for n in (16, 64) for b in (16, 32, 64)]),
    "attention_dropout": ((0.1, 0.0), [(32, 16), (32, 64), (16, 128), (16, 384)]),
}
CLASSIFICATION_DEFAULTS = {"freeze_embeddings": True}  # what text classification resolves "None" to


def profile(batch: int, length: int, setting: dict[str, Any], bf16: bool, steps: int = 10) -> dict[str, Any]:
    import torch

    from tunesmith.methods import freeze_embeddings

    config = TrainConfig(**{**CLASSIFICATION_DEFAULTS, **setting})
    torch.manual_seed(0)
    model = load_classifier(DEFAULT_MODEL, [str(i) for i in range(77)], multi_label=False,
                            attention_dropout=config.attention_dropout)  # fmt: skip
    model.train()
    freeze_embeddings(model, bool(config.freeze_embeddings))
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
    return {"batch": batch, "tokens": length, **setting, **{f"{k}_ms": v for k, v in ms.items()},
            "step_ms": total, "examples_per_second": batch / total * 1000}  # fmt: skip


def end_to_end(kwargs: dict[str, Any], setting: dict[str, Any], budget: float, work: Path, seed: int) -> dict[str, Any]:
    options = {k: v for k, v in kwargs.items() if k not in {"data", "max_minutes"}}
    if budget:
        options["max_minutes"] = budget
    home = work / "home-{}-{}".format(*setting.values(), seed)  # a registry per compared value and seed
    result = tunesmith.train(kwargs["data"], registry=tunesmith.Registry(home), name="bench", progress=False,
                             log=lambda _m: None, seed=seed, **setting, **options)  # fmt: skip
    plan = json.loads((result.version.path / "tunesmith.json").read_text())["plan"]
    history = json.loads((result.version.path / "metrics.json").read_text())
    examples = history["epochs_run"] * plan["examples"]
    return {**setting, "seed": seed, "budget_minutes": budget or None, "accuracy": result.metrics["accuracy"],
            "f1_macro": result.metrics["f1_macro"], "minutes": result.train_minutes,
            "epochs_run": history["epochs_run"], "examples_per_second": examples / (result.train_minutes * 60)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=sorted(COMPARISONS), default="freeze_embeddings")
    parser.add_argument("--only", nargs="*", default=["trec", "banking77"])
    parser.add_argument("--budget", type=float, default=6.0, help="minutes per end-to-end run; 0: none")
    parser.add_argument("--skip-runs", action="store_true")
    parser.add_argument("--skip-profile", action="store_true", help="keep the step profile of the last run")
    parser.add_argument("--seeds", nargs="*", type=int, default=[42], help="a run per value and seed")
    args = parser.parse_args()
    values, shapes = COMPARISONS[args.setting]
    bf16 = bf16_supported()
    results = f"step_speed_{args.setting}"
    earlier = json.loads((RESULTS / f"{results}.json").read_text()) if (RESULTS / f"{results}.json").is_file() else {}
    steps: list[dict[str, Any]] = earlier.get("steps", []) if args.skip_profile else []
    print(f"Step profile ({'bf16 autocast' if bf16 else 'fp32'}):")
    print(f"| batch | tokens | {args.setting} | forward ms | backward ms | optimizer ms | step ms | examples/s |")
    print("|---|---|---|---|---|---|---|---|")
    for batch, length in [] if args.skip_profile else shapes:
        for value in values:
            r = profile(batch, length, {args.setting: value}, bf16)
            steps.append(r)
            print(f"| {batch} | {length} | {value} | {r['forward_ms']:.0f} | {r['backward_ms']:.0f} | "
                  f"{r['optimizer_ms']:.0f} | {r['step_ms']:.0f} | {r['examples_per_second']:.1f} |", flush=True)  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = earlier.get("runs", {})
    if not args.skip_runs:
        shared = require_shared_data()
        for name in args.only:
            with tempfile.TemporaryDirectory() as folder:
                kwargs = prepare(name, shared, Path(folder))
                kwargs["data"] = str(kwargs["data"])
                fresh = [end_to_end(kwargs, {args.setting: v}, args.budget, Path(folder), seed)
                         for seed in args.seeds for v in values]  # fmt: skip
            # a run of the same value, seed and budget is replaced; others of earlier days are kept
            key = (args.setting, "seed", "budget_minutes")
            done = {tuple(r.get(k, 42 if k == "seed" else None) for k in key) for r in fresh}
            runs[name] = [r for r in runs.get(name, []) if tuple(r.get(k, 42 if k == "seed" else None) for k in key)
                          not in done] + fresh  # fmt: skip
            for r in fresh:
                print(f"{name} {args.setting}={r[args.setting]} seed {r['seed']}: accuracy {r['accuracy']:.4f} macro-F1 "
                      f"{r['f1_macro']:.4f}, {r['minutes']:.1f} min, {r['examples_per_second']:.0f} examples/s, "
                      f"{r['epochs_run']:.2f} epochs", flush=True)  # fmt: skip
            save(results, {"precision": "bf16" if bf16 else "fp32", "steps": steps, "runs": runs})
    save(results, {"precision": "bf16" if bf16 else "fp32", "steps": steps, "runs": runs})


if __name__ == "__main__":
    main()
