"""Likely label errors, found by confident learning (`cleanlab`) on out-of-fold probabilities of a fast model.

A row is suspect when a model that never saw it is confident that it belongs to another class than its
label, with class-specific thresholds (cleanlab's confident joint), so a model that is merely weak on a
hard class does not flag that whole class. The fast model is TF-IDF + logistic regression, trained in
`FOLDS` folds over every labelled row of every split: a test label can be wrong too.

Cost, measured on two cores: 10k single-label rows 22 s; 100k multi-label rows (GoEmotions, 28 labels) 2.1 min
and 1.2 GB. Above `LARGE` labelled rows the model gets cheaper so that several hundred thousand rows stay
within minutes: word n-grams only (character n-grams carry ~10x the non-zeros of short texts) and
`LARGE_FOLDS` folds (100k rows that way: 28 s, 0.7 GB). It is not the default below that because it finds
fewer flips on Banking77 (precision 0.52 / recall 0.77 against 0.62 / 0.79).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tunesmith.quality.checks import EXAMPLES, Rows

FOLDS = 5
LARGE = 150_000
LARGE_FOLDS = 3

Tick = Callable[[int], None]


def _classifier(seed: int) -> Any:
    """Logistic loss by SGD: on Banking77 as accurate out of fold as lbfgs logistic regression (0.900 vs 0.893
    on a 20% hold-out) in 40% of the time, and linear in the rows, which keeps 100k rows in minutes."""
    from sklearn.linear_model import SGDClassifier

    return SGDClassifier(loss="log_loss", alpha=1e-5, max_iter=15, tol=None, random_state=seed, n_jobs=-1)


def _features(large: bool) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    from tunesmith.tasks.text_classification.baseline import tfidf_features

    if large:
        return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=100_000)
    return tfidf_features(max_features=100_000)


def out_of_fold(
    features: Any, targets: np.ndarray, n_classes: int, seed: int, tick: Tick, folds: int = FOLDS
) -> np.ndarray:  # fmt: skip
    """Class probabilities for each row from a model trained on the other folds (columns for every class)."""
    from joblib import Parallel, delayed
    from sklearn.model_selection import KFold, StratifiedKFold

    single = targets.ndim == 1
    counts = np.bincount(targets, minlength=n_classes) if single else targets.sum(axis=0)
    if single and counts[counts > 0].min() >= folds:
        splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, targets)
    else:  # a class with fewer rows than folds cannot be stratified: plain shuffled folds
        splits = KFold(folds, shuffle=True, random_state=seed).split(features)
    probs = np.zeros((features.shape[0], n_classes))

    def binary(x: Any, column: np.ndarray, x_held: Any) -> np.ndarray:
        return _classifier(seed).fit(x, column).predict_proba(x_held)[:, 1]

    for train, held in splits:
        if single:
            model = _classifier(seed).fit(features[train], targets[train])
            probs[np.ix_(held, model.classes_)] = model.predict_proba(features[held])
        else:
            # One-vs-rest; a label absent from the fold stays at 0. A binary SGD fit uses one core, so the
            # labels are fitted side by side (SGD's inner loop releases the GIL: threads suffice).
            x, x_held = features[train], features[held]
            present = [c for c in range(n_classes) if targets[train, c].min() != targets[train, c].max()]
            columns = Parallel(n_jobs=-1, prefer="threads")(delayed(binary)(x, targets[train, c], x_held)
                                                             for c in present)  # fmt: skip
            for c, column in zip(present, columns, strict=True):
                probs[held, c] = column
        tick(len(held))
    return probs


def classification(rows: Rows, seed: int = 42, tick: Tick = lambda _n: None) -> dict[str, Any]:
    """Rows whose label is likely wrong, most likely first, each with the label the model suggests."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    from tunesmith.quality.checks import label_names

    labelled = [i for i, labels in enumerate(rows.labels) if labels]
    names = label_names(rows)
    if len(names) < 2 or len(labelled) < 2 * FOLDS:
        tick(len(rows))
        return {"findings": [], "checked": False, "why": "needs at least two classes and ten labelled rows",
                "_fix_rows": {"drop-label-errors": []}}  # fmt: skip
    index = {name: i for i, name in enumerate(names)}
    multi = any(len(rows.labels[i]) > 1 for i in labelled)  # type: ignore[arg-type]
    label_ids = [[index[n] for n in rows.labels[i]] for i in labelled]  # type: ignore[union-attr]
    large = len(labelled) > LARGE
    folds = LARGE_FOLDS if large else FOLDS
    features = _features(large).fit_transform([rows.texts[i] for i in labelled])
    if multi:
        targets = np.zeros((len(labelled), len(names)), dtype=int)
        for r, ids in enumerate(label_ids):
            targets[r, ids] = 1
    else:
        targets = np.array([ids[0] for ids in label_ids])
    tick(len(rows) - len(labelled))
    probs = out_of_fold(features, targets, len(names), seed, tick, folds=folds)
    given = label_ids if multi else targets
    issues = find_label_issues(
        given, probs, multi_label=multi, return_indices_ranked_by="self_confidence"
    )  # fmt: skip
    quality = get_label_quality_scores(given, probs) if not multi else None
    flagged = []
    for r in issues:
        i = labelled[int(r)]
        top = np.flatnonzero(probs[r] >= 0.5) if multi else [int(np.argmax(probs[r]))]
        suggested = [names[c] for c in top]
        flagged.append({
            **rows.where(i), "index": i, "label": list(rows.labels[i] or ()), "suggested": suggested,
            "confidence": float(max(probs[r])) if not multi else float(probs[r][probs[r] >= 0.5].max(initial=0)),
            "label_quality": float(quality[r]) if quality is not None else None,
        })  # fmt: skip
    accuracy = float((probs.argmax(axis=1) == targets).mean()) if not multi else None
    findings = []
    if flagged:
        findings.append(f"{len(flagged)} row(s) ({len(flagged) / len(labelled):.1%}) are likely mislabelled: a "
                        "model that never saw them is confident of another label. Review them, most likely "
                        "first (report.json has them all).")  # fmt: skip
    return {
        "findings": findings,
        "checked": True,
        "model": f"TF-IDF ({'word' if large else 'word + character'} n-grams) + logistic regression (SGD)",
        "folds": folds,
        "out_of_fold_accuracy": accuracy,
        "flagged": len(flagged),
        "examples": [{k: v for k, v in f.items() if k != "index"} for f in flagged[:EXAMPLES]],
        "_all": flagged,
        "_fix_rows": {"drop-label-errors": sorted(f["index"] for f in flagged)},
    }


