"""The ONNX export check of an embedding model. Agreement is retrieval agreement: the share of each validation
query's PyTorch top 10 that the variant also ranks in its top 10. Beside it, the cosine of every validation
text's embedding to PyTorch's (mean and minimum) and the validation metrics; the test agreement is the share of
test texts whose embedding keeps a cosine of 0.99 or more to PyTorch's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.export import ExportCheck, single_feeds, timed
from tunesmith.inference import onnx_runner
from tunesmith.tasks.sentence_similarity.encoder import Embedder
from tunesmith.tasks.sentence_similarity.pairs import COLUMNS
from tunesmith.tasks.sentence_similarity.retrieval import TOP_K, evaluate, retrieval_set, top_k

COSINE_AGREES = 0.99


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class EmbeddingCheck(ExportCheck):
    def __init__(self, path: Path) -> None:
        self.reference = ref = Embedder.from_artifact(path, backend="pytorch", attn_implementation="eager")
        self.model, self.pad_token_id = ref.model, ref.tokenizer.pad_token_id or 0
        self.shape = str(ref.meta.get("data_shape", "pairs"))
        self.rows = _rows(path / "data" / "validation.jsonl")
        self.test_rows = _rows(path / "data" / "test.jsonl")
        self.texts = self._texts(self.rows)
        self.test_texts = self._texts(self.test_rows)
        self.n, self.test_n = len(self.texts), len(self.test_texts)
        self.reference_vectors = ref.embed(self.texts)
        self.reference_test, self.reference_seconds = timed(lambda: ref.embed(self.test_texts))
        self.queries, self.corpus, self.itself = self._retrieval()
        self.reference_top = self._top(self.reference_vectors)
        self.reference_metrics = self._metrics(ref)
        self.output_axes = {"sentence_embedding": {0: "batch"}}
        trace = ref.tokenizer(["A short text.", "A longer text, so that there is padding."], padding=True,
                              return_tensors="np")  # fmt: skip
        self.trace_feeds = {k: trace[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in trace}
        encoded = ref.tokenizer(self.texts or ["Calibration."], truncation=True, max_length=ref.max_length)
        self.calibration_feeds = single_feeds(encoded, list(self.trace_feeds))

    def _texts(self, rows: list[dict[str, Any]]) -> list[str]:
        keys = [k for k in COLUMNS.get(self.shape, ()) if k not in ("score", "label")]
        return list(dict.fromkeys(str(r[k]) for r in rows for k in keys if r.get(k)))

    def _retrieval(self) -> tuple[list[int], list[int], list[int | None]]:
        """Positions in `texts` of the validation queries and corpus."""
        position = {t: i for i, t in enumerate(self.texts)}
        if self.shape == "scored-pairs":
            queries = list(dict.fromkeys(position[r["sentence1"]] for r in self.rows))
            corpus = list(dict.fromkeys(position[r["sentence2"]] for r in self.rows))
            return queries, corpus, [None] * len(queries)
        found = retrieval_set(self.shape, self.rows)
        if found is None:
            return [], [], []
        return [position[q] for q in found.queries], [position[c] for c in found.corpus], found.itself

    def _top(self, vectors: np.ndarray) -> np.ndarray:
        if not self.queries or not self.corpus:
            return np.zeros((0, 0), dtype=int)
        return top_k(vectors[self.queries] @ vectors[self.corpus].T, self.itself, TOP_K)

    def _metrics(self, embedder: Embedder) -> dict[str, float]:
        if not self.rows:
            return {}
        metrics, _ = evaluate(embedder.embed, self.shape, self.rows)
        return {k: v for k, v in metrics.items() if k not in ("n", "corpus")}

    def candidate(self, onnx_file: Path, variant: str) -> Embedder:
        ref = self.reference
        return Embedder(onnx_runner(onnx_file), ref.tokenizer, ref.max_length, ref.meta, f"onnx-{variant}")

    def compare(self, candidate: Embedder) -> dict[str, Any]:
        vectors = candidate.embed(self.texts)
        test_vectors, seconds = timed(lambda: candidate.embed(self.test_texts))
        cosines = (vectors * self.reference_vectors).sum(1) if len(vectors) else np.ones(1)
        top = self._top(vectors)
        overlap = [len(set(a) & set(b)) / len(a) for a, b in zip(self.reference_top, top, strict=True) if len(a)]
        metrics = self._metrics(candidate)
        return {
            "agreement": float(np.mean(overlap)) if overlap else float(np.mean(cosines >= COSINE_AGREES)),
            "test_agreement": float(np.mean((test_vectors * self.reference_test).sum(1) >= COSINE_AGREES))
            if self.test_n else 1.0,
            "mean_cosine": float(cosines.mean()),
            "min_cosine": float(cosines.min()),
            "max_probability_difference": float(1 - cosines.min()),
            "metrics": metrics,
            "metric_delta": {k: metrics[k] - self.reference_metrics[k] for k in metrics},
            "texts_per_second": self.test_n / seconds if self.test_n and seconds > 0 else None,
        }
