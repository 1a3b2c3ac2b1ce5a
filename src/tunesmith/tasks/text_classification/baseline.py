"""The classical baseline every run is compared against: TF-IDF features + logistic regression."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunesmith.data import ClassificationData


@dataclass
class BaselineResult:
    probabilities: np.ndarray  # test-split class probabilities, one row per test text
    validation_probabilities: np.ndarray  # the same for the validation split (to tune thresholds on)
    seconds: float


def tfidf_features(max_features: int = 200_000) -> Any:
    """Word 1-2 grams + character 2-5 grams, TF-IDF weighted: the classical features for short texts."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion([
        ("word", TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True, max_features=max_features)),
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, max_features=max_features)),
    ])  # fmt: skip


def train_baseline(data: ClassificationData, seed: int = 42) -> BaselineResult:
    """Fit TF-IDF (word 1-2 grams + char 2-5 grams) + logistic regression on train, score the test split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import MultiLabelBinarizer

    start = time.perf_counter()
    features = tfidf_features()
    x_train = features.fit_transform(data.train.texts)
    x_val = features.transform(data.validation.texts)
    x_test = features.transform(data.test.texts)
    n_classes = len(data.label_names)
    if data.multi_label:
        binarizer = MultiLabelBinarizer(classes=list(range(n_classes)))
        y = binarizer.fit_transform(data.train.labels)
        present = y.sum(axis=0) > 0
        clf = OneVsRestClassifier(LogisticRegression(C=10, max_iter=1000), n_jobs=1)
        clf.fit(x_train, y[:, present])
        columns: np.ndarray = np.flatnonzero(present)
    else:
        clf = LogisticRegression(C=10, max_iter=2000, random_state=seed)
        clf.fit(x_train, data.train.labels)
        columns = clf.classes_

    def scores(x: object) -> np.ndarray:
        probs = np.zeros((x.shape[0], n_classes))  # type: ignore[attr-defined]
        probs[:, columns] = clf.predict_proba(x)
        return probs

    return BaselineResult(scores(x_test), scores(x_val), time.perf_counter() - start)
