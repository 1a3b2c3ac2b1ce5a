"""Export a registered classifier to ONNX (fp32 and int8) and check every export against PyTorch.

Quantization scheme, chosen by measurement (bench/export.py): *static* int8 with per-channel weight
scales, activations calibrated on the artifact's stored validation texts. Dynamic quantization is a
little faster, but it computes each activation's scale from the whole batch (padding included), so a
text's scores change with whatever it is batched with; static scales are fixed, which makes the
server's micro-batched answers identical to unbatched ones. If quantizing every MatMul falls below
the agreement threshold, the feed-forward output projections of the first half of the layers, then
of all layers, stay fp32 (`int8_schemes`); the first scheme that passes is kept.

Every variant is scored on the validation split against the PyTorch model: prediction agreement, the
largest probability difference, and the metric change. A variant under `min_agreement` is recorded
as flagged and is never the default; the server then uses the next best variant, or PyTorch.

Exports live in `<artifact>/onnx/` beside the model they came from (a version's own files never change;
the export folder is replaced as a whole, so a reader sees the old export or the new one, never a mix).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.errors import ModelError
from tunesmith.inference import (
    EXPORT_DIR,
    EXPORT_META,
    BaseClassifier,
    OnnxClassifier,
    TextClassifier,
    _read_meta,
    read_export,
)

DEFAULT_MIN_AGREEMENT = 0.99
OPSET = 17
CALIBRATION_TEXTS = 256
# The feed-forward output projections (BERT's `output.dense`, DistilBERT's `ffn.lin2`) read the GELU
# activations, whose outliers an 8-bit scale resolves worst; keeping some of them in fp32 is what
# brought a 77-class Banking77 model from 98.5% to 99.5% agreement (bench/export.py).
_FFN_OUTPUT = re.compile(r"layer[._](\d+)/(output/dense|ffn/lin2)/MatMul")


def int8_schemes(model_file: Path) -> list[tuple[str, list[str]]]:
    """(description, MatMul nodes kept in fp32), fastest first; the first scheme whose agreement passes is kept."""
    import onnx

    graph = onnx.load(str(model_file), load_external_data=False).graph
    ffn = [(int(m.group(1)), n.name) for n in graph.node if n.op_type == "MatMul" and (m := _FFN_OUTPUT.search(n.name))]
    layers = sorted({layer for layer, _ in ffn})
    first_half = [name for layer, name in ffn if layer < (len(layers) + 1) // 2]
    schemes = [("all MatMuls", [])]
    if ffn:
        schemes += [
            (f"feed-forward outputs of layers 0-{(len(layers) + 1) // 2 - 1} in fp32", first_half),
            ("all feed-forward outputs in fp32", [name for _, name in ffn]),
        ]
    return [(f"static int8, per-channel weights, {what}", nodes) for what, nodes in schemes]


Log = Callable[[str], None]


def _read_split(path: Path, label_names: Sequence[str], multi_label: bool) -> tuple[list[str], list[Any]]:
    if not path.is_file():
        return [], []
    index = {name: i for i, name in enumerate(label_names)}
    texts, labels = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            texts.append(row["text"])
            labels.append([index[n] for n in row["label"]] if multi_label else index[row["label"]])
    return texts, labels


def _decisions(model: BaseClassifier, probs: np.ndarray) -> np.ndarray:
    return probs >= model.threshold if model.multi_label else probs.argmax(axis=1)


def _agreement(model: BaseClassifier, reference: np.ndarray, probs: np.ndarray) -> float:
    if not len(probs):
        return 1.0
    same = _decisions(model, reference) == _decisions(model, probs)
    return float(same.all(axis=1).mean() if model.multi_label else same.mean())


def _score(model: BaseClassifier, labels: list[Any], probs: np.ndarray) -> dict[str, float]:
    from tunesmith.evaluation import classification_metrics

    if not labels:
        return {}
    metrics = classification_metrics(labels, probs, model.label_names, model.multi_label, model.threshold)
    return {k: metrics[k] for k in ("accuracy", "f1_macro", "f1_micro")}


def _torch_export(reference: TextClassifier, target: Path) -> None:
    import torch

    encoded = reference.tokenizer(
        ["a short text", "a somewhat longer text, so the batch has padding"], padding=True, return_tensors="pt"
    )
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in encoded]

    class Logits(torch.nn.Module):
        # Positional inputs and a bare logits output: the graph's signature is then exactly `names` -> logits.
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, inputs, strict=True))).logits

    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    import warnings

    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Logits(reference.model.eval()),
            tuple(encoded[n] for n in names),
            str(target),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter handles dynamic axes of HF encoders reliably at opset 17
        )


def _quantize(
    source: Path, target: Path, calibration: list[list[int]], pad_id: int, inputs: set[str], keep_fp32: list[str]
) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        # One text per feed: no padding, so the calibrated ranges are those of real tokens.
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            ids = next(self.items, None)
            if ids is None:
                return None
            feed = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}
            if "token_type_ids" in inputs:
                feed["token_type_ids"] = np.zeros((1, len(ids)), np.int64)
            return feed

    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs advice about pre-processing at WARNING
    try:
        quantize_static(
            str(source),
            str(target),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_fp32,
        )
    finally:
        logging.getLogger().setLevel(quiet)


def export_artifact(
    path: str | Path,
    *,
    quantize: bool = True,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    log: Log = print,
) -> dict[str, Any]:
    """Export the model in artifact folder `path` to ONNX, check it, and return the export record."""
    path = Path(path)
    if not 0 < min_agreement <= 1:
        raise ModelError(f"min_agreement must be in (0, 1], e.g. 0.99; got {min_agreement}.")
    meta = _read_meta(path)
    if meta.get("task", "text-classification") != "text-classification":
        raise ModelError(f"ONNX export handles text-classification models; this one is {meta['task']}.")
    # Eager attention exports to plain MatMul/Softmax, which both ONNX Runtime and the quantizer handle well.
    reference = TextClassifier.from_artifact(path, attn_implementation="eager")
    texts, labels = _read_split(path / "data" / "validation.jsonl", reference.label_names, reference.multi_label)
    test_texts, _ = _read_split(path / "data" / "test.jsonl", reference.label_names, reference.multi_label)
    if len(texts) < 50:
        log(f"warning: the validation split has {len(texts)} texts; agreement measured on so few is a rough guide.")
    reference_probs = reference.predict_proba(texts)
    reference_test = reference.predict_proba(test_texts)
    pad_id = reference.tokenizer.pad_token_id or 0

    workdir = path / f".{EXPORT_DIR}-{uuid.uuid4().hex[:8]}"
    workdir.mkdir()

    def check(record: dict[str, Any], model: OnnxClassifier) -> None:
        _check(record, model, workdir, texts, labels, test_texts, reference, reference_probs, reference_test,
               min_agreement)  # fmt: skip

    try:
        started = time.perf_counter()
        _torch_export(reference, workdir / "model.onnx")
        variants = {"fp32": {"file": "model.onnx", "scheme": "fp32", "export_seconds": time.perf_counter() - started}}
        fp32 = OnnxClassifier.from_file(path, workdir / "model.onnx", "fp32", pad_id)
        check(variants["fp32"], fp32)
        if quantize:
            calibration = fp32.encode(texts[:CALIBRATION_TEXTS] or test_texts[:CALIBRATION_TEXTS] or ["calibration"])
            best: dict[str, Any] | None = None
            for scheme, keep_fp32 in int8_schemes(workdir / "model.onnx"):
                started = time.perf_counter()
                _quantize(
                    workdir / "model.onnx",
                    workdir / "model.int8.onnx",
                    calibration,
                    pad_id,
                    fp32.input_names,
                    keep_fp32,
                )
                record = {"file": "model.int8.onnx", "scheme": scheme, "export_seconds": time.perf_counter() - started}
                int8 = OnnxClassifier.from_file(path, workdir / "model.int8.onnx", "int8", pad_id)
                check(record, int8)
                log(f"int8 ({scheme}): agreement {record['agreement']:.2%}")
                if best is None or record["agreement"] > best["agreement"]:
                    best = record
                    os.replace(workdir / "model.int8.onnx", workdir / "best.int8.onnx")
                if record["passed"]:
                    break
            assert best is not None
            os.replace(workdir / "best.int8.onnx", workdir / "model.int8.onnx")
            variants["int8"] = best
        default = next((v for v in ("int8", "fp32") if v in variants and variants[v]["passed"]), None)
        record = {
            "format": 1,
            "created_at": datetime.now(UTC).isoformat(),
            "opset": OPSET,
            "pad_token_id": pad_id,
            "min_agreement": min_agreement,
            "checked_on": {"split": "validation", "n": len(texts), "test_n": len(test_texts)},
            "reference": {"backend": "pytorch", "metrics": _score(reference, labels, reference_probs)},
            "variants": variants,
            "default": default,
        }
        (workdir / EXPORT_META).write_text(json.dumps(record, indent=2), encoding="utf-8")
        _put_in_place(workdir, path / EXPORT_DIR)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return record


def _check(
    record: dict[str, Any],
    model: OnnxClassifier,
    folder: Path,
    texts: list[str],
    labels: list[Any],
    test_texts: list[str],
    reference: TextClassifier,
    reference_probs: np.ndarray,
    reference_test: np.ndarray,
    min_agreement: float,
) -> None:
    probs = model.predict_proba(texts)
    metrics = _score(model, labels, probs)
    base = _score(reference, labels, reference_probs)
    started = time.perf_counter()
    test_probs = model.predict_proba(test_texts)
    seconds = time.perf_counter() - started
    record.update(
        agreement=_agreement(model, reference_probs, probs),
        test_agreement=_agreement(model, reference_test, test_probs),
        max_probability_difference=float(np.abs(probs - reference_probs).max()) if len(probs) else 0.0,
        metrics=metrics,
        metric_delta={k: metrics[k] - base[k] for k in metrics},
        size_mb=(folder / record["file"]).stat().st_size / 2**20,
        texts_per_second=len(test_texts) / seconds if test_texts and seconds > 0 else None,
    )
    record["passed"] = record["agreement"] >= min_agreement


def _put_in_place(new: Path, target: Path) -> None:
    """Replace `target` with `new`: two renames, so readers see the old export or the new one."""
    old = target.with_name(f".{target.name}-old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def export_summary(record: dict[str, Any]) -> list[dict[str, str]]:
    """One row per variant, for printing: what its check found."""
    rows = []
    for name, v in record["variants"].items():
        rows.append({
            "variant": name,
            "status": "default" if name == record["default"] else ("FLAGGED" if not v["passed"] else "ok"),
            "agreement": f"{v['agreement']:.2%}",
            "test agreement": f"{v['test_agreement']:.2%}",
            "MB": f"{v['size_mb']:.0f}",
            "metric change": ", ".join(f"{k} {d:+.4f}" for k, d in v["metric_delta"].items()) or "n/a",
            "scheme": v["scheme"],
        })  # fmt: skip
    return rows


__all__ = ["DEFAULT_MIN_AGREEMENT", "export_artifact", "export_summary", "read_export"]
