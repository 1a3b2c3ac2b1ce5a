"""Predict with a trained classifier, in input order, with PyTorch or with an ONNX Runtime export.

Texts are sorted by token length and cut into batches of similar length (much less padding), and the
results are put back in the caller's order. The Trainer's own `predict` is not used for this: with
length-grouped sampling it returns rows in another order.

`OnnxClassifier` imports neither torch nor transformers: a server that has an export starts fast and
small. Its tokenizer is the `tokenizers` library reading the artifact's `tokenizer.json`, the same
backend the transformers fast tokenizer drives, so token ids are identical.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ARTIFACT_META = "tunesmith.json"
EXPORT_DIR = "onnx"
EXPORT_META = "export.json"
BACKENDS = ("auto", "onnx", "onnx-fp32", "pytorch")


@dataclass
class Prediction:
    """One text's prediction: the label (or labels, for multi-label), its score, and every class's score."""

    label: str | list[str]
    score: float
    scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score, "scores": self.scores}


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


class BaseClassifier:
    """What every backend shares: label decisions and the public `predict`."""

    backend = "base"
    task = "text-classification"

    def __init__(
        self,
        label_names: Sequence[str],
        multi_label: bool = False,
        threshold: float = 0.5,
        max_length: int = 128,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.label_names = list(label_names)
        self.multi_label = multi_label
        self.threshold = threshold
        self.max_length = max_length
        self.meta = meta or {}

    def predict_logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Raw scores, shape (len(texts), n_classes), row i for texts[i]."""
        raise NotImplementedError

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities (softmax, or sigmoid for multi-label), row i for texts[i]."""
        return self.activate(self.predict_logits(texts, batch_size))

    def decide(self, probs: np.ndarray) -> list[Prediction]:
        results = []
        for row in probs:
            scores = {name: float(p) for name, p in zip(self.label_names, row, strict=True)}
            if self.multi_label:
                chosen = [n for n, p in scores.items() if p >= self.threshold]
                top = float(max(row))
                results.append(Prediction(chosen, top if not chosen else min(scores[n] for n in chosen), scores))
            else:
                best = int(np.argmax(row))
                results.append(Prediction(self.label_names[best], float(row[best]), scores))
        return results

    def predict(self, texts: str | Sequence[str], batch_size: int = 64) -> list[Prediction]:
        """Predict one text or a list of texts; always returns a list, in input order."""
        if isinstance(texts, str):
            texts = [texts]
        return self.decide(self.predict_proba(texts, batch_size=batch_size))

    def activate(self, logits: np.ndarray, function: str | None = None) -> np.ndarray:
        """Probabilities from logits: the model's own function (softmax, sigmoid for multi-label) or the one named."""
        function = function or ("sigmoid" if self.multi_label else "softmax")
        logits = logits.astype(np.float64)
        if function == "none":
            return logits.astype(np.float32)
        if function == "sigmoid":
            return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        return softmax(logits)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, computed in float64, returned as float32."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)


def _read_meta(path: Path) -> dict[str, Any]:
    meta_file = path / ARTIFACT_META
    if not meta_file.is_file():
        from tunesmith.errors import ModelError

        raise ModelError(f"{path} is not a tunesmith model: it has no {ARTIFACT_META}.")
    return json.loads(meta_file.read_text(encoding="utf-8"))


class TextClassifier(BaseClassifier):
    """A fine-tuned text classifier run by PyTorch, with its tokenizer and label map."""

    backend = "pytorch"

    def __init__(self, model: Any, tokenizer: Any, label_names: Sequence[str], **kwargs: Any) -> None:
        super().__init__(label_names, **kwargs)
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def from_artifact(cls, path: str | Path, **model_kwargs: Any) -> TextClassifier:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = Path(path)
        meta = _read_meta(path)
        from tunesmith import methods

        if meta.get("architecture") == "embedding-head":  # few-shot and zero-shot models
            from tunesmith import embedding

            model = embedding.load(path, meta, **model_kwargs)
        else:
            model = methods.load(AutoModelForSequenceClassification, path, **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path / "model")
        return cls(model, tokenizer, meta["label_names"], **_settings(meta))

    def predict_logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        import torch

        texts = [str(t) for t in texts]
        logits = np.zeros((len(texts), len(self.label_names)), dtype=np.float32)
        if not texts:
            return logits
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        self.model.eval()
        with torch.inference_mode():
            for rows in length_batches([len(ids) for ids in encoded["input_ids"]], batch_size):
                features = [{k: encoded[k][i] for k in encoded} for i in rows]
                batch = self.tokenizer.pad(features, return_tensors="pt")
                batch = {k: v.to(self.model.device) for k, v in batch.items()}
                logits[rows] = self.model(**batch).logits.float().cpu().numpy()
        return logits


