"""Sentence-similarity data: four shapes told apart by their columns, checked, split and fingerprinted.

- scored pairs: `sentence1, sentence2, score` (STS style; `question1, question2, is_duplicate` and `text1, text2`
  are read too). Scores of only 0 and 1 are duplicate / not-duplicate pairs;
- pairs: `anchor, positive` (or `query, positive`): each positive matches its anchor, every other text in a batch
  is a negative for it;
- triplets: `anchor, positive, negative`: the negative is a hard one chosen by the user;
- labelled texts: `text, label`: texts of one label are positives for each other, so any classification file
  also trains an embedding model.

Splits keep every row of one anchor (or first sentence) on the same side, so no query is seen in training and
again when scored; rows of given --validation / --test files whose anchor is also a training anchor are
reported as leaks.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunesmith.config import RunConfig
from tunesmith.data import DataIssue, fingerprint, holdout, read_table
from tunesmith.errors import DataError

Shape = Literal["scored-pairs", "pairs", "triplets", "labelled-texts"]
# Column names each shape is recognised by, in the order they are looked for; the first found names the role.
FIRST = ("sentence1", "question1", "text1")
SECOND = ("sentence2", "question2", "text2")
SCORE = ("score", "similarity", "is_duplicate", "label")
ANCHOR = ("anchor", "query")
POSITIVE = ("positive",)
NEGATIVE = ("negative",)
COLUMNS = {  # canonical row keys of each shape: what the artifact's data/*.jsonl and feedback rows hold
    "scored-pairs": ("sentence1", "sentence2", "score"),
    "pairs": ("anchor", "positive"),
    "triplets": ("anchor", "positive", "negative"),
    "labelled-texts": ("text", "label"),
}
SHAPE_HELP = ("Give sentence-similarity data as one of: `sentence1, sentence2, score` (scored pairs), `anchor, "
              "positive` (pairs), `anchor, positive, negative` (triplets) or `text, label` (texts of one label are "
              "similar).")  # fmt: skip


@dataclass
class PairData:
    shape: Shape
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    test: list[dict[str, Any]]
    fingerprint: str
    issues: list[DataIssue] = field(default_factory=list)
    score_range: tuple[float, float] | None = None  # scored pairs: the scale scores are read on

    @property
    def binary(self) -> bool:
        """Scored pairs whose scores are only 0 and 1: duplicate / not-duplicate."""
        return self.shape == "scored-pairs" and {r["score"] for r in self.train} <= {0.0, 1.0}


def _pick(columns: Sequence[str], names: Sequence[str]) -> str | None:
    lower = {c.lower(): c for c in columns}
    return next((lower[n] for n in names if n in lower), None)


def detect_shape(columns: Sequence[str], text_column: str | None = None,
                 label_column: str | None = None) -> tuple[Shape, dict[str, str]]:  # fmt: skip
    """The data shape of a table with these columns, and which column plays each canonical role."""
    first, second, anchor, positive = (_pick(columns, n) for n in (FIRST, SECOND, ANCHOR, POSITIVE))
    if first and second:
        score = _pick([c for c in columns if c not in (first, second)], SCORE)
        if score is None:
            raise DataError(f"Found {first!r} and {second!r} but no score column ({', '.join(SCORE)}). Add how similar "
                            "each pair is, or name the columns anchor, positive for pairs known to match.")  # fmt: skip
        return "scored-pairs", {"sentence1": first, "sentence2": second, "score": score}
    if anchor and positive:
        negative = _pick(columns, NEGATIVE)
        roles = {"anchor": anchor, "positive": positive}
        return ("triplets", {**roles, "negative": negative}) if negative else ("pairs", roles)
    text = text_column if text_column in columns else _pick(columns, ("text", "sentence"))
    label = label_column if label_column in columns else _pick(columns, ("label", "intent", "category"))
    if text and label:
        return "labelled-texts", {"text": text, "label": label}
    raise DataError(f"Cannot tell the data shape from the columns {list(columns)}. {SHAPE_HELP}")


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _rows_text(indices: Sequence[int], limit: int = 5) -> str:
    shown = ", ".join(str(i + 1) for i in indices[:limit])
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


def read_rows(path: str | Path, shape: Shape | None = None, roles: dict[str, str] | None = None, *,
              text_column: str | None = None, label_column: str | None = None,
              score_range: tuple[float, float] | None = None,
              drop_duplicates: bool = True) -> tuple[Shape, list[dict[str, Any]], list[DataIssue], tuple[float, float] | None]:  # fmt: skip
    """Rows of one file in canonical keys, checked; `shape` given: the file must have that shape (a split file)."""
    frame = read_table(path)
    source = str(path)
    found, found_roles = detect_shape([str(c) for c in frame.columns], text_column, label_column)
    if shape is not None and found != shape:
        raise DataError(f"{source} holds {found} but the training file holds {shape}: give every split the same "
                        f"columns ({', '.join(COLUMNS[shape])}).")  # fmt: skip
    shape, roles = found, roles or found_roles
    issues: list[DataIssue] = []
    rows: list[dict[str, Any]] = []
    empty: list[int] = []
    bad_scores: list[int] = []
    same: list[int] = []
    texts = [k for k in COLUMNS[shape] if k not in ("score", "label")]
    for index, record in enumerate(frame.to_dict("records")):
        row: dict[str, Any] = {k: _text(record[roles[k]]) for k in texts}
        if not all(row.values()):
            empty.append(index)
            continue
        if shape == "scored-pairs":
            try:
                row["score"] = float(record[roles["score"]])
            except (TypeError, ValueError):
                bad_scores.append(index)
                continue
            if math.isnan(row["score"]):
                bad_scores.append(index)
                continue
        if shape == "labelled-texts":
            row["label"] = _text(record[roles["label"]])
            if not row["label"]:
                empty.append(index)
                continue
        first, second = (row.get("anchor", row.get("sentence1")), row.get("positive", row.get("sentence2")))
        if second is not None and first == second:
            same.append(index)
            if shape != "scored-pairs":  # a positive identical to its anchor teaches nothing
                continue
        rows.append({**row, "_row": index})
    if bad_scores:
        raise DataError(f"{source}: {len(bad_scores)} row(s) have no numeric {roles['score']!r} (data rows "
                        f"{_rows_text(bad_scores)}). Give every pair a number (e.g. 0-5 as STS-B, or 0/1).")  # fmt: skip
    if empty:
        issues.append(DataIssue("warning", "empty_text", (
            f"{source}: {len(empty)} row(s) have an empty side ({', '.join(roles[k] for k in COLUMNS[shape])}: data "
            f"rows {_rows_text(empty)}); they were left out. Fill in or delete them.")))  # fmt: skip
    if same:
        what = "kept (scored as given)" if shape == "scored-pairs" else "left out: a text is trivially similar to itself"
        issues.append(DataIssue("warning", "identical_pair", (
            f"{source}: {len(same)} pair(s) hold the same text on both sides (data rows {_rows_text(same)}); {what}.")))
    if shape == "scored-pairs" and rows:
        score_range = _check_scores(rows, score_range, source, roles["score"])
    if drop_duplicates:
        keys = [tuple(r[k] for k in COLUMNS[shape]) for r in rows]
        repeated: list[int] = []
        seen: set[tuple[Any, ...]] = set()
        kept = []
        for r, k in zip(rows, keys, strict=True):
            if k in seen:
                repeated.append(r["_row"])
            else:
                seen.add(k)
                kept.append(r)
        if repeated:
            issues.append(DataIssue("warning", "duplicates", (
                f"{source}: {len(repeated)} row(s) repeat an earlier row exactly (data rows {_rows_text(repeated)}); "
                "kept only once.")))  # fmt: skip
        rows = kept
    if not rows:
        raise DataError(f"{source}: no usable row. {SHAPE_HELP}")
    return shape, rows, issues, score_range


def _check_scores(rows: list[dict[str, Any]], declared: tuple[float, float] | None, source: str,
                  column: str) -> tuple[float, float]:  # fmt: skip
    scores = [r["score"] for r in rows]
    low, high = declared if declared else ((0.0, 1.0) if max(scores) <= 1 and min(scores) >= 0 else (0.0, 5.0))
    outside = [r["_row"] for r in rows if not low <= r["score"] <= high]
    if outside:
        hint = ("declare the scale with --set data.score_range=[LOW,HIGH]" if not declared else
                "fix the scores or the declared data.score_range")  # fmt: skip
        raise DataError(f"{source}: {len(outside)} {column!r} value(s) fall outside [{low:g}, {high:g}] (data rows "
                        f"{_rows_text(outside)}); {hint}.")  # fmt: skip
    return (low, high)


def group_key(shape: Shape, row: dict[str, Any]) -> str:
    """What a split keeps together: the anchor (or first sentence); for labelled texts the text itself."""
    return str(row.get("anchor", row.get("sentence1", row.get("text"))))


def load_pair_data(config: RunConfig) -> PairData:
    """Train/validation/test rows of the files `config.data` names, split by anchor where no file is given."""
    data = config.data
    if data.train is None:
        raise DataError("No training file: pass a CSV/JSONL/Parquet file, e.g. `tunesmith train pairs.csv --task "
                        f"sentence-similarity`. {SHAPE_HELP}")  # fmt: skip
    declared = data.score_range
    options: dict[str, Any] = {"text_column": data.text_column, "label_column": data.label_column,
                               "drop_duplicates": data.drop_duplicates}  # fmt: skip
    shape, train, issues, score_range = read_rows(data.train, score_range=declared, **options)  # type: ignore[arg-type]
    given: dict[str, list[dict[str, Any]]] = {}
    for what in ("validation", "test"):
        file = getattr(data, what)
        if file is not None:
            _, given[what], more, _ = read_rows(file, shape, score_range=score_range, **options)
            issues += more
            anchors = {group_key(shape, r) for r in train}
            leaked = [r["_row"] for r in given[what] if group_key(shape, r) in anchors]
            if leaked and shape != "labelled-texts":
                issues.append(DataIssue("warning", "leak", (
                    f"{file}: {len(leaked)} row(s) share their {COLUMNS[shape][0]} with a training row (data rows "
                    f"{_rows_text(leaked)}): the {what} score flatters the model on those.")))  # fmt: skip
    groups = sorted({group_key(shape, r) for r in train})
    _, val_groups, test_groups = holdout(groups, {w: [] for w in given}, data, config.seed, minimum=2,
                                         what=f"distinct {COLUMNS[shape][0]}s")  # fmt: skip
    held = {g: "validation" for g in val_groups} | {g: "test" for g in test_groups}
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "validation": [], "test": []}
    for row in train:
        splits[held.get(group_key(shape, row), "train")].append(row)
    splits.update(given)
    clean = {k: [{c: r[c] for c in COLUMNS[shape]} for r in v] for k, v in splits.items()}
    if shape == "labelled-texts":
        issues += _lonely_labels(clean["train"])
    keys = [tuple(r[c] for c in COLUMNS[shape]) for r in clean["train"]]
    return PairData(shape, clean["train"], clean["validation"], clean["test"],
                    fingerprint([shape] * len(keys), [list(k) for k in keys]), issues, score_range)  # fmt: skip


def _lonely_labels(rows: list[dict[str, Any]]) -> list[DataIssue]:
    counts = Counter(r["label"] for r in rows)
    alone = sorted(label for label, n in counts.items() if n < 2)
    if not alone:
        return []
    return [DataIssue("warning", "single_text_label", (
        f"{len(alone)} label(s) have one training text ({', '.join(map(repr, alone[:5]))}): nothing to pair it with, "
        "so it is paired with itself (only dropout tells the two apart). Add a second text of each."))]  # fmt: skip
