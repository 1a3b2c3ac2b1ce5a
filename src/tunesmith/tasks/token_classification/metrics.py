"""Entity-level scores with seqeval (strict IOB2), per type and micro-averaged."""

from __future__ import annotations

from typing import Any


def seqeval_report(true: list[list[str]], predicted: list[list[str]]) -> dict[str, Any]:
    from seqeval.metrics import accuracy_score, classification_report
    from seqeval.scheme import IOB2

    report = classification_report(true, predicted, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    per_type = {
        k: {
            "precision": float(v["precision"]),
            "recall": float(v["recall"]),
            "f1": float(v["f1-score"]),
            "support": int(v["support"]),
        }
        for k, v in report.items()
        if not k.endswith(" avg")
    }
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    macro = report.get("macro avg", {"f1-score": 0.0})
    return {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "f1_macro": float(macro["f1-score"]),
        "token_accuracy": float(accuracy_score(true, predicted)),
        "n": len(true),
        "per_type": per_type,
    }


def repair_tags(tags: list[str]) -> list[str]:
    out, previous = [], "O"
    for tag in tags:
        out.append(f"B-{tag[2:]}" if tag.startswith("I-") and previous[2:] != tag[2:] else tag)
        previous = tag
    return out
