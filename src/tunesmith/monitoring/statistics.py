"""What monitoring computes, in one place: `tunesmith monitor`'s report and the server's live gauges both call it.

Numpy and scipy only (the server imports it): confidence calibration by histogram binning, estimated accuracy
from calibrated confidences (confidence-based performance estimation, NannyML's CBPE), the label mix compared
by chi-squared, distributions compared by the two-sample Kolmogorov-Smirnov test, and text descriptors.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LOW_CONFIDENCE = 0.5  # an answer below this confidence counts as unsure
BINS = 10
P_VALUE = 0.01  # a test below this says "drift": a week of hourly checks then raises ~2 false alarms, not ~8
_WORD = re.compile(r"\w+", re.UNICODE)
_LATIN = re.compile(r"[A-Za-z]")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


@dataclass
class Calibration:
    """Histogram binning (Zadrozny & Elkan): the share of right answers among reference answers of each
    confidence bin, smoothed toward the bin's mean confidence where a bin holds few answers."""

    edges: list[float]
    accuracy: list[float]
    error_before: float  # expected calibration error of the raw confidences on the reference
    error_after: float  # the same after calibration (in-sample: a lower bound)

    def apply(self, confidence: Sequence[float] | np.ndarray) -> np.ndarray:
        values = np.asarray(confidence, dtype=np.float64)
        index = np.clip(np.searchsorted(self.edges, values, side="right") - 1, 0, len(self.accuracy) - 1)
        return np.asarray(self.accuracy)[index]

    def to_dict(self) -> dict[str, Any]:
        return {"edges": self.edges, "accuracy": self.accuracy, "error_before": self.error_before,
                "error_after": self.error_after}  # fmt: skip


def calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: |accuracy - confidence| per equal-width bin, weighted by the bin's share."""
    if len(confidence) == 0:
        return float("nan")
    index = np.clip((confidence * bins).astype(int), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = index == b
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def calibrate(confidence: Sequence[float], correct: Sequence[bool], bins: int | None = None,
              prior: float = 5.0) -> Calibration:  # fmt: skip
    """Fit the binning on reference answers whose correctness is known (the validation split). Bins hold ~100
    answers each (5 to 20 bins): coarse bins bias the estimate when traffic moves within a bin."""
    conf = np.asarray(confidence, dtype=np.float64)
    bins = bins or int(np.clip(len(conf) // 100, 5, 20))
    right = np.asarray(correct, dtype=np.float64)
    # Equal-mass bins: a confident model puts most answers above 0.9, where equal-width bins would lump them.
    inner = np.unique(np.quantile(conf, np.linspace(0, 1, bins + 1))[1:-1]) if len(conf) else np.array([])
    edges = np.concatenate([[0.0], inner[(inner > 0) & (inner < 1)], [1.0 + 1e-9]])
    index = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, len(edges) - 2)
    accuracy = []
    for b in range(len(edges) - 1):
        inside = index == b
        n = int(inside.sum())
        mean_conf = float(conf[inside].mean()) if n else float((edges[b] + min(edges[b + 1], 1.0)) / 2)
        # Beta-style shrinkage: a bin of 3 answers is not trusted to say 0 % or 100 %.
        accuracy.append(float((right[inside].sum() + prior * mean_conf) / (n + prior)))
    fitted = Calibration([float(e) for e in edges], accuracy, calibration_error(conf, right), 0.0)
    fitted.error_after = calibration_error(np.clip(fitted.apply(conf), 0, 1), right)
    return fitted


def estimated_accuracy(calibration: Calibration | None, confidence: Sequence[float]) -> float | None:
    """CBPE: the expected share of right answers is the mean calibrated confidence."""
    if calibration is None or not len(confidence):
        return None
    return float(calibration.apply(confidence).mean())


def label_drift(reference: Counter[str], current: Counter[str]) -> dict[str, Any]:
    """Chi-squared test of the current label counts against the reference mix (labels unseen in the
    reference pooled into one cell), plus the total variation distance, the effect size people read."""
    from scipy.stats import chi2_contingency

    labels = sorted(set(reference) | set(current))
    n_ref, n_cur = sum(reference.values()), sum(current.values())
    result: dict[str, Any] = {"reference": dict(reference), "current": dict(current)}
    if n_ref == 0 or n_cur == 0 or len(labels) < 2:
        return {**result, "p_value": None, "distance": None, "drift": False}
    distance = 0.5 * sum(abs(reference[k] / n_ref - current[k] / n_cur) for k in labels)
    table = np.array([[reference[k] for k in labels], [current[k] for k in labels]], dtype=np.float64)
    table = table[:, table.sum(axis=0) > 0]
    p = float(chi2_contingency(table + 0.5)[1]) if table.shape[1] > 1 else 1.0  # +0.5: no empty cells
    return {**result, "p_value": p, "distance": float(distance), "drift": p < P_VALUE}


def distribution_drift(reference: Sequence[float], current: Sequence[float]) -> dict[str, Any]:
    """Two-sample Kolmogorov-Smirnov test between two samples of one number (confidence, length, ...)."""
    from scipy.stats import ks_2samp

    ref, cur = np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64)
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    if len(ref) < 5 or len(cur) < 5:
        return {"p_value": None, "statistic": None, "drift": False, "reference_mean": None, "current_mean": None}
    test = ks_2samp(ref, cur)
    return {"p_value": float(test.pvalue), "statistic": float(test.statistic), "drift": bool(test.pvalue < P_VALUE),
            "reference_mean": float(ref.mean()), "current_mean": float(cur.mean())}  # fmt: skip


def descriptors(text: str, vocabulary: set[str] | None = None) -> dict[str, float]:
    """Per-text figures compared between reference and traffic: length, the share of words the training data
    never had, the script mix (a cheap language signal that needs no model) and personal data."""
    from tunesmith import pii

    words = _WORD.findall(text.lower())
    letters = len(_LATIN.findall(text)) + len(_CJK.findall(text))
    out = {"chars": float(len(text)), "words": float(len(words)),
           "non_latin_share": float(len(_CJK.findall(text)) / letters) if letters else 0.0,
           "personal_data": float(bool(pii.find(text)))}  # fmt: skip
    if vocabulary is not None:
        out["unknown_word_share"] = float(sum(w not in vocabulary for w in words) / len(words)) if words else 0.0
    return out


@dataclass
class Profile:
    """The reference a model's traffic is compared with: its own answers on a stored split."""

    labels: Counter[str] = field(default_factory=Counter)
    confidence: list[float] = field(default_factory=list)
    calibration: Calibration | None = None
    accuracy: float | None = None  # realised on the reference split
    figures: dict[str, list[float]] = field(default_factory=dict)  # task figures: entity counts, answer lengths

    @property
    def low_share(self) -> float | None:
        return float(np.mean(np.asarray(self.confidence) < LOW_CONFIDENCE)) if self.confidence else None


def outputs_profile(outputs: Sequence[dict[str, Any]], correct: Sequence[bool] | None = None) -> Profile:
    """A profile of logged outputs (the task's `log_outputs` items): label counts, confidences, task figures,
    and, where correctness is known, the calibration."""
    profile = Profile()
    for out in outputs:
        label = out.get("label")
        for name in label if isinstance(label, list) else [label] if label is not None else []:
            profile.labels[str(name)] += 1
        for name in out.get("labels", []):
            profile.labels[str(name)] += 1
        if isinstance(out.get("confidence"), int | float):
            profile.confidence.append(float(out["confidence"]))
        for key, value in out.get("figures", {}).items():
            profile.figures.setdefault(key, []).append(float(value))
    if correct is not None and len(correct):
        profile.accuracy = float(np.mean(correct))
        confident = [float(o["confidence"]) for o in outputs if isinstance(o.get("confidence"), int | float)]
        if len(confident) == len(correct) and len(correct) >= 20:
            profile.calibration = calibrate(confident, correct)
    return profile


def share(values: Sequence[bool]) -> float | None:
    return float(np.mean(values)) if len(values) else None