def _token_features(tokens: list[str], i: int) -> dict[str, Any]:
    word = tokens[i]
    features = {
        "w=" + word.lower(): 1, "suffix3=" + word[-3:].lower(): 1, "prefix3=" + word[:3].lower(): 1,
        "shape=" + "".join("X" if c.isupper() else "x" if c.isalpha() else "d" if c.isdigit() else c
                           for c in word[:6]): 1,
        "title": word.istitle(), "upper": word.isupper(), "digit": word.isdigit(), "first": i == 0,
    }  # fmt: skip
    for offset in (-2, -1, 1, 2):
        j = i + offset
        features[f"w{offset}=" + (tokens[j].lower() if 0 <= j < len(tokens) else "<pad>")] = 1
    return features


def token_classification(
    tokens: list[list[str]], tags: list[list[str]], where: Callable[[int], dict[str, Any]], seed: int = 42,
    tick: Tick = lambda _n: None,
) -> dict[str, Any]:  # fmt: skip
    """Sentences with likely token-label errors: out-of-fold tag probabilities from a linear model over word,
    affix, shape and neighbour features, then cleanlab's token-classification filter."""
    from cleanlab.token_classification.filter import find_label_issues
    from sklearn.feature_extraction import DictVectorizer

    names = sorted({t for sentence in tags for t in sentence})
    if len(names) < 2 or len(tokens) < 2 * FOLDS:
        tick(len(tokens))
        return {"findings": [], "checked": False, "why": "needs at least two tags and ten sentences",
                "_fix_rows": {"drop-label-errors": []}}  # fmt: skip
    index = {name: i for i, name in enumerate(names)}
    sentence_of = np.array([s for s, sentence in enumerate(tokens) for _ in sentence])
    features = DictVectorizer().fit_transform(
        _token_features(sentence, i) for sentence in tokens for i in range(len(sentence))
    )  # fmt: skip
    targets = np.array([index[t] for sentence in tags for t in sentence])
    probs = np.zeros((len(targets), len(names)))
    from sklearn.model_selection import GroupKFold

    for train, held in GroupKFold(FOLDS).split(features, targets, groups=sentence_of):  # whole sentences held out
        model = _classifier(seed).fit(features[train], targets[train])
        probs[np.ix_(held, model.classes_)] = model.predict_proba(features[held])
    tick(len(tokens))
    starts = np.cumsum([0] + [len(s) for s in tokens])
    per_sentence_labels = [targets[starts[s] : starts[s + 1]] for s in range(len(tokens))]
    per_sentence_probs = [probs[starts[s] : starts[s + 1]] for s in range(len(tokens))]
    issues = find_label_issues(per_sentence_labels, per_sentence_probs)
    by_sentence: dict[int, list[int]] = {}
    for s, t in issues:
        by_sentence.setdefault(int(s), []).append(int(t))
    flagged = []
    for s, positions in by_sentence.items():
        flagged.append({
            **where(s), "text": " ".join(tokens[s])[:300],
            "tokens": [{"token": tokens[s][t], "position": t, "tag": tags[s][t],
                        "suggested": names[int(np.argmax(per_sentence_probs[s][t]))]} for t in positions],
        })  # fmt: skip
    findings = []
    if flagged:
        findings.append(f"{len(flagged)} sentence(s) hold {len(issues)} token(s) with a likely wrong tag. Review "
                        "them (report.json lists them all).")  # fmt: skip
    return {
        "findings": findings, "checked": True, "model": "token features + logistic regression (SGD)",
        "flagged": len(flagged), "tokens_flagged": len(issues), "examples": flagged[:EXAMPLES], "_all": flagged,
        "_fix_rows": {"drop-label-errors": sorted(by_sentence)},
    }  # fmt: skip
