"""The classical baseline every run is compared against: TF-IDF features + logistic regression.

`--method baseline` registers it as a model like any other, predicted, evaluated and served through the same
API: the fastest model a CPU user can have, and on some data (another language than the base model's, very
little data) the most accurate. It is saved without pickle: the vocabularies and vectorizer settings as
JSON, the IDF weights and the linear layer as safetensors (`baseline/`), and rebuilt from them on load.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas loads only to train, never in a server
    from tunesmith.data import ClassificationData

ARCHITECTURE = "tfidf-logistic-regression"
FOLDER = "baseline"
PARTS = ("word", "char")


class TfidfModel:
    """The fitted baseline: TF-IDF features (word 1-2 grams + character 2-5 grams) and a linear layer.

    `columns` are the classes the layer scores (a multi-label class absent from training has none: its
    probability is 0)."""

    def __init__(self, vectorizers: dict[str, Any], coef: np.ndarray, intercept: np.ndarray, columns: np.ndarray,
                 n_classes: int, multi_label: bool) -> None:  # fmt: skip
        self.vectorizers = vectorizers
        self.coef = coef
        self.intercept = intercept
        self.columns = columns
        self.n_classes = n_classes
        self.multi_label = multi_label

    def features(self, texts: Sequence[str]) -> Any:
        from scipy.sparse import hstack

        return hstack([self.vectorizers[part].transform(texts) for part in PARTS]).tocsr()

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        scores = np.asarray(self.features(texts) @ self.coef.T) + self.intercept
        probs = np.zeros((len(texts), self.n_classes))
        if self.multi_label:
            probs[:, self.columns] = 1.0 / (1.0 + np.exp(-scores))
        elif scores.shape[1] == 1:  # scikit-learn's binary layer scores the second class against the first
            probs[:, self.columns[1]] = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            probs[:, self.columns[0]] = 1.0 - probs[:, self.columns[1]]
        else:
            shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
            probs[:, self.columns] = shifted / shifted.sum(axis=1, keepdims=True)
        return probs

    def save(self, folder: Path) -> None:
        from safetensors.numpy import save_file

        folder.mkdir(parents=True, exist_ok=True)
        described = {}
        # C order: safetensors writes an array's buffer as it lies, and scikit-learn's coef_ can be Fortran-ordered.
        tensors = {"coef": np.ascontiguousarray(self.coef, dtype=np.float32),
                   "intercept": np.ascontiguousarray(self.intercept, dtype=np.float32),
                   "columns": np.ascontiguousarray(self.columns, dtype=np.int64)}  # fmt: skip
        for part in PARTS:
            vectorizer = self.vectorizers[part]
            vocabulary = {str(term): int(i) for term, i in vectorizer.vocabulary_.items()}
            described[part] = {"settings": _settings(vectorizer), "vocabulary": vocabulary}
            tensors[f"idf_{part}"] = np.ascontiguousarray(vectorizer.idf_, dtype=np.float64)
        (folder / "vectorizers.json").write_text(json.dumps({"n_classes": self.n_classes, "multi_label":
                                                 self.multi_label, **described}, ensure_ascii=False), encoding="utf-8")  # fmt: skip
        save_file(tensors, str(folder / "weights.safetensors"))

    @classmethod
    def load(cls, folder: Path) -> TfidfModel:
        from safetensors.numpy import load_file
        from sklearn.feature_extraction.text import TfidfVectorizer

        described = json.loads((folder / "vectorizers.json").read_text(encoding="utf-8"))
        tensors = load_file(str(folder / "weights.safetensors"))
        vectorizers = {}
        for part in PARTS:
            settings = described[part]["settings"]
            settings["ngram_range"] = tuple(settings["ngram_range"])
            vectorizer = TfidfVectorizer(**settings, vocabulary=described[part]["vocabulary"])
            vectorizer.idf_ = tensors[f"idf_{part}"]
            vectorizers[part] = vectorizer
        return cls(vectorizers, tensors["coef"], tensors["intercept"], tensors["columns"], described["n_classes"],
                   described["multi_label"])  # fmt: skip


def _settings(vectorizer: Any) -> dict[str, Any]:
    keys = ("analyzer", "ngram_range", "lowercase", "sublinear_tf", "norm", "use_idf", "smooth_idf")
    return {key: getattr(vectorizer, key) for key in keys}


@dataclass
class BaselineResult:
    probabilities: np.ndarray  # test-split class probabilities, one row per test text
    validation_probabilities: np.ndarray  # the same for the validation split (to tune thresholds on)
    seconds: float
    model: TfidfModel


def tfidf_features(max_features: int = 200_000) -> Any:
    """Word 1-2 grams + character 2-5 grams, TF-IDF weighted: the classical features for short texts."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion([
        ("word", TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True, max_features=max_features)),
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, max_features=max_features)),
    ])  # fmt: skip


def _one_vs_rest(features: Any, column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One label's layer (coef [1, features], intercept [1]). A label on every training row has no negative to
    fit against (scikit-learn refuses one class): a constant layer, always on, as the few-shot head has."""
    from sklearn.linear_model import LogisticRegression

    if column.all():
        return np.zeros((1, features.shape[1])), np.array([10.0])
    fit = LogisticRegression(C=10, max_iter=1000).fit(features, column)
    return fit.coef_, fit.intercept_


def train_baseline(data: ClassificationData, seed: int = 42) -> BaselineResult:
    """Fit TF-IDF (word 1-2 grams + char 2-5 grams) + logistic regression on train, score the test split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import MultiLabelBinarizer

    start = time.perf_counter()
    union = tfidf_features()
    x_train = union.fit_transform(data.train.texts)
    vectorizers = dict(union.transformer_list)
    n_classes = len(data.label_names)
    if data.multi_label:
        binarizer = MultiLabelBinarizer(classes=list(range(n_classes)))
        y = binarizer.fit_transform(data.train.labels)
        columns: np.ndarray = np.flatnonzero(y.sum(axis=0) > 0)
        layers = [_one_vs_rest(x_train, y[:, j]) for j in columns]
        coef = np.vstack([weights for weights, _ in layers])
        intercept = np.concatenate([bias for _, bias in layers])
    else:
        clf = LogisticRegression(C=10, max_iter=2000, random_state=seed)
        clf.fit(x_train, data.train.labels)
        columns, coef, intercept = np.asarray(clf.classes_), clf.coef_, clf.intercept_
    model = TfidfModel(vectorizers, coef, intercept, columns, n_classes, data.multi_label)
    return BaselineResult(model.probabilities(data.test.texts), model.probabilities(data.validation.texts),
                          time.perf_counter() - start, model)  # fmt: skip
