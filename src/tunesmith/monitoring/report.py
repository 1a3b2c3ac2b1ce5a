"""`tunesmith monitor`: recent traffic against a reference the artifact keeps, as JSON and one HTML page.

- Input drift: a domain classifier (logistic regression, 5-fold) tells reference texts from recent ones on
  sentence embeddings of the embedded MiniLM encoder; its ROC AUC is compared with the 99th percentile of the
  AUCs the same scores reach under shuffled domain labels (the random classifier's spread at these sample
  sizes), as Evidently's text drift does. Text descriptors beside it: length, unknown-word share, script mix,
  personal data (two-sample KS tests).
- Prediction drift: the label mix (chi-squared), confidences (KS), the share of unsure answers, and the task's
  own figures (entity counts, no-answer share, answer and completion lengths).
- Estimated accuracy without labels: the model's confidences calibrated on the reference split (histogram
  binning), averaged over the traffic (CBPE), per time window; realised accuracy from feedback beside it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.errors import DataError
from tunesmith.monitoring.feedback import read_feedback
from tunesmith.monitoring.predictions import log_folder, read_predictions
from tunesmith.monitoring.statistics import (
    LOW_CONFIDENCE,
    P_VALUE,
    descriptors,
    distribution_drift,
    estimated_accuracy,
    label_drift,
    outputs_profile,
    share,
)

SAMPLE = 1000  # texts a side the domain classifier sees at most (seeded sample)
PERMUTATIONS = 200
WINDOWS = 8  # time windows the estimated accuracy is shown over


@dataclass
class MonitorResult:
    report: dict[str, Any]
    html: Path
    json: Path


def text_of(item: Any) -> str:
    """The text a drift check reads of an input: the text, the question, or the last user message."""
    if isinstance(item, str):
        return item
    if isinstance(item, tuple):
        return str(item[0])
    if isinstance(item, dict):
        return str(item.get("question", ""))
    if isinstance(item, list) and item:
        users = [m.get("content", "") for m in item if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1] if users else item[-1].get("content", ""))
    return ""


def _logged_item(raw: str | None) -> Any:
    if raw is None:
        return None
    if raw[:1] in "{[":
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def domain_classifier(reference: list[str], current: list[str], seed: int = 0) -> dict[str, Any]:
    """How well a classifier tells recent texts from reference ones (ROC AUC), and whether that is beyond
    what chance reaches at these sample sizes."""
    rng = np.random.default_rng(seed)
    n = min(len(reference), len(current), SAMPLE)
    if n < 20:
        return {"roc_auc": None, "threshold": None, "drift": False, "n": n,
                "note": "fewer than 20 texts on a side: not measured"}  # fmt: skip
    ref = [reference[i] for i in rng.choice(len(reference), n, replace=False)]
    cur = [current[i] for i in rng.choice(len(current), n, replace=False)]
    features = embed(ref + cur)
    return domain_auc(features[:n], features[n:], seed)


def embed(texts: list[str]) -> np.ndarray:
    """Sentence embeddings of the embedded encoder that reads `texts` (offline: the English MiniLM, or the
    multilingual e5 for text mostly not in Latin script, which MiniLM sees as [UNK]s), L2-normalised."""
    from sentence_transformers import SentenceTransformer

    from tunesmith.languages import encoder_for
    from tunesmith.models import resolve_model

    encoder = SentenceTransformer(resolve_model(encoder_for(texts)), device="cpu")
    return np.asarray(encoder.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False))


def domain_auc(reference: np.ndarray, current: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """The domain classifier on embeddings already computed: out-of-fold ROC AUC (5 folds, logistic
    regression) and the 99th percentile of the AUCs the same scores reach with the domain labels shuffled."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rng = np.random.default_rng(seed)
    features = np.concatenate([reference, current])
    domain = np.array([0] * len(reference) + [1] * len(current))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    scores = cross_val_predict(LogisticRegression(max_iter=1000, C=1.0), features, domain, cv=folds,
                               method="predict_proba")[:, 1]  # fmt: skip
    auc = float(roc_auc_score(domain, scores))
    null = [roc_auc_score(rng.permutation(domain), scores) for _ in range(PERMUTATIONS)]
    threshold = float(np.quantile(null, 1 - P_VALUE))
    return {"roc_auc": auc, "threshold": threshold, "drift": auc > threshold, "n": int(min(len(reference), len(current)))}


