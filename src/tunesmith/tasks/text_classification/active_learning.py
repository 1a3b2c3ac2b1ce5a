"""Active learning: which unlabelled texts are worth labelling next (`tunesmith suggest`).

Uncertainty alone picks many near-identical texts from the one region where the model hesitates, so the
selection is uncertainty *with* diversity: the `CANDIDATES` x n most uncertain texts (smallest margin
between the two likeliest labels; for multi-label, the label closest to its threshold), and never more than
the less confident half of the pool, are clustered into n groups on their TF-IDF vectors (k-means), and
each group gives its most uncertain text.

The picks are written as a CSV with an empty `label` column to fill in, and as a Label Studio import file
whose tasks carry the model's guess as a pre-annotation; a Label Studio export (JSON) or the filled CSV
goes back into `tunesmith train` like any labelled file.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from tunesmith.errors import ConfigError, DataError

CANDIDATES = 10  # uncertain candidates per pick that the diversity step chooses among
STRATEGIES = ("uncertainty-diversity", "uncertainty", "random")


@dataclass
class Suggestion:
    text: str
    predicted: str | list[str]
    score: float  # the model's confidence in `predicted`
    uncertainty: float  # 1 - margin: 1 means a tie between the two likeliest labels
    pool_row: int  # 1-based data row in the pool file


@dataclass
class SuggestResult:
    suggestions: list[Suggestion]
    csv: Path
    label_studio: Path
    label_config: Path
    pool_size: int


def uncertainty(probs: np.ndarray, multi_label: bool, threshold: float | list[float] = 0.5) -> np.ndarray:
    """1 - margin between the two likeliest labels (single-label) or 1 - 2|p - threshold| of the label closest
    to its threshold (multi-label); in [0, 1], higher is less sure."""
    if multi_label:
        return 1 - 2 * np.abs(probs - threshold).min(axis=1)
    top2 = np.sort(probs, axis=1)[:, -2:]
    return 1 - (top2[:, 1] - top2[:, 0])


def select(texts: list[str], scores: np.ndarray, n: int, strategy: str, seed: int = 42) -> list[int]:
    """Indices of the `n` texts to label, most uncertain first."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"Unknown strategy {strategy!r}. Strategies: {', '.join(STRATEGIES)}.")
    n = min(n, len(texts))
    if strategy == "random":
        return sorted(np.random.default_rng(seed).choice(len(texts), size=n, replace=False).tolist(),
                      key=lambda i: -scores[i])  # fmt: skip
    order = np.argsort(-scores, kind="stable")
    if strategy == "uncertainty" or n == len(texts):
        return order[:n].tolist()
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    # Candidates: the CANDIDATES x n most uncertain, but never the more confident half of the pool.
    pool = order[: max(n, min(CANDIDATES * n, len(texts) // 2))]
    vectors = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2)).fit_transform([texts[i] for i in pool])
    clusters = MiniBatchKMeans(n_clusters=n, random_state=seed, n_init=3, batch_size=2048).fit_predict(vectors)
    best: dict[int, int] = {}
    for position, cluster in enumerate(clusters):  # `pool` is sorted most-uncertain first
        best.setdefault(int(cluster), int(pool[position]))
    chosen = list(best.values())
    if len(chosen) < n:  # k-means can leave clusters empty: fill up with the next most uncertain
        taken = set(chosen)
        chosen += [int(i) for i in pool if int(i) not in taken][: n - len(chosen)]
    return sorted(chosen, key=lambda i: -scores[i])


def suggest(
    model: Any,
    pool: str | Path,
    n: int = 200,
    *,
    output: str | Path,
    text_column: str | None = None,
    strategy: str = "uncertainty-diversity",
    exclude: str | Path | None = None,
    seed: int = 42,
    model_version: str = "tunesmith",
) -> SuggestResult:
    """Pick `n` texts of the `pool` file for labelling; write `output` (CSV) and `<output>.label-studio.json`.

    `model` is a loaded text classifier (`tunesmith.load_model`); `model_version` names it in the Label Studio
    pre-annotations. Texts of `exclude` (e.g. the training file) and repeats within the pool are never
    suggested.
    """
    from tunesmith.data import ensure_text_column, read_table, read_text_column, trained_text_column
    from tunesmith.quality.checks import normalize

    if getattr(model, "task", "text-classification") != "text-classification":
        raise ConfigError(f"`suggest` needs a text-classification model; this one is {model.task!r}.")
    if n < 1:
        raise ConfigError(f"-n must be at least 1, not {n}.")
    frame, column = read_text_column(pool, text_column, trained_text_column(model.meta) or None)
    known: set[str] = set()
    if exclude is not None:
        excluded = read_table(exclude)
        excluded.columns = [str(c) for c in excluded.columns]
        if ensure_text_column(excluded, column):
            known = {normalize(str(t)) for t in excluded[column].dropna()}
    texts, rows = [], []
    for row, value in enumerate(frame[column].tolist(), start=1):
        text = "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()
        key = normalize(text)
        if key and key not in known:
            known.add(key)
            texts.append(text)
            rows.append(row)
    if not texts:
        raise DataError(f"{pool}: no texts left to suggest (empty, or all already labelled).")
    probs = model.predict_proba(texts)
    scores = uncertainty(probs, model.multi_label, getattr(model, "threshold", 0.5))
    picked = select(texts, scores, n, strategy, seed)
    predictions = model.decide(probs[picked])
    suggestions = [Suggestion(texts[i], p.label, p.score, float(scores[i]), rows[i])
                   for i, p in zip(picked, predictions, strict=True)]  # fmt: skip
    output = Path(output)
    paths = _write(suggestions, output, model, column, model_version)
    return SuggestResult(suggestions, output, *paths, pool_size=len(texts))


def _atomic_write(path: Path, content: str) -> None:
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(content, encoding="utf-8")
    os.replace(partial, path)


def _write(
    suggestions: list[Suggestion], output: Path, model: Any, column: str, version: str
) -> tuple[Path, Path]:
    import io

    output.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([column, "label", "predicted", "score", "uncertainty", "pool_row"])
    for s in suggestions:
        predicted = "|".join(s.predicted) if isinstance(s.predicted, list) else s.predicted
        writer.writerow([s.text, "", predicted, f"{s.score:.4f}", f"{s.uncertainty:.4f}", s.pool_row])
    _atomic_write(output, buffer.getvalue())

    tasks = []
    for s in suggestions:
        choices = s.predicted if isinstance(s.predicted, list) else [s.predicted]
        tasks.append({
            "data": {"text": s.text, "pool_row": s.pool_row, "uncertainty": round(s.uncertainty, 4)},
            "predictions": [{"model_version": version, "score": round(s.score, 4), "result": [{
                "from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": choices},
            }]}],
        })  # fmt: skip
    studio = output.with_suffix(".label-studio.json")
    _atomic_write(studio, json.dumps(tasks, indent=1, ensure_ascii=False) + "\n")
    choice = "multiple" if model.multi_label else "single"
    options = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in model.label_names)
    config = output.with_suffix(".label-config.xml")
    _atomic_write(config, f'<View>\n  <Text name="text" value="$text"/>\n  <Choices name="label" toName="text" '
                          f'choice="{choice}" showInline="false">\n{options}\n  </Choices>\n</View>\n')  # fmt: skip
    return studio, config
