"""multilingual-e5's prompts ("query: ", "passage: ") against none, on retrieval nobody here tuned for.

    python bench/prompts.py                     # untuned, and fine-tuned for 5 minutes each way
    python bench/prompts.py --max-minutes 10

SQuAD v1.1 dev part 1 as bench/embeddings.py splits it: questions of the first 18 articles with their paragraphs
train; each question of the other 6 retrieves its own paragraph among all their paragraphs. The embedded
multilingual-e5-small (the default for text in other scripts) as tunesmith reads it now, with the prompts its
folder declares, and the same folder with the prompts removed (how tunesmith read it before): the untuned model
and a fine-tuned one, the same time budget each. Run it alone. Writes bench/results/prompts_squad.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save
from embeddings import KEYS, squad_files

MODEL = "embedded:multilingual-e5-small"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-minutes", type=float, default=5)
    args = parser.parse_args()
    import tunesmith
    from tunesmith.models import resolve_model

    runs = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        train, test, about = squad_files(work)
        bare = work / "e5-without-prompts"
        shutil.copytree(resolve_model(MODEL), bare)
        settings = bare / "config_sentence_transformers.json"
        settings.write_text(json.dumps({**json.loads(settings.read_text()), "prompts": {}}))
        for name, base in (("prompts", MODEL), ("no prompts", str(bare))):
            result = tunesmith.train(train, task="sentence-similarity", name="e5", test=str(test), base_model=base,
                                     registry=tunesmith.Registry(work / name.replace(" ", "-")), progress=False,
                                     max_minutes=args.max_minutes, log=lambda _line: None)  # fmt: skip
            evaluation = json.loads((result.version.path / "metrics.json").read_text())
            plan = json.loads((result.version.path / "tunesmith.json").read_text()).get("plan", {})
            runs[name] = {"untuned": evaluation["untuned"], "fine-tuned": evaluation["test"],
                          "bm25": evaluation["baseline"], "train_minutes": result.train_minutes,
                          "steps": plan.get("steps_done")}  # fmt: skip
    n, corpus = runs["prompts"]["fine-tuned"]["n"], runs["prompts"]["fine-tuned"].get("corpus")
    print(f"\nSQuAD part 1: {n} test questions against {corpus} paragraphs; fine-tuned {args.max_minutes:g} min each\n")
    print("| model | " + " | ".join(k for k, _ in KEYS) + " |\n|---|" + "---|" * len(KEYS))
    rows = {"BM25": runs["prompts"]["bm25"]}
    for name, run in runs.items():
        rows |= {f"untuned, {name}": run["untuned"], f"fine-tuned, {name}": run["fine-tuned"]}
    for label, m in rows.items():
        print(f"| {label} | " + " | ".join(f"{m[key]:.3f}" for _, key in KEYS) + " |")
    path = save("prompts_squad", {"model": MODEL, **about, "max_minutes": args.max_minutes, "test_queries": n,
                                  "corpus": corpus, "runs": runs})  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
