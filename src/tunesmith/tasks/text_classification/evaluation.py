"""Metrics, plots and the written report of a text classification run, and scoring a model on a labeled file."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def multi_hot(labels: Sequence[Sequence[int]], n_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), n_classes), dtype=np.int64)
    for row, ids in enumerate(labels):
        out[row, list(ids)] = 1
    return out


# Candidate thresholds. A grid reaching down to 0.002 was measured on GoEmotions (a 15-minute run on a slow
# CPU, 0.67 epoch): it found two rare labels at 0.002-0.005 with validation F1 near 0 and predicted them on a
# fifth of the test rows (micro-F1 0.545 -> 0.469 for macro-F1 +0.007); a search over every distinct score
# fitted validation's noise (TF-IDF macro-F1 0.467 -> 0.457). Steps of 0.05 it is.
THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)


def best_f1_threshold(y_true: np.ndarray, scores: np.ndarray) -> float:
    """The candidate threshold (predict `scores >= threshold`) with the best F1 on held-out data."""
    y = np.asarray(y_true).ravel().astype(bool)
    predicted = np.asarray(scores).ravel()[:, None] >= THRESHOLDS[None, :]
    hits = (predicted & y[:, None]).sum(axis=0)
    f1 = 2 * hits / np.maximum(predicted.sum(axis=0) + y.sum(), 1)
    return float(THRESHOLDS[int(np.argmax(f1))])


MIN_POSITIVES = 10  # validation positives a label needs for a threshold of its own; rarer ones share the global one


def tune_thresholds(y_true: np.ndarray, probs: np.ndarray) -> tuple[list[float], list[int]]:
    """A decision threshold per label, each maximising that label's F1 on held-out data; a label with fewer
    than MIN_POSITIVES positives there keeps the global micro-F1 threshold (a threshold tuned on a handful of
    examples is noise). Returns the thresholds and the indices of the labels too rare to tune."""
    shared = best_f1_threshold(y_true, probs)  # over every label decision pooled: micro-F1
    thresholds, rare = [], []
    for j in range(y_true.shape[1]):
        if y_true[:, j].sum() < MIN_POSITIVES:
            thresholds.append(shared)
            rare.append(j)
            continue
        thresholds.append(best_f1_threshold(y_true[:, j], probs[:, j]))
    return thresholds, rare


def describe_threshold(threshold: float | list[float]) -> str:
    if isinstance(threshold, list):
        return f"per-label thresholds {min(threshold):.2f}-{max(threshold):.2f}"
    return f"threshold {threshold:.2f}"


def classification_metrics(
    labels: Sequence[Any],
    probs: np.ndarray,
    label_names: Sequence[str],
    multi_label: bool,
    threshold: float | list[float] = 0.5,
) -> dict[str, Any]:
    """Accuracy, micro/macro/weighted F1 and a per-class report.

    For multi-label data `accuracy` is subset accuracy (every label of a row right) and
    predictions are `probs >= threshold`.
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    n_classes = len(label_names)
    if multi_label:
        y_true = multi_hot(labels, n_classes)
        y_pred = (probs >= threshold).astype(np.int64)
    else:
        y_true = np.asarray(labels)
        y_pred = probs.argmax(axis=1)
    classes = list(range(n_classes))
    # Macro-F1 over the classes the split holds or the model predicted: a class absent from both has no F1 to
    # average (sklearn would count it as 0, so a small test split answered perfectly scored below 1).
    if multi_label:
        present = [int(j) for j in np.flatnonzero(y_true.any(axis=0) | y_pred.any(axis=0))]
    else:
        present = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    every = None if multi_label else classes
    scored = {"macro": present or every, "micro": every, "weighted": every}
    averaged = {
        f"f1_{avg}": float(f1_score(y_true, y_pred, average=avg, labels=labels_of, zero_division=0))
        for avg, labels_of in scored.items()
    }
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=None if multi_label else classes, zero_division=0
    )
    per_class = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(label_names, precision, recall, f1, support, strict=True)
    }
    metrics: dict[str, Any] = {"accuracy": float(accuracy_score(y_true, y_pred)), **averaged}
    if multi_label:
        metrics["subset_accuracy"] = metrics["accuracy"]
        metrics["threshold"] = threshold
    metrics["n"] = len(labels)
    metrics["per_class"] = per_class
    return metrics


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, float) and k != "threshold"}


