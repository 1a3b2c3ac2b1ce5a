"""ONNX export variants on a real task: agreement with PyTorch, speed, and whether batching changes answers.

    python bench/export.py --dataset banking77      # trains once into bench/.home, then reuses it

Compares the variants `tunesmith export` writes (fp32, static int8) with plain dynamic int8 quantization
(`quantize_dynamic`, per-channel), which the export does not use: dynamic quantization takes each
activation's scale from the whole batch, so a text's answer depends on what it is batched with.
"batch drift" is the largest difference of any logit between scoring each text alone and scoring it in
length-grouped batches of 32, as the server does.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tunesmith
from _common import ROOT, require_shared_data, save
from accuracy import prepare
from tunesmith.api import export_artifact
from tunesmith.artifact import EXPORT_DIR, read_export
from tunesmith.tasks.text_classification.predictor import OnnxClassifier, TextClassifier

HOME = ROOT / "bench" / ".home"


def trained(dataset: str) -> Path:
    registry = tunesmith.Registry(HOME)
    if dataset not in registry.names():
        with tempfile.TemporaryDirectory() as work:
            kwargs = prepare(dataset, require_shared_data(), Path(work))
            print(f"training {dataset} (once; kept in {HOME}) ...", flush=True)
            tunesmith.train(kwargs.pop("data"), registry=registry, name=dataset, progress=False, **kwargs)
    return registry.resolve(dataset).path


def texts_of(path: Path, split: str) -> list[str]:
    return [json.loads(line)["text"] for line in (path / "data" / f"{split}.jsonl").read_text().splitlines()]


def measure(model: object, texts: list[str], reference: np.ndarray, sample: list[str]) -> dict[str, float]:
    logits = model.predict_logits(texts, 32)  # type: ignore[attr-defined]
    alone = np.concatenate([model.predict_logits([t], 1) for t in sample])  # type: ignore[attr-defined]
    batched = model.predict_logits(sample, 32)  # type: ignore[attr-defined]
    speed = {}
    for batch in (1, 32):
        started = time.perf_counter()
        model.predict_logits(sample, batch)  # type: ignore[attr-defined]
        speed[batch] = len(sample) / (time.perf_counter() - started)
    return {
        "test_agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
        "batch_drift": float(np.abs(alone - batched).max()),
        "texts_per_s_batch1": speed[1],
        "texts_per_s_batch32": speed[32],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="banking77", choices=["banking77", "trec", "agnews"])
    parser.add_argument("--sample", type=int, default=300, help="test texts used for drift and speed")
    args = parser.parse_args()

    path = trained(args.dataset)
    print("exporting ...", flush=True)
    record = export_artifact(path)
    test = texts_of(path, "test")
    sample = test[: args.sample]
    reference = TextClassifier.from_artifact(path).predict_logits(test, 32)

    from onnxruntime.quantization import QuantType, quantize_dynamic

    rows: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as work:
        dynamic_file = Path(work) / "dynamic.onnx"
        quantize_dynamic(str(path / EXPORT_DIR / "model.onnx"), str(dynamic_file), per_channel=True,
                         weight_type=QuantType.QInt8)  # fmt: skip
        pad = record["pad_token_id"]
        models = {
            "PyTorch fp32 (reference)": TextClassifier.from_artifact(path),
            "ONNX fp32": OnnxClassifier.from_artifact(path, variant="fp32"),
            f"ONNX int8 ({record['variants']['int8']['scheme']})": OnnxClassifier.from_artifact(path, variant="int8"),
            "ONNX int8 (dynamic, per-channel; not used)": OnnxClassifier.from_file(path, dynamic_file, "dynamic", pad),
        }
        for name, model in models.items():
            rows[name] = measure(model, test, reference, sample)
            print(f"  {name}: {rows[name]}", flush=True)
    base = rows["PyTorch fp32 (reference)"]
    print(f"\n{args.dataset}: {len(test)} test texts; drift and speed on {len(sample)}\n")
    print(
        "| model | agreement with PyTorch (test) | batch drift (max logit diff) | texts/s batch 1 | texts/s batch 32 | vs PyTorch (batch 32) |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['test_agreement']:.2%} | {r['batch_drift']:.2g} | {r['texts_per_s_batch1']:.0f} | "
              f"{r['texts_per_s_batch32']:.0f} | {r['texts_per_s_batch32'] / base['texts_per_s_batch32']:.1f}x |")  # type: ignore[operator]  # fmt: skip
    int8 = record["variants"]["int8"]
    print(f"\nexport check (validation, {record['checked_on']['n']} texts): int8 agreement {int8['agreement']:.2%}, "
          f"metric change {int8['metric_delta']}, default variant: {record['default']}")  # fmt: skip
    out = save(f"export_{args.dataset}", {"dataset": args.dataset, "rows": rows, "export": read_export(path)})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
