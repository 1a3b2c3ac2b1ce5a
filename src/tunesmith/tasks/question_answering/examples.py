"""Question-answering data: SQuAD JSON and JSONL readers, the split by context, and SQuAD's scores."""

from __future__ import annotations

import collections
import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.config import RunConfig
from tunesmith.data import DataIssue, fingerprint, holdout, read_text
from tunesmith.errors import DataError


@dataclass
class Example:
    id: str
    question: str
    context: str
    answers: list[tuple[str, int]]  # (text, character start); empty when the question has no answer
    group: str = ""  # article title or context: splits keep a group together, so no context leaks


def read_examples(path: str | Path) -> tuple[list[Example], list[DataIssue]]:
    """Examples from SQuAD JSON or JSONL, with answers checked against their contexts."""
    path = Path(path)
    text = read_text(path)
    raw: list[dict[str, Any]] = []
    stripped = text.lstrip()
    if stripped.startswith("{") and '"data"' in stripped[:200]:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}).") from None
        for article in document.get("data", []):
            for paragraph in article.get("paragraphs", []):
                for qa in paragraph.get("qas", []):
                    answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                    raw.append({"id": qa.get("id"), "question": qa.get("question"), "context": paragraph.get("context"),
                                "answers": answers, "group": article.get("title", "")})  # fmt: skip
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    raw.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number}: not valid JSON ({exc.msg}).") from None
    if not raw:
        raise DataError(f"{path} holds no questions. Expected SQuAD JSON or JSONL with question, context, answers.")
    examples, issues = _check(raw, path)
    return examples, issues


def _answer_list(value: Any) -> list[tuple[str, int]]:
    if isinstance(value, dict):  # {"text": [...], "answer_start": [...]}
        return list(zip(value.get("text", []), value.get("answer_start", []), strict=False))
    return [(a["text"], a["answer_start"]) for a in value or []]


def _check(raw: list[dict[str, Any]], path: Path) -> tuple[list[Example], list[DataIssue]]:
    examples, issues = [], []
    empty, unfound, moved = [], [], 0
    for i, row in enumerate(raw):
        missing = [k for k in ("question", "context") if k not in row]
        if missing:
            raise DataError(f"{path}: question {i} has no {' or '.join(missing)} field; found {sorted(row)}.")
        question, context = str(row["question"] or "").strip(), str(row["context"] or "")
        if not question or not context.strip():
            empty.append(i)
            continue
        try:
            answers = _answer_list(row.get("answers", []))
        except (KeyError, TypeError):
            raise DataError(f"{path}: question {i}: answers must be {{'text': [...], 'answer_start': [...]}} or "
                            "a list of {'text', 'answer_start'}.") from None  # fmt: skip
        fixed = []
        for answer, start in answers:
            if context[start : start + len(answer)] == answer:
                fixed.append((answer, start))
                continue
            near = context.find(answer, max(0, start - 20))  # offsets a few characters off are common
            near = near if near != -1 else context.find(answer)
            if answer and near != -1:
                fixed.append((answer, near))
                moved += 1
        if answers and not fixed:
            unfound.append(row.get("id") or i)
            continue
        examples.append(Example(str(row.get("id") or i), question, context, fixed, str(row.get("group") or context)))
    if empty:
        issues.append(DataIssue("warning", "empty", f"{path}: {len(empty)} question(s) with an empty question or "
                                f"context were left out (rows {empty[:5]})."))  # fmt: skip
    if unfound:
        issues.append(DataIssue("warning", "answer_not_in_context", f"{path}: {len(unfound)} question(s) whose "
                                f"answers do not occur in their context were left out (ids {unfound[:5]})."))  # fmt: skip
    if moved:
        issues.append(DataIssue("warning", "answer_moved", f"{path}: {moved} answer offset(s) did not point at "
                                "the answer text; the nearest occurrence was used."))  # fmt: skip
    if not examples:
        raise DataError(f"{path}: no usable question is left after the checks above: {[str(i) for i in issues]}.")
    return examples, issues


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction: str, truth: str) -> float:
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not predicted or not gold:
        return float(predicted == gold)
    common = sum((collections.Counter(predicted) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(examples: Sequence[Example], predictions: Sequence[str]) -> dict[str, Any]:
    """Exact match and F1 (0-1), each the best over an example's reference answers; "" answers no-answer."""
    em, f1 = [], []
    for example, prediction in zip(examples, predictions, strict=True):
        golds = [a for a, _ in example.answers] or [""]
        em.append(max(float(normalize_answer(prediction) == normalize_answer(g)) for g in golds))
        f1.append(max(_f1(prediction, g) for g in golds))
    return {"exact_match": float(np.mean(em)) if em else 0.0, "f1": float(np.mean(f1)) if f1 else 0.0, "n": len(em)}


@dataclass
class QAData:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    allow_no_answer: bool
    fingerprint: str
    issues: list[DataIssue] = field(default_factory=list)


def load_qa_data(config: RunConfig) -> QAData:
    data = config.data
    if data.train is None:
        raise DataError(
            "No training file: pass SQuAD JSON or JSONL, e.g. `tunesmith train squad.json --task question-answering`."
        )
    train, issues = read_examples(data.train)
    extra = {}
    for what in ("validation", "test"):
        if getattr(data, what) is not None:
            extra[what], more = read_examples(getattr(data, what))
            issues += more
    # Split by article (or context), so no context is seen in training and again when scored.
    groups = sorted({e.group for e in train})
    _, val_groups, test_groups = holdout(groups, {what: [] for what in extra}, data, config.seed, minimum=1,
                                         what="distinct contexts")  # fmt: skip
    held = {g: "validation" for g in val_groups} | {g: "test" for g in test_groups}
    splits: dict[str, list[Example]] = {"train": [], "validation": [], "test": []}
    for e in train:
        splits[held.get(e.group, "train")].append(e)
    splits.update(extra)
    allow_no_answer = any(not e.answers for e in train)
    return QAData(
        splits["train"], splits["validation"], splits["test"], allow_no_answer,
        fingerprint([e.question + "\n" + e.context for e in splits["train"]], [e.answers for e in splits["train"]]),
        issues,
    )  # fmt: skip
