"""Zero-shot text classification: no training, labels described in words.

Each label's description (or its name) is embedded with the sentence encoder; a text gets the label whose
description is most similar (cosine). That is an `embedding.EmbeddingHead` whose head rows are the
normalised description embeddings, so the model registers, evaluates, exports and serves like any other.
Similarities are scaled by `SCALE` before the softmax, so scores spread over [0, 1] instead of all sitting
near 1/n (cosines of one encoder rarely differ by more than a few tenths).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunesmith.config import DEFAULT_MODEL
from tunesmith.errors import DataError
from tunesmith.registry import ModelVersion, Registry

SCALE = 20.0
DEFAULT_TEMPLATE = "{}"
MAX_LENGTH = 128


@dataclass
class ZeroShotResult:
    version: ModelVersion
    metrics: dict[str, Any] = field(default_factory=dict)  # on the test file, when one was given
    skipped_rows: int = 0


def parse_labels(labels: str | None = None, labels_file: str | Path | None = None) -> dict[str, str]:
    """Label -> description, from "a,b,c" or a file with one label per line ("label: description" or
    "label<TAB>description"; a label alone is described by its name)."""
    if (labels is None) == (labels_file is None):
        raise DataError('Give the labels either as --labels "refund,card lost,..." or as --labels-file FILE.')
    if labels is not None:
        lines = labels.split(",")
    else:
        path = Path(labels_file)  # type: ignore[arg-type]
        if not path.is_file():
            raise DataError(f"Labels file {str(path)!r} does not exist.")
        lines = path.read_text(encoding="utf-8").splitlines()
    found: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if labels_file is not None and (not line.strip() or line.lstrip().startswith("#")):
            continue  # blank lines and comments of a labels file
        label, _, description = line.partition("\t") if "\t" in line else line.partition(":")
        label, description = label.strip(), description.strip()
        if not label:
            raise DataError(f"Label {number} is empty; write one label per line, e.g. 'refund: asks for money back'.")
        if label in found:
            raise DataError(f"Label {label!r} is given twice; each label once, please.")
        found[label] = description or label
    if len(found) < 2:
        raise DataError(f"Zero-shot needs at least two labels; got {list(found)}.")
    return found


def build(descriptions: dict[str, str], base_model: str = DEFAULT_MODEL, template: str = DEFAULT_TEMPLATE) -> Any:
    """The zero-shot model (an `EmbeddingHead`) and its tokenizer."""
    import torch
    from transformers import AutoModel

    from tunesmith.models import load_pretrained, load_tokenizer
    from tunesmith.tasks.text_classification.embedding import EmbeddingHead, embed_texts

    if "{}" not in template:
        raise DataError(f'The template must hold "{{}}" where the description goes, e.g. "This text is about {{}}."; '
                        f"got {template!r}.")  # fmt: skip
    tokenizer = load_tokenizer(base_model)
    encoder = load_pretrained(AutoModel, base_model)
    dim = encoder.config.hidden_size
    probe = EmbeddingHead(encoder, torch.zeros(1, dim), torch.zeros(1), "mean", normalize=True)
    rows = embed_texts(probe, tokenizer, [template.format(d) for d in descriptions.values()], MAX_LENGTH)
    weight = torch.tensor(rows * SCALE, dtype=torch.float32)
    return EmbeddingHead(encoder, weight, torch.zeros(len(rows)), "mean", normalize=True), tokenizer


def create(
    descriptions: dict[str, str],
    *,
    name: str,
    registry: Registry | None = None,
    base_model: str | None = None,
    template: str = DEFAULT_TEMPLATE,
    test: str | Path | None = None,
    log: Any = print,
) -> ZeroShotResult:
    """Build, (evaluate on `test` if given,) and register a zero-shot classifier; with no `base_model`, on the
    embedded encoder that reads the labels and descriptions (`languages.encoder_for`)."""
    from tunesmith import methods
    from tunesmith.artifact import FORMAT, library_versions, write_meta
    from tunesmith.tasks.text_classification import embedding
    from tunesmith.tasks.text_classification.evaluation import evaluate, headline
    from tunesmith.tasks.text_classification.predictor import TextClassifier

    registry = registry or Registry()
    labels = list(descriptions)
    if base_model is None:
        from tunesmith.languages import encoder_for

        base_model = encoder_for([*labels, *descriptions.values()])
    model, tokenizer = build(descriptions, base_model, template)
    classifier = TextClassifier(model, tokenizer, labels, max_length=MAX_LENGTH, meta={"name": name})
    with registry.staging() as staged:
        report: dict[str, Any] = {}
        if test is not None:
            report = evaluate(classifier, test, staged)
            _write_split(staged / "data", test, labels)
            log(f"Test ({report['test']['n']} texts): accuracy {report['test']['accuracy']:.4f}, macro-F1 "
                f"{report['test']['f1_macro']:.4f}.")  # fmt: skip
        else:
            (staged / "report.md").write_text(
                f"# {name}: zero-shot\n\nNo labeled test file was given, so there are no metrics. Labels:\n\n"
                + "".join(f"- **{label}**: {text}\n" for label, text in descriptions.items()),
                encoding="utf-8",
            )
        embedding.save(model, staged)
        tokenizer.save_pretrained(staged / "model")
        metrics = headline(report["test"]) if report else {}
        meta = {
            "format": FORMAT, "task": "text-classification", "name": name, "label_names": labels,
            "multi_label": False, "threshold": 0.5, "max_length": MAX_LENGTH, "base_model": base_model,
            "precision": "fp32", "method": "zeroshot", "architecture": embedding.ARCHITECTURE, "pooling": "mean",
            "normalize": True, "parameters": {**methods.parameter_counts(model), "trainable": 0},
            "zeroshot": {"descriptions": descriptions, "template": template, "scale": SCALE},
            "created_at": datetime.now(UTC).isoformat(), "metrics": metrics, "baseline_metrics": {},
            "data": {"fingerprint": "", "train_file": None, "test_file": str(test) if test else None,
                     "sizes": {"train": 0, "validation": 0, "test": report["test"]["n"] if report else 0}},
            "library_versions": library_versions(),
        }  # fmt: skip
        write_meta(staged, meta)
        version = registry.register(name, staged, "text-classification", metrics=metrics)
    return ZeroShotResult(version, report.get("test", {}), report.get("skipped_rows", 0))


def _write_split(folder: Path, test: str | Path, labels: list[str]) -> None:
    """The labeled rows the model knows, as validation and test splits: the export check reads them."""
    from tunesmith.config import DataConfig
    from tunesmith.data import load_labeled_file

    texts, gold, _ = load_labeled_file(test, DataConfig())
    rows = "".join(json.dumps({"text": t, "label": g[0]}, ensure_ascii=False) + "\n"
                   for t, g in zip(texts, gold, strict=True) if g and g[0] in labels)  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("validation", "test"):
        (folder / f"{split}.jsonl").write_text(rows, encoding="utf-8")
