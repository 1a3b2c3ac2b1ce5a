"""Where an approximate (HNSW, usearch) index starts paying over exact search, on this CPU.

    python bench/search_index.py                 # sizes 10k, 25k, 50k, 100k, 200k
    python bench/search_index.py --sizes 10000,50000

Vectors: the embedded MiniLM's embeddings of Banking77's texts (13k real texts), and beyond that each real
embedding perturbed (normalise(v + noise)), which keeps the real corpus's cluster structure at sizes nobody
wants to embed for a benchmark. For each size: exact search (one matrix product, what `CorpusIndex` does below
`ANN_FROM`) and usearch's HNSW graph (cosine, `expansion_search` as the index sets it): build seconds, one-query
latency (p50 / p99 over 200 queries, one at a time, as the server asks) and recall@10 against exact search.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import require_shared_data, save


def real_embeddings() -> np.ndarray:
    import csv

    from tunesmith.models import resolve_model
    from tunesmith.tasks.sentence_similarity.encoder import Embedder

    texts = []
    for split in ("train", "test"):
        with (require_shared_data() / "banking77" / f"{split}.csv").open(encoding="utf-8") as handle:
            texts += [row["text"] for row in csv.DictReader(handle)]
    embedder = Embedder.from_folder(resolve_model("embedded:all-MiniLM-L6-v2"), max_length=128)
    started = time.perf_counter()
    vectors = embedder.embed(texts, batch_size=64)
    print(f"embedded {len(texts):,} Banking77 texts in {time.perf_counter() - started:.0f} s", flush=True)
    return vectors


def corpus(real: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if size <= len(real):
        return real[:size]
    picks = real[rng.integers(0, len(real), size - len(real))]
    noisy = picks + rng.normal(0, 0.25 / np.sqrt(real.shape[1]), picks.shape).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    return np.vstack([real, noisy]).astype(np.float32)


def latency_ms(search: object, queries: np.ndarray) -> tuple[float, float]:
    times = []
    for q in queries:
        started = time.perf_counter()
        search(q[None, :])  # type: ignore[operator]
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,25000,50000,100000,200000")
    args = parser.parse_args()
    from usearch.index import Index

    from tunesmith.tasks.sentence_similarity.index import EXPANSION_SEARCH

    real = real_embeddings()
    rng = np.random.default_rng(1)
    queries = real[rng.integers(0, len(real), 200)] + rng.normal(0, 0.02, (200, real.shape[1])).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        vectors = corpus(real, size)

        def exact(q: np.ndarray, vectors: np.ndarray = vectors) -> np.ndarray:
            scores = q @ vectors.T
            best = np.argpartition(-scores, 9, axis=1)[:, :10]
            return np.take_along_axis(best, np.take_along_axis(scores, best, 1).argsort(1)[:, ::-1], 1)

        started = time.perf_counter()
        graph = Index(ndim=vectors.shape[1], metric="cos", dtype="f32")
        graph.add(np.arange(size), vectors)
        graph.expansion_search = EXPANSION_SEARCH
        build = time.perf_counter() - started
        truth = exact(queries)
        found = np.atleast_2d(graph.search(queries, 10).keys)
        recall = float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found, strict=True)]))
        exact_p50, exact_p99 = latency_ms(exact, queries)
        hnsw_p50, hnsw_p99 = latency_ms(lambda q, graph=graph: graph.search(q, 10), queries)
        row = {"size": size, "exact_p50_ms": exact_p50, "exact_p99_ms": exact_p99, "hnsw_p50_ms": hnsw_p50,
               "hnsw_p99_ms": hnsw_p99, "hnsw_build_s": build, "hnsw_recall_at_10": recall,
               "vectors_mb": vectors.nbytes / 2**20}  # fmt: skip
        rows.append(row)
        print(f"{size:>8,}: exact {exact_p50:.2f} ms (p99 {exact_p99:.2f}), hnsw {hnsw_p50:.2f} ms (p99 {hnsw_p99:.2f}), "
              f"recall@10 {recall:.3f}, build {build:.1f} s", flush=True)  # fmt: skip
    print("\n| texts | exact p50 ms | exact p99 ms | HNSW p50 ms | HNSW p99 ms | HNSW recall@10 | HNSW build s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']:,} | {r['exact_p50_ms']:.2f} | {r['exact_p99_ms']:.2f} | {r['hnsw_p50_ms']:.2f} | "
              f"{r['hnsw_p99_ms']:.2f} | {r['hnsw_recall_at_10']:.3f} | {r['hnsw_build_s']:.1f} |")  # fmt: skip
    print(f"wrote {save('search_index', {'dimension': int(real.shape[1]), 'queries': 200, 'rows': rows})}")


if __name__ == "__main__":
    main()
