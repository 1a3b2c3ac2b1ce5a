"""Retrieval with a fine-tuned embedding model beside BM25 and the untuned embedded model, on public data.

    python bench/embeddings.py --dataset squad --max-minutes 15
    python bench/embeddings.py --dataset banking77 --max-minutes 10

- squad: SQuAD v1.1 dev part 1 (24 articles). Train on the first 18 articles' (question, paragraph) pairs; test on
  the other 6: each question retrieves its own paragraph among all paragraphs of those 6 articles.
- banking77: the train file's labelled texts train (texts of one intent are positives for each other); each test
  text retrieves among the other test texts, those of its intent relevant.
Defaults as a user gets them (`tunesmith train FILE --task sentence-similarity`), the time budget given; then the
export's int8 check (cosine to PyTorch, top-10 agreement). Prints a table, writes bench/results/embeddings_*.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, export_and_print, require_shared_data, save

KEYS = (("MRR@10", "mrr_at_10"), ("recall@1", "accuracy_at_1"), ("recall@10", "accuracy_at_10"),
        ("NDCG@10", "ndcg_at_10"))  # fmt: skip


def squad_files(folder: Path) -> tuple[Path, Path, dict[str, object]]:
    source = json.loads((require_shared_data() / "squad_v1.1_dev_part1" / "dev-v1.1-part.json").read_text())
    articles = source["data"]
    split = {"train": articles[:18], "test": articles[18:]}
    files = {}
    for what, chosen in split.items():
        rows = [{"anchor": qa["question"], "positive": p["context"]} for a in chosen for p in a["paragraphs"]
                for qa in p["qas"]]  # fmt: skip
        files[what] = folder / f"{what}.jsonl"
        files[what].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    paragraphs = sum(len(a["paragraphs"]) for a in split["test"])
    return files["train"], files["test"], {"train_articles": 18, "test_articles": len(split["test"]),
                                           "test_paragraphs": paragraphs}  # fmt: skip


def banking_files(folder: Path) -> tuple[Path, Path, dict[str, object]]:
    data = require_shared_data() / "banking77"
    return data / "train.csv", data / "test.csv", {"intents": 77}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["squad", "banking77"], required=True)
    parser.add_argument("--max-minutes", type=float, default=15)
    parser.add_argument("--home", default=str(ROOT / "bench" / ".home"))
    args = parser.parse_args()
    import tunesmith

    work = ROOT / "bench" / ".home" / f"embeddings-{args.dataset}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    train, test, about = (squad_files if args.dataset == "squad" else banking_files)(work)
    registry = tunesmith.Registry(args.home)
    started = time.perf_counter()
    result = tunesmith.train(train, task="sentence-similarity", name=f"emb-{args.dataset}", test=str(test),
                             registry=registry, progress=False, max_minutes=args.max_minutes)  # fmt: skip
    minutes = (time.perf_counter() - started) / 60
    evaluation = json.loads((result.version.path / "metrics.json").read_text())
    meta = json.loads((result.version.path / "tunesmith.json").read_text())
    record = export_and_print(result.version.path)
    int8 = record["variants"].get("int8", {})
    columns = {"BM25": evaluation["baseline"], "untuned MiniLM-L6": evaluation["untuned"],
               "fine-tuned": evaluation["test"]}  # fmt: skip
    n, corpus = evaluation["test"]["n"], evaluation["test"].get("corpus")
    print(f"\n{args.dataset}: {n} test queries against {corpus} texts; trained {result.train_minutes:.1f} min "
          f"({meta.get('plan', {}).get('total_steps', '?')} steps, ended by {meta.get('plan', {}).get('limited_by')}), "
          f"{minutes:.1f} min in all\n")  # fmt: skip
    print("| model | " + " | ".join(k for k, _ in KEYS) + " |\n|---|" + "---|" * len(KEYS))
    for name, m in columns.items():
        print(f"| {name} | " + " | ".join(f"{m[key]:.3f}" for _, key in KEYS) + " |")
    print(f"\nint8 ({int8.get('scheme')}): mean cosine to PyTorch {int8.get('mean_cosine', float('nan')):.4f}, min "
          f"{int8.get('min_cosine', float('nan')):.4f}, top-10 agreement {int8.get('agreement', float('nan')):.2%}; "
          f"served: {record['default']}")  # fmt: skip
    path = save(f"embeddings_{args.dataset}", {
        "dataset": args.dataset, **about, "max_minutes": args.max_minutes, "train_minutes": result.train_minutes,
        "total_minutes": minutes, "plan": meta.get("plan"), "loss": meta.get("loss"), "test_queries": n,
        "corpus": corpus, "metrics": columns,
        "export": {k: record[k] for k in ("default", "checked_on", "variants")},
    })  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
