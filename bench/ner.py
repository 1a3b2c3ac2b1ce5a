"""WNUT-17 named entities with default settings: entity-level F1 on the official test file.

    python bench/ner.py [--max-minutes 15] [--freeze-embeddings]

Trains the embedded all-MiniLM-L6-v2 on wnut17train.conll, early-stops on emerging.dev.conll and scores
emerging.test.annotated with seqeval (strict IOB2, micro-averaged over entity types); then exports it to
ONNX fp32 and int8 and reports their agreement with PyTorch, metric change and speed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tunesmith
from _common import export_and_print, require_shared_data, save

REFERENCE = (
    "DistilBERT-base-uncased (66M parameters) fine-tuned on the same wnut_17 files with the Hugging Face "
    "token-classification tutorial's settings: test entity F1 0.367-0.433 in public model cards (e.g. hug"
    "gingface.co/PabloGuinea/distilbert-base, Hemg/token-classification); the WNUT-17 shared task's best "
    "system (Derczynski et al. 2017) scored 0.419"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-minutes", type=float, default=None, help="training budget (default: none)")
    parser.add_argument("--freeze-embeddings", action="store_true", default=None,
                        help="keep the word embeddings fixed (default: the task's own choice)")  # fmt: skip
    args = parser.parse_args()
    data = require_shared_data() / "wnut17"
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        result = tunesmith.train(
            data / "wnut17train.conll", task="token-classification", name="wnut17", progress=False,
            validation=str(data / "emerging.dev.conll"), test=str(data / "emerging.test.annotated"),
            registry=tunesmith.Registry(Path(work) / "home"), max_minutes=args.max_minutes,
            freeze_embeddings=args.freeze_embeddings,
        )  # fmt: skip
        minutes = (time.perf_counter() - started) / 60
        export = export_and_print(result.version.path)
    m = result.metrics
    print(f"\nWNUT-17 test ({m['n']} sentences), entity level, embedded all-MiniLM-L6-v2, defaults\n")
    print("| type | precision | recall | F1 | support |\n|---|---|---|---|---|")
    for kind, v in sorted(m["per_type"].items()):
        print(f"| {kind} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |")
    print(f"| **all (micro)** | {m['precision']:.3f} | {m['recall']:.3f} | **{m['f1']:.3f}** | |")
    crf = result.baseline
    print(f"| CRF baseline (word features), all | {crf['precision']:.3f} | {crf['recall']:.3f} | {crf['f1']:.3f} | |")
    budget = f" (budget {args.max_minutes:g} min)" if args.max_minutes else ""
    print(f"\ntraining {result.train_minutes:.1f} min{budget}, total {minutes:.1f} min. Reference: {REFERENCE}")
    path = save("ner_wnut17", {"metrics": m, "baseline": crf, "train_minutes": result.train_minutes, "total_minutes": minutes,
                               "reference": REFERENCE, "export": export, "max_minutes": args.max_minutes,
                               "freeze_embeddings": args.freeze_embeddings})  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
