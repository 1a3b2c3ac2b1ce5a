"""Extractive QA on SQuAD v1.1 dev, part 1: train on 18 of its 24 articles, score on the other 6.

    python bench/qa.py [--max-minutes 15] [--skip-export] [--attention-dropout 0.1]

No SQuAD training set is available offline (only this part of the dev set), so this is a small-data
figure: ~4,300 training questions instead of SQuAD's 87,599. Exact match and F1 use SQuAD's official
answer normalisation, against every reference answer.
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
from _common import export_and_print, require_shared_data, save

TRAIN_ARTICLES = 18


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-minutes", type=float, default=15.0, help="training budget")
    parser.add_argument("--max-steps", type=int, default=None, help="for a quick check of the script")
    parser.add_argument("--attention-dropout", type=float, default=None,
                        help="train.attention_dropout (default: tunesmith's; 0.1 is the model's own)")
    parser.add_argument("--skip-export", action="store_true", help="no ONNX export and check after training")
    args = parser.parse_args()
    settings = {} if args.attention_dropout is None else {"attention_dropout": args.attention_dropout}
    source = json.loads((require_shared_data() / "squad_v1.1_dev_part1" / "dev-v1.1-part.json").read_text())
    articles = source["data"]
    with tempfile.TemporaryDirectory() as work:
        train_file, test_file = Path(work) / "train.json", Path(work) / "test.json"
        train_file.write_text(json.dumps({"version": "1.1", "data": articles[:TRAIN_ARTICLES]}))
        test_file.write_text(json.dumps({"version": "1.1", "data": articles[TRAIN_ARTICLES:]}))
        started = time.perf_counter()
        result = tunesmith.train(
            train_file, task="question-answering", name="squad", test=str(test_file), progress=False,
            max_minutes=args.max_minutes, max_steps=args.max_steps, registry=tunesmith.Registry(Path(work) / "home"),
            **settings,
        )  # fmt: skip
        minutes = (time.perf_counter() - started) / 60
        export = None if args.skip_export else export_and_print(result.version.path)
        plan = json.loads((result.version.path / "tunesmith.json").read_text())["plan"]
    m = result.metrics
    print(f"\nSQuAD v1.1 dev part 1: {len(articles) - TRAIN_ARTICLES} held-out articles, {m['n']} questions")
    print("| model | exact match | F1 | training minutes |\n|---|---|---|---|")
    print(
        f"| embedded all-MiniLM-L6-v2, defaults | {m['exact_match']:.3f} | {m['f1']:.3f} | {result.train_minutes:.1f} |"
    )
    lexical = result.baseline
    print(f"| lexical sliding window (baseline) | {lexical['exact_match']:.3f} | {lexical['f1']:.3f} | - |")
    record = {
        "metrics": m, "baseline": lexical, "train_minutes": result.train_minutes, "total_minutes": minutes,
        "train_articles": TRAIN_ARTICLES, "max_minutes": args.max_minutes, "export": export, **settings,
        "steps": plan["steps_done"], "epochs": plan["steps_done"] * plan["batch_size"] / plan["examples"],
        "seconds_per_step": plan["seconds_per_step"],
    }  # fmt: skip
    path = save("qa_squad_part1" if args.max_minutes == 15 else f"qa_squad_part1_{args.max_minutes:g}min", record)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
