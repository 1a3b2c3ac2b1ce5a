"""Scoring an embedding model: Spearman on scored pairs; MRR@10, NDCG@10, accuracy@k and recall@k of each query
against a corpus for the other shapes; and BM25 (`bm25s`) scored the same way beside it.

The retrieval set of a split: for pairs and triplets, each distinct anchor is a query and the corpus is every
positive and negative of the split (a query's own positives are relevant, the rest are distractors); for
labelled texts each text is a query against all the other texts of the split, and those of its label are
relevant. Metrics follow sentence-transformers' InformationRetrievalEvaluator: accuracy@k counts a query as found
when any relevant text is in its top k, recall@k is the share of its relevant texts there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TOP_K = 10
KS = (1, 5, 10)
Scorer = Callable[[Sequence[str]], np.ndarray]  # texts -> L2-normalised embeddings


@dataclass
class RetrievalSet:
    queries: list[str]
    corpus: list[str]
    relevant: list[set[int]]  # corpus positions relevant to each query
    itself: list[int | None]  # a query's own position in the corpus (labelled texts), never counted as a hit


def retrieval_set(shape: str, rows: Sequence[dict[str, Any]]) -> RetrievalSet | None:
    """The split as queries against a corpus; None for scored pairs (they are scored by correlation)."""
    if shape == "scored-pairs" or not rows:
        return None
    if shape == "labelled-texts":
        texts = list(dict.fromkeys(r["text"] for r in rows))
        label = {r["text"]: r["label"] for r in rows}
        by_label: dict[str, set[int]] = {}
        for i, text in enumerate(texts):
            by_label.setdefault(label[text], set()).add(i)
        relevant = [by_label[label[t]] - {i} for i, t in enumerate(texts)]
        keep = [i for i, r in enumerate(relevant) if r]  # a text alone in its label has nothing to find
        return RetrievalSet([texts[i] for i in keep], texts, [relevant[i] for i in keep], keep)  # type: ignore[misc]
    corpus = list(dict.fromkeys([r["positive"] for r in rows] + [r["negative"] for r in rows if r.get("negative")]))
    position = {text: i for i, text in enumerate(corpus)}
    wanted: dict[str, set[int]] = {}
    for r in rows:
        wanted.setdefault(r["anchor"], set()).add(position[r["positive"]])
    return RetrievalSet(list(wanted), corpus, list(wanted.values()), [None] * len(wanted))


def top_k(scores: np.ndarray, itself: Sequence[int | None], k: int = TOP_K) -> np.ndarray:
    """The k best corpus positions per query row of `scores`, best first (a query's own text excluded)."""
    scores = scores.copy()
    for row, own in enumerate(itself):
        if own is not None:
            scores[row, own] = -np.inf
    k = min(k, scores.shape[1])
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, best, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(best, order, axis=1)


def ranking_metrics(ranked: np.ndarray, relevant: Sequence[set[int]]) -> dict[str, float]:
    """MRR@10, NDCG@10 (binary relevance), accuracy@k and recall@k over the queries."""
    mrr, ndcg = [], []
    found = {k: [] for k in KS}
    recall = {k: [] for k in KS}
    discounts = 1 / np.log2(np.arange(2, TOP_K + 2))
    for row, wanted in zip(ranked, relevant, strict=True):
        hits = np.array([int(i) in wanted for i in row[:TOP_K]], dtype=float)
        first = int(np.argmax(hits)) if hits.any() else None
        mrr.append(0.0 if first is None else 1 / (first + 1))
        ideal = discounts[: min(len(wanted), TOP_K)].sum()
        ndcg.append(float((hits * discounts[: len(hits)]).sum() / ideal) if ideal else 0.0)
        for k in KS:
            found[k].append(float(hits[:k].any()))
            recall[k].append(float(hits[:k].sum() / len(wanted)))
    metrics = {"mrr_at_10": float(np.mean(mrr)), "ndcg_at_10": float(np.mean(ndcg))}
    metrics |= {f"accuracy_at_{k}": float(np.mean(v)) for k, v in found.items()}
    metrics |= {f"recall_at_{k}": float(np.mean(v)) for k, v in recall.items()}
    return metrics


def spearman(predicted: Sequence[float], truth: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(set(truth)) < 2 or len(set(predicted)) < 2:
        return 0.0
    return float(spearmanr(predicted, truth).statistic)


def evaluate(embed: Scorer, shape: str, rows: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics of an embedding function on a split, and its worst rows (for errors.jsonl)."""
    if shape == "scored-pairs":
        first = embed([r["sentence1"] for r in rows])
        second = embed([r["sentence2"] for r in rows])
        return _pair_metrics((first * second).sum(1), rows)
    found = retrieval_set(shape, rows)
    if found is None or not found.queries:
        return {"n": 0, "score": 0.0}, []
    ranked = top_k(embed(found.queries) @ embed(found.corpus).T, found.itself)
    return _retrieval_metrics(ranked, found)


def _pair_metrics(similarity: np.ndarray, rows: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    truth = [r["score"] for r in rows]
    rho = spearman(list(similarity), truth)
    low, high = min(truth), max(truth)
    scaled = [(t - low) / (high - low) if high > low else 0.0 for t in truth]
    worst = np.argsort(-np.abs(np.asarray(similarity) - np.asarray(scaled)))[:50]
    errors = [{"sentence1": rows[i]["sentence1"], "sentence2": rows[i]["sentence2"], "score": rows[i]["score"],
               "cosine": round(float(similarity[i]), 4)} for i in worst]  # fmt: skip
    return {"spearman": rho, "score": rho, "n": len(rows)}, errors


def _retrieval_metrics(ranked: np.ndarray, found: RetrievalSet) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    metrics: dict[str, Any] = ranking_metrics(ranked, found.relevant)
    metrics |= {"score": metrics["mrr_at_10"], "n": len(found.queries), "corpus": len(found.corpus)}
    errors = [{"query": found.queries[q], "expected": [found.corpus[i] for i in sorted(found.relevant[q])][:3],
               "found": [found.corpus[i] for i in ranked[q][:3]]}
              for q in range(len(found.queries)) if int(ranked[q][0]) not in found.relevant[q]]  # fmt: skip
    return metrics, errors


def bm25_scores(corpus: Sequence[str], queries: Sequence[str]) -> np.ndarray:
    """BM25 scores (queries x corpus) with bm25s' defaults (Lucene variant, English stopwords)."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(list(corpus), stopwords="en", show_progress=False), show_progress=False)
    tokens = bm25s.tokenize(list(queries), stopwords="en", show_progress=False, return_ids=False)
    return np.vstack([retriever.get_scores(query) for query in tokens]) if tokens else np.zeros((0, len(corpus)))


def evaluate_bm25(shape: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """BM25 on a split, scored as `evaluate` scores a model."""
    if shape == "scored-pairs":
        seconds = [r["sentence2"] for r in rows]
        scores = bm25_scores(seconds, [r["sentence1"] for r in rows])
        return _pair_metrics(scores[np.arange(len(rows)), np.arange(len(rows))], rows)[0]
    found = retrieval_set(shape, rows)
    if found is None or not found.queries:
        return {"n": 0, "score": 0.0}
    return _retrieval_metrics(top_k(bm25_scores(found.corpus, found.queries), found.itself), found)[0]
