"""Instruction tuning of the embedded SmolLM2-135M-Instruct on the support-extraction task (LoRA, CPU).

    python bench/sft.py [--n 500] [--test 200] [--max-steps 60]

The task is examples/make_instruction_data.py's: pull `order=...; product=...; issue=...` out of a support
message. --n pairs are written (seeded), --test of them held out; the rest train (10% of them validate).
Exact match and ROUGE-L of greedy answers on the whole held-out split, before and after training, training
minutes and adapter size. Writes bench/results/sft_extraction.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import tunesmith
from _common import ROOT, save

sys.path.insert(0, str(ROOT / "examples"))
from make_instruction_data import make_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--max-steps", type=int, default=60)
    args = parser.parse_args()
    pairs = make_pairs(args.n, seed=11)
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        train, test = work / "train.jsonl", work / "test.jsonl"
        train.write_text("".join(json.dumps(p) + "\n" for p in pairs[args.test :]))
        test.write_text("".join(json.dumps(p) + "\n" for p in pairs[: args.test]))
        registry = tunesmith.Registry(work / "home")
        started = time.perf_counter()
        result = tunesmith.train(train, task="text-generation", name="extract", registry=registry, progress=False,
                                 max_steps=args.max_steps, batch_size=8, test_size=0.05)  # fmt: skip
        total = (time.perf_counter() - started) / 60
        artifact = registry.resolve("extract").path
        adapter = [p for p in (artifact / "adapter").rglob("*") if p.is_file()]
        if not adapter:
            raise SystemExit(f"no adapter files under {artifact}: the run did not train LoRA")
        adapter_mb = sum(p.stat().st_size for p in adapter) / 2**20
        parameters = json.loads((artifact / "tunesmith.json").read_text())["parameters"]
        tuned = tunesmith.evaluate(tunesmith.load_model("extract", registry=registry), test, work / "after")["test"]
        record = {"n": args.n, "test": args.test, "max_steps": args.max_steps, "after": tuned,
                  "train_minutes": result.train_minutes, "total_minutes": total, "adapter_mb": adapter_mb,
                  "parameters": parameters}  # fmt: skip
        save("sft_extraction", record)  # kept even if the base model's evaluation below fails
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tunesmith.models import resolve_model
        from tunesmith.tasks.text_generation import (
            DEFAULT_BASE,
            Generator,
            evaluate_conversations,
            prepare_tokenizer,
            read_conversations,
        )  # fmt: skip

        folder = resolve_model(DEFAULT_BASE)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        prepare_tokenizer(tokenizer)
        base = Generator(AutoModelForCausalLM.from_pretrained(folder).eval(), tokenizer)
        before, samples = evaluate_conversations(base, read_conversations(test), limit=None)
    save("sft_extraction", {**record, "before": before, "samples": samples[:5]})
    print("\n| | exact match | ROUGE-L | token F1 |\n|---|---|---|---|")
    for label, m in (("SmolLM2-135M-Instruct", before), ("+ LoRA SFT", tuned)):
        print(f"| {label} | {m['exact_match']:.3f} | {m['rouge_l']:.3f} | {m['token_f1']:.3f} |")
    print(f"\n{args.test} held-out messages; {result.train_minutes:.1f} min training ({args.max_steps} steps), "
          f"adapter {adapter_mb:.1f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
