"""Running models on numpy batches, whatever the task: length-grouped batches, softmax, ONNX Runtime
sessions set up for serving, and `Runner`s (PyTorch or ONNX) that the span tasks drive.

Nothing here imports torch at module level: a server running an ONNX export never loads it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def length_batches(lengths: Sequence[int], max_batch: int, max_padding: float = 0.25) -> Iterator[np.ndarray]:
    """Indices of `lengths` in batches of similar length.

    Sorted by length, a batch closes when it is full or when padding to its longest text would add more
    than `max_padding` of wasted tokens, so one long text never pads a batch of short ones.
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    start = 0
    while start < len(order):
        end = start + 1
        real = lengths[order[start]]
        while end < len(order) and end - start < max_batch:
            longest = lengths[order[end]]
            real_with = real + longest
            if longest * (end - start + 1) > (1 + max_padding) * real_with:
                break
            real, end = real_with, end + 1
        yield order[start:end]
        start = end


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, computed in float64, returned as float32."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)


def onnx_session(onnx_file: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session set up for serving."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads would burn the core the HTTP event loop needs between requests.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])


Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


"""A model as the span tasks use it: padded numpy inputs in, named float32 numpy outputs out."""


def torch_runner(model: Any, outputs: Sequence[str]) -> Runner:
    """Run a transformers model on numpy feeds (the PyTorch backend of a `Runner`)."""
    import torch

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model.eval()
        with torch.inference_mode():
            out = model(**{k: torch.from_numpy(np.asarray(v)).to(model.device) for k, v in feeds.items()})
        return {name: getattr(out, name).float().cpu().numpy() for name in outputs}

    return run


def onnx_runner(onnx_file: str | Path, threads: int | None = None) -> Runner:
    """Run an exported graph on the same feeds (inputs the graph does not take, e.g. token_type_ids, are dropped)."""
    session = onnx_session(onnx_file, threads)
    inputs = {i.name for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = session.run(outputs, {k: np.asarray(v, dtype=np.int64) for k, v in feeds.items() if k in inputs})
        return dict(zip(outputs, values, strict=True))

    return run