class OnnxClassifier(BaseClassifier):
    """The same classifier run by ONNX Runtime from an export (fp32 or int8)."""

    backend = "onnx"

    def __init__(
        self, session: Any, tokenizer: Any, label_names: Sequence[str], variant: str, pad_id: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(label_names, **kwargs)
        self.session = session
        self.tokenizer = tokenizer
        self.variant = variant
        self.backend = f"onnx-{variant}"
        self.input_names = {i.name for i in session.get_inputs()}
        self.pad_id = pad_id
        tokenizer.no_padding()
        tokenizer.enable_truncation(self.max_length)

    @classmethod
    def from_artifact(cls, path: str | Path, variant: str | None = None, threads: int | None = None) -> OnnxClassifier:
        path = Path(path)
        export = read_export(path)
        if export is None:
            from tunesmith.errors import ModelError

            raise ModelError(f"{path} has no ONNX export. Create one with `tunesmith export NAME@VERSION`.")
        variant = variant or export["default"]
        file = Path(export["folder"]) / export["variants"][variant]["file"]
        return cls.from_file(path, file, variant, export["pad_token_id"], threads)

    @classmethod
    def from_file(
        cls, path: Path, onnx_file: Path, variant: str, pad_id: int, threads: int | None = None
    ) -> OnnxClassifier:
        from tokenizers import Tokenizer

        session = onnx_session(onnx_file, threads)
        tokenizer = Tokenizer.from_file(str(path / "model" / "tokenizer.json"))
        meta = _read_meta(path)
        return cls(session, tokenizer, meta["label_names"], variant, pad_id, **_settings(meta))

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch([str(t) for t in texts])]

    def predict_logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        logits = np.zeros((len(texts), len(self.label_names)), dtype=np.float32)
        if not len(texts):
            return logits
        ids = self.encode(texts)
        for rows in length_batches([len(i) for i in ids], batch_size):
            width = max(len(ids[i]) for i in rows)
            input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                input_ids[r, : len(ids[i])] = ids[i]
                mask[r, : len(ids[i])] = 1
            feeds = {"input_ids": input_ids, "attention_mask": mask}
            if "token_type_ids" in self.input_names:
                feeds["token_type_ids"] = np.zeros_like(input_ids)
            logits[rows] = self.session.run(["logits"], feeds)[0]
        return logits


def _settings(meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "multi_label": meta["multi_label"],
        "threshold": meta.get("threshold", 0.5),
        "max_length": meta["max_length"],
        "meta": meta,
    }


def read_export(path: str | Path) -> dict[str, Any] | None:
    """The export record of an artifact (`onnx/export.json`), or None when it was never exported. Its
    "folder" is where the pointer led when it was read: load the variant files from there, so a record
    and the files read with it always come from the same export."""
    from tunesmith.pointers import current

    folder = current(Path(path), EXPORT_DIR)
    if folder is None:
        return None
    try:
        record = json.loads((folder / EXPORT_META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None  # a folder being pruned under us: as if never exported; the next look finds the new one
    return {**record, "folder": str(folder)}


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


def choose_variant(path: str | Path, backend: str = "auto") -> str | None:
    """The exported variant `backend` asks for in the artifact at `path`, or None for PyTorch.

    backend: "auto" (the export's default variant if one passed its agreement check, else PyTorch), "onnx"
    (the default variant; fails without one), "onnx-fp32" / "onnx-int8" (that variant), or "pytorch".
    """
    from tunesmith.errors import ModelError

    if backend == "pytorch":
        return None
    export = read_export(path)
    if backend == "auto":
        return None if export is None else export.get("default")
    if not backend.startswith("onnx"):
        raise ModelError(f"Unknown backend {backend!r}: use one of {', '.join(BACKENDS)}, onnx-int8.")
    variant = backend.removeprefix("onnx").removeprefix("-") or None
    if export is None:
        raise ModelError(f"{path} has no ONNX export; run `tunesmith export` first or use --backend pytorch.")
    if variant is not None and variant not in export["variants"]:
        raise ModelError(f"The export has no {variant!r} variant; it has {', '.join(export['variants'])}.")
    if variant is None and export.get("default") is None:
        raise ModelError("No exported variant passed its agreement check; name one (onnx-fp32) or use pytorch.")
    return variant or export["default"]


def export_file(path: str | Path, variant: str) -> Path:
    """The ONNX file of an exported variant."""
    export = read_export(path)
    assert export is not None
    return Path(export["folder"]) / export["variants"][variant]["file"]


def load_predictor(path: str | Path, backend: str = "auto", threads: int | None = None) -> BaseClassifier:
    """Load a text classifier with the fastest backend that passed its export check (see `choose_variant`)."""
    variant = choose_variant(path, backend)
    if variant is None:
        return TextClassifier.from_artifact(path)
    return OnnxClassifier.from_artifact(path, variant=variant, threads=threads)
