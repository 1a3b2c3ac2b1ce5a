"""The classical baseline beside every QA run: a lexical sliding window, as in the SQuAD paper's first baselines.

The sentence sharing the most (rarity-weighted) words with the question is taken as the one holding the
answer; inside it, the answer is the span of up to six words, free of question words, that sits closest to
the question's words. Nothing is learned: it shows how much of a data set word matching alone answers
(SQuAD v1.1 dev, part 1: F1 0.19, EM 0.07; a prior on answer lengths from the training split scored lower,
0.14), so a fine-tuned reader below it says the run went wrong.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tunesmith.tasks.question_answering.examples import Example, squad_scores

MAX_SPAN = 6  # words in an answer; 3 or 4 scored lower F1 on SQuAD, 8 the same
_WORD = re.compile(r"\w+|[^\w\s]")
_SENTENCE_END = {".", "!", "?"}
# Function words carry no evidence about where an answer sits (a short English list: a lexical baseline).
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "from",
        "by",
        "with",
        "and",
        "or",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "did",
        "do",
        "does",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "as",
        "than",
        "then",
        "there",
        "their",
        "they",
        "he",
        "she",
        "his",
        "her",
        "him",
        "i",
        "you",
        "we",
        "our",
        "your",
        "not",
        "no",
        "many",
        "much",
    ]
)


@dataclass
class Baseline:
    metrics: dict[str, Any]
    seconds: float


def answer(question: str, context: str) -> str:
    """The baseline's answer span, as text of `context`."""
    tokens = [(m.group(), m.start(), m.end()) for m in _WORD.finditer(context)]
    if not tokens:
        return ""
    lower = [t[0].lower() for t in tokens]
    asked = {w.lower() for w in _WORD.findall(question)} - STOPWORDS
    frequency = Counter(lower)
    weight = {w: math.log(1 + 1 / frequency[w]) for w in asked if w in frequency}
    sentences, start = [], 0
    for i, word in enumerate(lower):
        if word in _SENTENCE_END or i == len(lower) - 1:
            sentences.append((start, i + 1))
            start = i + 1
    first, last = max(sentences, key=lambda s: sum(weight.get(w, 0.0) for w in set(lower[s[0] : s[1]])))
    cues = [(k, weight[lower[k]]) for k in range(first, last) if lower[k] in weight]
    best, best_score = (first, first + 1), -1.0
    for i in range(first, last):
        for n in range(1, MAX_SPAN + 1):
            j = i + n
            if j > last:
                break
            span = lower[i:j]
            if any(w in asked for w in span) or span[0] in STOPWORDS or span[-1] in STOPWORDS:
                continue
            if not (span[0][0].isalnum() and span[-1][0].isalnum()):
                continue
            score = sum(w / (1 + (i - k if k < i else k - j + 1)) for k, w in cues)
            if score > best_score:
                best, best_score = (i, j), score
    return context[tokens[best[0]][1] : tokens[best[1] - 1][2]]


def score_baseline(test: list[Example]) -> Baseline:
    """The window baseline's answers to `test`, scored like the fine-tuned model's."""
    started = time.perf_counter()
    predictions = [answer(e.question, e.context) for e in test]
    return Baseline(squad_scores(test, predictions), time.perf_counter() - started)
