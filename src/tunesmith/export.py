"""Export a registered model to ONNX (fp32 and int8) and check every export against PyTorch.

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

Exports live beside the model they came from: `<artifact>/onnx` points at `<artifact>/exports/onnx-<id>/`
(a version's own files never change). A new export is written into a fresh folder and the pointer is
switched by one rename (`pointers.publishing`), so a reader sees the old export or the new one, never a
mix, and a killed export leaves the old one served.
"""

from __future__ import annotations

import logging
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.artifact import EXPORT_DIR, task_of, write_export
from tunesmith.pointers import publishing

DEFAULT_MIN_AGREEMENT = 0.99
OPSET = 17
CALIBRATION_ITEMS = 256
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
    schemes: list[tuple[str, list[str]]] = [("all MatMuls", [])]
    if ffn:
        schemes += [
            (f"feed-forward outputs of layers 0-{(len(layers) + 1) // 2 - 1} in fp32", first_half),
            ("all feed-forward outputs in fp32", [name for _, name in ffn]),
        ]
    return [(f"static int8, per-channel weights, {what}", nodes) for what, nodes in schemes]


Log = Callable[[str], None]


class ExportCheck(ABC):
    """What a task gives the exporter: its PyTorch model and how to trace it, calibration inputs, and how to
    score an exported candidate against PyTorch on the artifact's stored validation (and test) split.

    `compare` returns agreement (share of validation items whose prediction is unchanged), test_agreement,
    max_probability_difference, metrics, metric_delta (against `reference_metrics`) and texts_per_second.
    """

    pad_token_id: int
    model: Any  # the PyTorch model, loaded with eager attention (plain MatMul/Softmax export and quantize well)
    output_axes: dict[str, dict[int, str]]  # graph outputs, in order, with their dynamic axes
    trace_feeds: dict[str, np.ndarray]  # a small padded batch to trace with
    calibration_feeds: list[dict[str, np.ndarray]]  # unpadded single items: ranges of real tokens only
    reference_metrics: dict[str, float]
    n: int  # validation items the agreement is measured on
    test_n: int
    reference_seconds: float  # PyTorch's time over the test split, the baseline of each variant's speed

    @abstractmethod
    def candidate(self, onnx_file: Path, variant: str) -> Any:
        """The task's predictor running `onnx_file`."""

    @abstractmethod
    def compare(self, candidate: Any) -> dict[str, Any]:
        """Agreement and metric changes of `candidate` against the PyTorch model."""


def _torch_export(check: ExportCheck, target: Path) -> None:
    import warnings

    import torch

    names = list(check.trace_feeds)
    outputs = list(check.output_axes)

    class Outputs(torch.nn.Module):
        # Positional inputs and bare tensor outputs: the graph's signature is then exactly `names` -> `outputs`.
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            result = self.model(**dict(zip(names, inputs, strict=True)))
            return tuple(getattr(result, name) for name in outputs)

    axes = {n: {0: "batch", 1: "sequence"} for n in names} | check.output_axes
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Outputs(check.model.eval()),
            tuple(torch.from_numpy(np.asarray(check.trace_feeds[n], dtype=np.int64)) for n in names),
            str(target),
            input_names=names,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter handles dynamic axes of HF encoders reliably at opset 17
        )


def _quantize(source: Path, target: Path, calibration: list[dict[str, np.ndarray]], keep_fp32: list[str]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

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


def export_onnx(
    check: ExportCheck, path: str | Path, *, quantize: bool = True, min_agreement: float = DEFAULT_MIN_AGREEMENT,
    log: Log = print,
) -> dict[str, Any]:  # fmt: skip
    """Export to ONNX (and int8) as `check` traces it, score every variant against PyTorch, publish the export."""
    path = Path(path)
    if check.n < 50:
        log(f"warning: the validation split has {check.n} items; agreement measured on so few is a rough guide.")

    def scored(record: dict[str, Any], variant: str) -> dict[str, Any]:
        record.update(check.compare(check.candidate(workdir / record["file"], variant)))
        record["size_mb"] = (workdir / record["file"]).stat().st_size / 2**20
        record["passed"] = record["agreement"] >= min_agreement
        return record

    with publishing(path, EXPORT_DIR) as workdir:
        started = time.perf_counter()
        _torch_export(check, workdir / "model.onnx")
        seconds = time.perf_counter() - started
        variants = {"fp32": scored({"file": "model.onnx", "scheme": "fp32", "export_seconds": seconds}, "fp32")}
        if quantize:
            best: dict[str, Any] | None = None
            for scheme, keep_fp32 in int8_schemes(workdir / "model.onnx"):
                started = time.perf_counter()
                _quantize(workdir / "model.onnx", workdir / "model.int8.onnx", check.calibration_feeds, keep_fp32)
                seconds = time.perf_counter() - started
                record = scored({"file": "model.int8.onnx", "scheme": scheme, "export_seconds": seconds}, "int8")
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
            "task": task_of(path),
            "created_at": datetime.now(UTC).isoformat(),
            "opset": OPSET,
            "pad_token_id": check.pad_token_id,
            "min_agreement": min_agreement,
            "checked_on": {"split": "validation", "n": check.n, "test_n": check.test_n},
            "reference": {
                "backend": "pytorch",
                "metrics": check.reference_metrics,
                "texts_per_second": check.test_n / check.reference_seconds if check.test_n else None,
            },
            "variants": variants,
            "default": default,
        }
        write_export(workdir, record)
    return record


def single_feeds(encoded: Any, keys: list[str], limit: int = CALIBRATION_ITEMS) -> list[dict[str, np.ndarray]]:
    """Calibration feeds, one unpadded window each, from an unpadded tokenizer output."""
    n = min(limit, len(encoded["input_ids"]))
    return [{k: np.array([encoded[k][i]], dtype=np.int64) for k in keys} for i in range(n)]


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    """`function()` and the seconds it took."""
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def export_summary(record: dict[str, Any]) -> list[dict[str, str]]:
    """One row per variant, for printing: what its check found."""
    rows = []
    base = record["reference"].get("texts_per_second")
    for name, v in record["variants"].items():
        speed = f"{v['texts_per_second'] / base:.2f}x" if base and v.get("texts_per_second") else "n/a"
        rows.append({
            "variant": name,
            "status": "default" if name == record["default"] else ("FLAGGED" if not v["passed"] else "ok"),
            "agreement": f"{v['agreement']:.2%}",
            "test agreement": f"{v['test_agreement']:.2%}",
            "MB": f"{v['size_mb']:.0f}",
            "speed vs PyTorch": speed,
            "metric change": ", ".join(f"{k} {d:+.4f}" for k, d in v["metric_delta"].items()) or "n/a",
            "scheme": v["scheme"],
        })  # fmt: skip
    return rows


__all__ = ["DEFAULT_MIN_AGREEMENT", "export_onnx", "export_summary"]