def _windows(rows: list[dict[str, Any]], calibration: Any) -> list[dict[str, Any]]:
    if not rows:
        return []
    chunks = np.array_split(np.arange(len(rows)), min(WINDOWS, max(1, len(rows) // 25)))
    out = []
    for chunk in chunks:
        part = [rows[i] for i in chunk]
        confidences = [float(r["confidence"]) for r in part if r["confidence"] is not None]
        out.append({"start": part[0]["ts"], "end": part[-1]["ts"], "n": len(part),
                    "estimated_accuracy": estimated_accuracy(calibration, confidences),
                    "low_confidence_share": share([c < LOW_CONFIDENCE for c in confidences])})  # fmt: skip
    return out


def monitor(registry: Any, ref: str, *, since: str | None = "24h", reference: str = "validation",
            output: Path | None = None, seed: int = 0) -> MonitorResult:  # fmt: skip
    """Compare the traffic `ref`'s model name served within `since` with the reference; write the report."""
    from tunesmith.tasks.catalog import TASKS

    version = registry.resolve(ref)
    task = TASKS[version.task]
    rows = list(read_predictions(registry.home, version.name, since))
    if not rows:
        raise DataError(f"No predictions of {version.name!r} are logged{f' in the last {since}' if since else ''}. "
                        f"Serve it (`tunesmith serve {version.name}`; the log is on by default) or widen --since.")  # fmt: skip
    predictor = task.load(version.path, "auto")
    if reference in ("validation", "test"):
        items, answers = task.reference(version.path, reference)
    else:
        items, answers = _reference_file(Path(reference), task), None
    if not items:
        raise DataError(f"{version.ref} keeps no {reference} split to compare with; pass --reference FILE (a file of "
                        "texts like the ones it was trained on).")  # fmt: skip
    outputs: list[dict[str, Any]] = []
    for start in range(0, len(items), 32):
        outputs += task.log_outputs(predictor, task.serve_compute(predictor, items[start : start + 32], 32))
    correct = [task.is_correct(o, a) for o, a in zip(outputs, answers, strict=True)] if answers else None
    base = outputs_profile(outputs, correct)
    now = outputs_profile([r["output"] for r in rows])

    ref_texts = [text_of(i) for i in items]
    cur_items = [_logged_item(r["input"]) for r in rows]
    cur_texts = [text_of(i) for i in cur_items if i is not None]
    vocabulary = {w for t in ref_texts for w in t.lower().split()}
    ref_desc = [descriptors(t, vocabulary) for t in ref_texts]
    cur_desc = [descriptors(t, vocabulary) for t in cur_texts]
    text_checks = {key: distribution_drift([d[key] for d in ref_desc], [d[key] for d in cur_desc])
                   for key in (ref_desc[0] if ref_desc else {})}  # fmt: skip
    inputs: dict[str, Any] = {"logged_texts": len(cur_texts), "descriptors": text_checks}
    if len(cur_texts) < len(rows):
        inputs["note"] = f"{len(rows) - len(cur_texts)} predictions were logged as hashes only: their texts are not compared."
    inputs["domain_classifier"] = domain_classifier(ref_texts, cur_texts, seed) if cur_texts else {
        "roc_auc": None, "drift": False, "note": "no logged texts"}  # fmt: skip

    feedback = list(read_feedback(registry.home, version.name, since))
    graded = [f["correct"] for f in feedback if f["correct"] is not None]
    cur_conf = now.confidence
    report = {
        "model": version.name, "ref": version.ref, "task": version.task, "since": since, "reference": reference,
        "created_at": time.time(), "predictions": len(rows),
        "versions_seen": dict(Counter(str(r["version"]) for r in rows)),
        "period": {"start": rows[0]["ts"], "end": rows[-1]["ts"]},
        "inputs": inputs,
        "predictions_drift": {
            "labels": label_drift(base.labels, now.labels),
            "confidence": distribution_drift(base.confidence, cur_conf),
            "low_confidence_share": {"reference": base.low_share, "current": now.low_share},
            "figures": {k: distribution_drift(base.figures.get(k, []), v) for k, v in now.figures.items()},
        },
        "accuracy": {
            "reference": base.accuracy,
            "estimated": estimated_accuracy(base.calibration, cur_conf),
            "calibration": base.calibration.to_dict() if base.calibration else None,
            "realised": share(graded), "feedback": len(feedback), "graded_feedback": len(graded),
            "windows": _windows(rows, base.calibration),
        },
    }  # fmt: skip
    report["alerts"] = _alerts(report)
    folder = output or log_folder(registry.home, version.name) / "reports" / time.strftime("monitor-%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "monitor.json").write_text(json.dumps(report, indent=2, default=float), encoding="utf-8")
    (folder / "monitor.html").write_text(_html(report, base, now), encoding="utf-8")
    return MonitorResult(report, folder / "monitor.html", folder / "monitor.json")


def _reference_file(path: Path, task: Any) -> list[Any]:
    if task.request != "texts":
        raise DataError(f"--reference FILE takes texts; a {task.name} model compares with its validation or test "
                        "split (--reference validation).")  # fmt: skip
    from tunesmith.data import read_text_column

    frame, column = read_text_column(path)
    return [str(t) for t in frame[column].tolist()]


def _alerts(report: dict[str, Any]) -> list[str]:
    """The findings a person should read first, one line each."""
    lines = []
    domain = report["inputs"]["domain_classifier"]
    if domain.get("drift"):
        lines.append(f"Input drift: a classifier tells recent texts from the reference with ROC AUC "
                     f"{domain['roc_auc']:.3f} (chance reaches {domain['threshold']:.3f}).")  # fmt: skip
    for key, test in report["inputs"]["descriptors"].items():
        if test.get("drift"):
            lines.append(f"Text {key.replace('_', ' ')} changed: mean {test['reference_mean']:.3g} -> "
                         f"{test['current_mean']:.3g} (KS p={test['p_value']:.1e}).")  # fmt: skip
    labels = report["predictions_drift"]["labels"]
    if labels.get("drift"):
        lines.append(f"Label mix changed: total variation {labels['distance']:.3f} (chi-squared p={labels['p_value']:.1e}).")
    confidence = report["predictions_drift"]["confidence"]
    if confidence.get("drift"):
        lines.append(f"Confidence changed: mean {confidence['reference_mean']:.3f} -> {confidence['current_mean']:.3f}.")
    accuracy = report["accuracy"]
    if accuracy["estimated"] is not None and accuracy["reference"] is not None and \
            accuracy["estimated"] < accuracy["reference"] - 0.05:
        lines.append(f"Estimated accuracy {accuracy['estimated']:.3f}, below the reference's "
                     f"{accuracy['reference']:.3f}: collect feedback and retrain.")  # fmt: skip
    return lines


def _figure(draw: Any) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 3.2))
    draw(axes)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _html(report: dict[str, Any], base: Any, now: Any) -> str:
    e = html.escape
    parts = [f"<h1>Monitoring: {e(report['ref'])} ({e(report['task'])})</h1>",
             f"<p>{report['predictions']} predictions since {e(str(report['since']))}, compared with the "
             f"{e(report['reference'])} split.</p>"]  # fmt: skip
    alerts = report["alerts"]
    parts.append("<h2>Findings</h2><ul>" + "".join(f"<li>{e(a)}</li>" for a in alerts) + "</ul>" if alerts else
                 "<h2>Findings</h2><p>No drift found at p &lt; 0.01.</p>")  # fmt: skip
    accuracy = report["accuracy"]
    rows = [("reference (validation) accuracy", accuracy["reference"]), ("estimated accuracy (CBPE)", accuracy["estimated"]),
            ("realised accuracy (feedback)", accuracy["realised"]),
            ("calibration error before / after", None if not accuracy["calibration"] else
             f"{accuracy['calibration']['error_before']:.3f} / {accuracy['calibration']['error_after']:.3f}")]  # fmt: skip
    parts.append("<h2>Accuracy</h2><table>" + "".join(
        f"<tr><td>{e(k)}</td><td>{'-' if v is None else v if isinstance(v, str) else f'{v:.3f}'}</td></tr>"
        for k, v in rows) + "</table>")  # fmt: skip
    windows = [w for w in accuracy["windows"] if w["estimated_accuracy"] is not None]
    if windows:
        parts.append(_figure(lambda ax: (ax.plot(range(len(windows)), [w["estimated_accuracy"] for w in windows],
                                                 marker="o", label="estimated"),
                                         ax.axhline(accuracy["reference"] or 0, color="grey", ls="--", label="reference"),
                                         ax.set_xlabel("time window"), ax.set_ylim(0, 1), ax.legend())))  # fmt: skip
    labels = sorted(set(base.labels) | set(now.labels))[:30]
    if labels:
        def bars(ax: Any) -> None:
            x = np.arange(len(labels))
            n_ref, n_cur = max(1, sum(base.labels.values())), max(1, sum(now.labels.values()))
            ax.bar(x - 0.2, [base.labels[k] / n_ref for k in labels], 0.4, label="reference")
            ax.bar(x + 0.2, [now.labels[k] / n_cur for k in labels], 0.4, label="recent")
            ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
            ax.set_ylabel("share")
            ax.legend()

        parts.append("<h2>Label mix</h2>" + _figure(bars))
    if base.confidence and now.confidence:
        parts.append("<h2>Confidence</h2>" + _figure(lambda ax: (
            ax.hist(base.confidence, bins=20, range=(0, 1), alpha=0.5, density=True, label="reference"),
            ax.hist(now.confidence, bins=20, range=(0, 1), alpha=0.5, density=True, label="recent"), ax.legend())))
    checks = {**{f"text {k}": v for k, v in report["inputs"]["descriptors"].items()},
              **{k: v for k, v in report["predictions_drift"]["figures"].items()}}  # fmt: skip
    domain = report["inputs"]["domain_classifier"]
    auc = "-" if domain.get("roc_auc") is None else f"{domain['roc_auc']:.3f}"
    chance = "-" if domain.get("threshold") is None else f"threshold {domain['threshold']:.3f}"
    table = [f"<tr><td>domain classifier ROC AUC</td><td>{auc}</td><td>{chance}</td>"
             f"<td>{'drift' if domain.get('drift') else ''}</td></tr>"]
    for name, test in checks.items():
        mean = "-" if test.get("reference_mean") is None else f"{test['reference_mean']:.3g} -> {test['current_mean']:.3g}"
        p = "-" if test.get("p_value") is None else f"p={test['p_value']:.1e}"
        table.append(f"<tr><td>{e(name)}</td><td>{mean}</td><td>{p}</td><td>{'drift' if test.get('drift') else ''}</td></tr>")
    parts.append("<h2>Inputs and answers</h2><table>" + "".join(table) + "</table>")
    style = "body{font-family:sans-serif;max-width:60em;margin:2em auto}td{padding:2px 12px}img{max-width:100%}"
    return f"<!doctype html><meta charset=utf-8><title>{e(report['ref'])} monitoring</title><style>{style}</style>" \
        + "".join(parts)
