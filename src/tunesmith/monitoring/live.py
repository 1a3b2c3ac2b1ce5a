"""Live gauges: the monitor's statistics over a sliding window of each served model's answers, on `/metrics`.

Each gauge is computed when Prometheus scrapes (`set_function`), not per request: a request only appends to a
bounded deque.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PromCounter

from tunesmith.monitoring.statistics import LOW_CONFIDENCE, Profile, estimated_accuracy, label_drift

WINDOW_S = 900.0  # the gauges describe the last 15 minutes...
WINDOW_ANSWERS = 2000  # ...or the last 2,000 answers, whichever is fewer


@dataclass
class _Window:
    answers: deque[tuple[float, str | None, float | None]] = field(default_factory=lambda: deque(maxlen=WINDOW_ANSWERS))
    feedback: deque[tuple[float, bool]] = field(default_factory=lambda: deque(maxlen=WINDOW_ANSWERS))
    profile: Profile | None = None


class LiveMonitor:
    """Sliding windows per model and the gauges that read them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.windows: dict[str, _Window] = {}
        self.lock = threading.Lock()
        r = registry
        self.count = Gauge("tunesmith_window_answers", "Answers in the monitoring window (15 min).", ["model"], registry=r)
        self.low = Gauge("tunesmith_low_confidence_share", f"Share of answers in the window below {LOW_CONFIDENCE} "
                         "confidence.", ["model"], registry=r)  # fmt: skip
        self.mean = Gauge("tunesmith_mean_confidence", "Mean confidence of the window's answers.", ["model"], registry=r)
        self.reference_low = Gauge("tunesmith_reference_low_confidence_share", "The same share on the model's "
                                   "validation split.", ["model"], registry=r)  # fmt: skip
        self.estimated = Gauge("tunesmith_estimated_accuracy", "Accuracy estimated from calibrated confidences "
                               "(CBPE) over the window.", ["model"], registry=r)  # fmt: skip
        self.reference_accuracy = Gauge("tunesmith_reference_accuracy", "Accuracy on the model's validation split.",
                                        ["model"], registry=r)  # fmt: skip
        self.feedback_accuracy = Gauge("tunesmith_feedback_accuracy", "Share of right answers among the window's "
                                       "feedback.", ["model"], registry=r)  # fmt: skip
        self.drift = Gauge("tunesmith_label_drift_score", "Total variation distance between the window's label mix and "
                           "the validation split's (0 same, 1 disjoint).", ["model"], registry=r)  # fmt: skip
        self.feedback_total = PromCounter("tunesmith_feedback", "Feedback received.", ["model", "correct"], registry=r)

    def watch(self, model: str) -> None:
        """Create the model's window and its gauges (NaN until there is something to say)."""
        with self.lock:
            if model in self.windows:
                return
            self.windows[model] = _Window()
        for gauge, read in ((self.count, self._count), (self.low, self._low), (self.mean, self._mean),
                            (self.reference_low, self._reference_low), (self.estimated, self._estimated),
                            (self.reference_accuracy, self._reference_accuracy),
                            (self.feedback_accuracy, self._feedback_accuracy), (self.drift, self._drift)):  # fmt: skip
            gauge.labels(model).set_function(partial(_read, read, model))

    def set_profile(self, model: str, profile: Profile | None) -> None:
        self.windows[model].profile = profile

    def observe(self, model: str, outputs: list[dict[str, Any]]) -> None:
        window = self.windows.get(model)
        if window is None:
            return
        now = time.time()
        for out in outputs:
            label = out.get("label")
            label = ",".join(label) if isinstance(label, list) else label
            confidence = out.get("confidence")
            window.answers.append((now, label, float(confidence) if confidence is not None else None))

    def observe_feedback(self, model: str, correct: bool | None) -> None:
        self.feedback_total.labels(model, "unknown" if correct is None else str(correct).lower()).inc()
        window = self.windows.get(model)
        if window is not None and correct is not None:
            window.feedback.append((time.time(), correct))

    def _recent(self, model: str) -> list[tuple[float, str | None, float | None]]:
        since = time.time() - WINDOW_S
        return [a for a in list(self.windows[model].answers) if a[0] >= since]

    def _confidences(self, model: str) -> list[float]:
        return [c for _, _, c in self._recent(model) if c is not None]

    def _count(self, model: str) -> float:
        return float(len(self._recent(model)))

    def _low(self, model: str) -> float | None:
        values = self._confidences(model)
        return sum(c < LOW_CONFIDENCE for c in values) / len(values) if values else None

    def _mean(self, model: str) -> float | None:
        values = self._confidences(model)
        return sum(values) / len(values) if values else None

    def _reference_low(self, model: str) -> float | None:
        profile = self.windows[model].profile
        return profile.low_share if profile else None

    def _estimated(self, model: str) -> float | None:
        profile = self.windows[model].profile
        return estimated_accuracy(profile.calibration if profile else None, self._confidences(model))

    def _reference_accuracy(self, model: str) -> float | None:
        profile = self.windows[model].profile
        return profile.accuracy if profile else None

    def _feedback_accuracy(self, model: str) -> float | None:
        since = time.time() - WINDOW_S
        given = [ok for ts, ok in list(self.windows[model].feedback) if ts >= since]
        return sum(given) / len(given) if given else None

    def _drift(self, model: str) -> float | None:
        profile = self.windows[model].profile
        labels = Counter(name for _, label, _ in self._recent(model) if label for name in label.split(","))
        if profile is None or not profile.labels or not labels:
            return None
        return label_drift(profile.labels, labels)["distance"]


def _read(read: Callable[[str], float | None], model: str) -> float:
    value = read(model)
    return math.nan if value is None else float(value)
