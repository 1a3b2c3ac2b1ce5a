"""The classical baseline beside every NER run: a linear-chain CRF over word features (CRFsuite).

The features are the ones CRF taggers of the CoNLL era used (the word lowercased, its prefixes and suffixes,
its shape and case, and the same for its neighbours): on newswire such a tagger reaches F1 in the 0.8s, on
social media far less. It trains in seconds to a minute on a CPU, on the same training split as the
fine-tuned model, and is scored on the same test split with the same seqeval metrics, so the report can
say when fine-tuning did not pay.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from tunesmith.tasks.token_classification.metrics import repair_tags, seqeval_report
from tunesmith.tasks.token_classification.sentences import Sentence

MAX_ITERATIONS = 100  # L-BFGS passes; the F1 of CoNLL-sized sets stops moving well before


@dataclass
class Baseline:
    metrics: dict[str, Any]
    seconds: float


def _shape(word: str) -> str:
    """'Paris' -> 'Xx', 'CNN-2' -> 'X-d', 'e-mail' -> 'x-x': runs of a character class collapsed."""
    shape = re.sub(r"[A-Z]+", "X", word)
    shape = re.sub(r"[a-z]+", "x", shape)
    return re.sub(r"\d+", "d", shape)


def _word(word: str, prefix: str) -> dict[str, Any]:
    lower = word.lower()
    return {
        f"{prefix}lower": lower, f"{prefix}suffix3": lower[-3:], f"{prefix}suffix2": lower[-2:],
        f"{prefix}prefix3": lower[:3], f"{prefix}shape": _shape(word), f"{prefix}title": word.istitle(),
        f"{prefix}upper": word.isupper(), f"{prefix}digit": any(c.isdigit() for c in word),
    }  # fmt: skip


def features(tokens: list[str]) -> list[dict[str, Any]]:
    rows = []
    for i, token in enumerate(tokens):
        row = {"bias": 1.0, **_word(token, "")}
        row.update(_word(tokens[i - 1], "-1:") if i > 0 else {"BOS": True})
        row.update(_word(tokens[i + 1], "+1:") if i + 1 < len(tokens) else {"EOS": True})
        rows.append(row)
    return rows


def train_baseline(train: list[Sentence], test: list[Sentence]) -> Baseline:
    """A CRF fitted on `train`, scored on `test` (seqeval, the fine-tuned model's metrics)."""
    import sklearn_crfsuite

    started = time.perf_counter()
    crf = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=0.1, c2=0.1, max_iterations=MAX_ITERATIONS,
                               all_possible_transitions=True)  # fmt: skip
    crf.fit([features(s.tokens) for s in train], [s.tags for s in train])
    predicted = [repair_tags(list(p)) for p in crf.predict([features(s.tokens) for s in test])] if test else []
    metrics = seqeval_report([s.tags for s in test], predicted)
    return Baseline(metrics, time.perf_counter() - started)