def plot_confusion_matrix(labels: Sequence[int], probs: np.ndarray, label_names: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    n = len(label_names)
    matrix = confusion_matrix(labels, probs.argmax(axis=1), labels=list(range(n)))
    # Row-normalised, so rare classes are as readable as frequent ones.
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.3 * n, 30)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), label_names, rotation=90 if n > 6 else 30, ha="right" if n <= 6 else "center")
    ax.set_yticks(range(n), label_names)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    color = "white" if share[i, j] > 0.5 else "black"
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=color, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test split; colour = share of the true class)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_learning_curve(log_history: list[dict[str, Any]], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["epoch"], e["loss"]) for e in log_history if "loss" in e and "epoch" in e]
    evals = [e for e in log_history if "eval_loss" in e]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train:
        ax.plot(*zip(*train, strict=True), label="training loss", color="tab:blue", alpha=0.8)
    if evals:
        ax.plot([e["epoch"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="validation loss",
                color="tab:orange")  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if evals and f"eval_{metric}" in evals[0]:
        right = ax.twinx()
        right.plot([e["epoch"] for e in evals], [e[f"eval_{metric}"] for e in evals], "s--", color="tab:green",
                   label=f"validation {metric}")  # fmt: skip
        right.set_ylabel(metric)
        right.set_ylim(0, 1)
        right.legend(loc="center right")
    ax.legend(loc="upper right")
    ax.set_title("Learning curve")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_errors(
    path: Path,
    texts: Sequence[str],
    labels: Sequence[Any],
    probs: np.ndarray,
    label_names: Sequence[str],
    multi_label: bool,
    threshold: float | list[float],
) -> int:
    """Write the misclassified test rows, most confident mistakes first; returns how many."""
    rows = []
    for text, gold, row in zip(texts, labels, probs, strict=True):
        if multi_label:
            true = sorted(label_names[i] for i in gold)
            pred = sorted(label_names[i] for i in np.flatnonzero(row >= threshold))
            confidence = float(np.abs(row - threshold).mean())
            if true != pred:
                rows.append((confidence, text, "|".join(true), "|".join(pred)))
        else:
            best = int(row.argmax())
            if best != gold:
                rows.append((float(row[best]), text, label_names[gold], label_names[best]))
    rows.sort(key=lambda r: -r[0])
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "true_label", "predicted_label", "confidence"])
        for confidence, text, true, pred in rows:
            writer.writerow([text, true, pred, f"{confidence:.4f}"])
    return len(rows)


