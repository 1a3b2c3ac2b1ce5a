"""The embedder: texts in, L2-normalised embeddings out, on PyTorch or on the ONNX export.

An artifact's `model/` is a complete sentence-transformers folder (`modules.json`, `1_Pooling/`, the encoder's
safetensors and tokenizer): `SentenceTransformer(path / "model")` loads it as it is. tunesmith reads it without
sentence-transformers: the pooling mode is kept in tunesmith.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.artifact import choose_variant, export_file, read_meta
from tunesmith.inference import Runner, length_batches, onnx_runner, torch_runner
from tunesmith.models import sentence_pooling

OUTPUTS = ["sentence_embedding"]
TASK = "sentence-similarity"


def pooling_of(folder: str | Path) -> str:
    """The pooling mode a sentence-transformers folder declares (`1_Pooling/config.json`); mean when it has none
    (sentence-transformers' own choice for a plain encoder)."""
    return sentence_pooling(folder) or "mean"


class Embedder:
    """A sentence-embedding model on one backend; `embed` is what every route and the evaluation call."""

    task = TASK

    def __init__(self, runner: Runner, tokenizer: Any, max_length: int, meta: dict[str, Any] | None = None,
                 backend: str = "pytorch", model: Any = None) -> None:  # fmt: skip
        self.runner, self.tokenizer, self.max_length = runner, tokenizer, max_length
        self.meta = meta or {}
        self.backend = backend
        self.model = model  # the PyTorch PooledEncoder, when that is the backend
        self.label_names: list[str] = []
        # Judged items (the server's live reference, the gate) pair each query with texts drawn from one split,
        # which recur from item to item: each is embedded once.
        self.candidates: dict[str, np.ndarray] = {}

    @property
    def dimension(self) -> int:
        return int(self.meta.get("dimension") or self.embed(["dimension"])[0].shape[1])

    @classmethod
    def from_artifact(cls, path: str | Path, backend: str = "auto", threads: int | None = None,
                      **model_kwargs: Any) -> Embedder:  # fmt: skip
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = Path(path)
        meta = read_meta(path)
        tokenizer = AutoTokenizer.from_pretrained(path / "model")
        variant = choose_variant(path, backend)
        if variant is not None:
            return cls(onnx_runner(export_file(path, variant), threads), tokenizer, meta["max_length"], meta,
                       f"onnx-{variant}")  # fmt: skip
        return cls.from_folder(path / "model", meta["max_length"], meta.get("pooling", "mean"), meta, **model_kwargs)

    @classmethod
    def from_folder(cls, folder: str | Path, max_length: int, pooling: str | None = None,
                    meta: dict[str, Any] | None = None, **model_kwargs: Any) -> Embedder:  # fmt: skip
        """A model folder on PyTorch: an artifact's `model/`, or a base model (its untuned embeddings)."""
        from transformers import AutoModel, AutoTokenizer

        from tunesmith.tasks.sentence_similarity.pooling import PooledEncoder

        encoder = AutoModel.from_pretrained(folder, **model_kwargs)
        model = PooledEncoder(encoder, pooling or pooling_of(folder)).eval()
        return cls.from_model(model, AutoTokenizer.from_pretrained(folder), max_length, meta)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, max_length: int, meta: dict[str, Any] | None = None) -> Embedder:
        return cls(torch_runner(model, OUTPUTS), tokenizer, max_length, meta, "pytorch", model)

    def tokens(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer([str(t) for t in texts], truncation=True, max_length=self.max_length)["input_ids"]

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """L2-normalised embeddings, row i for texts[i]; batches group texts of similar length."""
        return self.embed_counted(texts, batch_size)[0]

    def embed_counted(self, texts: Sequence[str], batch_size: int = 32) -> tuple[np.ndarray, list[int]]:
        """Embeddings and each text's token count (what the OpenAI API bills as prompt tokens)."""
        encoded = self.tokenizer([str(t) for t in texts], truncation=True, max_length=self.max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        lengths = [len(ids) for ids in encoded["input_ids"]]
        out: np.ndarray | None = None
        for rows in length_batches(lengths, batch_size):
            batch = self.tokenizer.pad([{k: encoded[k][i] for k in keys} for i in rows], return_tensors="np")
            vectors = self.runner(dict(batch))["sentence_embedding"]
            if out is None:
                out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
        if out is None:
            return np.zeros((0, int(self.meta.get("dimension") or 0)), dtype=np.float32), []
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12), lengths