def write_report(
    out_dir: Path,
    *,
    name: str,
    test_texts: Sequence[str],
    test_labels: Sequence[Any],
    probs: np.ndarray,
    baseline_probs: np.ndarray | None,
    baseline_threshold: float | list[float] = 0.5,
    label_names: Sequence[str],
    multi_label: bool,
    threshold: float | list[float],
    log_history: list[dict[str, Any]],
    metric: str,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Compute test metrics, write plots, errors, metrics.json and report.md; return the metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = classification_metrics(test_labels, probs, label_names, multi_label, threshold)
    result: dict[str, Any] = {"test": metrics}
    if baseline_probs is not None:
        result["baseline"] = classification_metrics(
            test_labels, baseline_probs, label_names, multi_label, baseline_threshold
        )
        result["baseline"]["model"] = "tf-idf + logistic regression"
    result.update(extra)
    if not multi_label:
        plot_confusion_matrix(test_labels, probs, label_names, out_dir / "confusion_matrix.png")
    if log_history:
        plot_learning_curve(log_history, metric, out_dir / "learning_curve.png")
    n_errors = write_errors(
        out_dir / "misclassified.csv", test_texts, test_labels, probs, label_names, multi_label, threshold
    )
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    (out_dir / "report.md").write_text(
        _report_markdown(name, result, n_errors, multi_label, curve=bool(log_history)), encoding="utf-8"
    )
    return result


def _report_markdown(name: str, result: dict[str, Any], n_errors: int, multi_label: bool, curve: bool) -> str:
    test = result["test"]
    base = result.get("baseline")
    keys = ["accuracy", "f1_macro", "f1_micro", "f1_weighted"]
    lines = [f"# {name}: evaluation report", ""]
    lines.append(f"{result.get('evaluated_on', 'Test split')}: {test['n']} texts" + (" (multi-label; accuracy is subset accuracy, "
                 f"{describe_threshold(test['threshold'])} tuned on validation)" if multi_label else "") + ".")  # fmt: skip
    if base:
        lines += ["", "| metric | fine-tuned | TF-IDF baseline |", "|---|---|---|"]
        lines += [f"| {key} | {test[key]:.4f} | {base[key]:.4f} |" for key in keys]
    else:
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {test[key]:.4f} |" for key in keys]
    if "train_minutes" in result:
        lines.append(f"\nTraining took {result['train_minutes']:.1f} minutes; the baseline "
                     f"{result.get('baseline_seconds', 0):.0f} seconds.")  # fmt: skip
    lines += ["", "## Per class", "", "| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    for label, m in sorted(test["per_class"].items(), key=lambda kv: kv[1]["f1"]):
        lines.append(f"| {label} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |")
    lines += ["", "## Files", ""]
    if not multi_label:
        lines.append("- ![confusion matrix](confusion_matrix.png) `confusion_matrix.png`")
    if curve:
        lines.append("- ![learning curve](learning_curve.png) `learning_curve.png`")
    lines += [
        f"- `misclassified.csv`: the {n_errors} misclassified test texts, most confident mistakes first",
        "- `metrics.json`: every figure above, for machines",
        "",
    ]
    return "\n".join(lines)


def evaluate(
    model: Any,
    data: str | Path,
    out_dir: str | Path,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Score a trained `TextClassifier` on a labeled file; write the same report as training does.

    Rows whose labels the model does not know are left out (and reported under `skipped_rows`).
    """
    from tunesmith.config import DataConfig
    from tunesmith.data import joined_from, load_labeled_file, trained_text_column
    from tunesmith.errors import DataError

    trained_on = trained_text_column(model.meta)
    if text_column is None and len(joined_from(trained_on)) > 1:  # a model that reads several columns reads them here
        text_column = trained_on
    config = DataConfig(text_column=text_column, label_column=label_column, multi_label=model.multi_label)
    texts, labels, issues = load_labeled_file(data, config)
    index = {name: i for i, name in enumerate(model.label_names)}
    keep = [i for i, lab in enumerate(labels) if all(name in index for name in lab)]
    unknown = sorted({name for lab in labels for name in lab if name not in index})
    if not keep:
        raise DataError(
            f"No row of {str(data)!r} carries a label the model knows. The model's labels: {model.label_names}; "
            f"the file's: {unknown[:10]}. Check --label-column."
        )
    texts = [texts[i] for i in keep]
    ids: list[Any] = [[index[n] for n in labels[i]] if model.multi_label else index[labels[i][0]] for i in keep]
    probs = model.predict_proba(texts, batch_size=batch_size)
    result = write_report(
        Path(out_dir),
        name=str(model.meta.get("name", "model")),
        test_texts=texts,
        test_labels=ids,
        probs=probs,
        baseline_probs=None,
        label_names=model.label_names,
        multi_label=model.multi_label,
        threshold=model.threshold,
        log_history=[],
        metric="f1_micro" if model.multi_label else "f1_macro",
        extra={
            "evaluated_on": str(data),
            "skipped_rows": len(labels) - len(keep),
            "unknown_labels": unknown,
            "issues": [str(i) for i in issues],
        },
    )
    return result


def write_predictions(frame: Any, results: list[Any], path: Path) -> None:
    """`frame` with each row's predicted label and scores, as CSV (a column per class) or JSONL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = [r.label if isinstance(r.label, str) else "|".join(r.label) for r in results]
    if path.suffix.lower() == ".jsonl":
        with path.open("w", encoding="utf-8") as handle:
            for record, result in zip(frame.to_dict(orient="records"), results, strict=True):
                row = {**record, "predicted_label": result.label, "score": result.score, "scores": result.scores}
                handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        return
    out = frame.copy()
    out["predicted_label"] = labels
    out["score"] = [round(r.score, 6) for r in results]
    for name in results[0].scores if results else []:
        out[f"score_{name}"] = [round(r.scores[name], 6) for r in results]
    out.to_csv(path, index=False)
