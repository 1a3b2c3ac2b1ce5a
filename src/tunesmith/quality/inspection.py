"""Data quality before training: `tunesmith inspect`.

`inspect_data(config)` reads the training file (and the validation/test files, when given) of a
text-classification or token-classification run, runs every check over all of them at once, and writes
`report.json`, a self-contained `report.html` and its plots. `fixes` name rows to drop or texts to mask;
`write_fixed` writes a cleaned copy of the training file and never touches the input.

The checks (see `checks`, `label_errors`, `pii`): exact and near duplicates and the labels they disagree
on, leakage across splits, class balance, token lengths against the model's limit, empty and non-text
rows, languages, likely label errors (cleanlab on out-of-fold probabilities), personal data.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunesmith import pii
from tunesmith.artifact import library_versions
from tunesmith.config import RunConfig
from tunesmith.errors import ConfigError, DataError
from tunesmith.quality import checks, label_errors, report
from tunesmith.quality.checks import Rows
from tunesmith.tasks.base import DataShape
from tunesmith.tasks.token_classification.sentences import normalize_tags, read_sentences

CHECKS = ("duplicates", "label_errors", "balance", "lengths", "junk", "languages", "pii")
FIXES = {
    "dedupe": "keep one row of each group of exact duplicates (same labels)",
    "drop-conflicts": "drop every row of a group of identical texts with different labels",
    "drop-leaks": "drop training rows whose text (or a near-duplicate) is in the validation or test file",
    "drop-junk": "drop empty and non-text rows",
    "drop-label-errors": "drop the rows flagged as likely mislabelled",
    "mask-pii": "replace personal data with its kind, e.g. [EMAIL]",
}
SHAPES = ("labeled-texts", "tagged-sentences")  # the data shapes these checks read
QUICK_CHECKS = ("duplicates", "balance", "junk", "pii")  # what `train` runs first: seconds, no model fitting

Log = Callable[[str], None]


@dataclass
class _Source:
    """The rows as read, for writing a fixed copy of the training file."""

    frame: Any = None  # classification: the training table
    text_column: str = ""
    sentences: list[Any] = field(default_factory=list)  # token classification: the training sentences


@dataclass
class InspectionResult:
    """What `inspect_data` found and wrote."""

    report: dict[str, Any]
    output_dir: Path | None
    fixed: Path | None = None
    fix_counts: dict[str, int] = field(default_factory=dict)
    rows: Rows = field(default_factory=Rows, repr=False)  # what the checks ran over, for `write_fixed`
    source: _Source = field(default_factory=_Source, repr=False)

    @property
    def findings(self) -> list[str]:
        return [f for result in self.report["checks"].values() for f in result.get("findings", [])]

    @property
    def html(self) -> Path | None:
        return self.output_dir / "report.html" if self.output_dir else None


def _read(config: RunConfig, shape: DataShape) -> tuple[Rows, _Source, dict[str, dict[str, Any]]]:
    from tunesmith.data import as_label_list, ensure_text_column, read_layout, read_table

    data = config.data
    if not data.train:
        raise DataError("No data file given. Pass one, e.g. `tunesmith inspect data.csv`.")
    rows = Rows()
    files: dict[str, dict[str, Any]] = {}
    paths = {"train": data.train, "validation": data.validation, "test": data.test}
    if shape == "tagged-sentences":
        source = _Source()
        for split, path in paths.items():
            if path is None:
                continue
            sentences = read_sentences(path)
            normalize_tags(sentences, path)
            if split == "train":
                source.sentences = sentences
            for n, sentence in enumerate(sentences, start=1):
                rows.add(" ".join(sentence.tokens), (" ".join(sentence.tags),), split, n)
            files[split] = {"path": str(path), "rows": len(sentences)}
        return rows, source, files

    frame, layout = read_layout(data.train, data)
    source = _Source(frame=frame, text_column=layout.text_column)
    for split, path in paths.items():
        if path is None:
            continue
        table = frame if split == "train" else read_table(path)
        table.columns = [str(c) for c in table.columns]
        if not ensure_text_column(table, layout.text_column):
            raise DataError(f"The {split} file {path!r} has no column {layout.text_column!r} (the training file's "
                            f"text column). Columns found: {list(table.columns)}.")  # fmt: skip
        has_labels = layout.label_column in table.columns
        for n, value in enumerate(table[layout.text_column], start=1):
            text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
            labels = as_label_list(table[layout.label_column].iloc[n - 1], layout.delimiter) if has_labels else None
            rows.add(text, tuple(sorted(labels)) if labels else None, split, n)
        files[split] = {"path": str(path), "rows": len(table), "text_column": layout.text_column,
                        "label_column": layout.label_column if has_labels else None}  # fmt: skip
    return rows, source, files


def _ner_balance(rows: Rows) -> dict[str, Any]:
    """Entity mentions per type in training (a mention starts at a B- tag in IOB2)."""
    counts: Counter[str] = Counter()
    for labels, split in zip(rows.labels, rows.split, strict=True):
        if split == "train" and labels:
            counts.update(tag[2:] for tag in labels[0].split() if tag.startswith("B-"))
    findings = []
    if counts:
        largest, smallest = max(counts.values()), min(counts.values())
        rare = sorted(k for k, v in counts.items() if v < checks.TOO_FEW_TO_LEARN)
        if smallest * 10 <= largest:
            findings.append(f"Entity types are imbalanced {largest / smallest:.0f}:1 "
                            f"({min(counts, key=lambda k: counts[k])!r} has {smallest} mentions).")  # fmt: skip
        if rare:
            findings.append(f"{len(rare)} entity type(s) have fewer than {checks.TOO_FEW_TO_LEARN} mentions: {rare}.")
    return {"findings": findings, "counts": dict(counts.most_common()), "classes": len(counts)}


class _Progress:
    """A rich progress bar, one line per check, or nothing."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        self.seconds: dict[str, float] = {}  # per check, kept in the report: where the time of a slow run went
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), transient=False)  # fmt: skip

    @contextmanager
    def task(self, name: str, total: int) -> Iterator[Callable[[int], None]]:
        started = time.perf_counter()
        if self.bar is None:
            yield lambda _n: None
        else:
            task = self.bar.add_task(name, total=total)
            yield lambda n: self.bar.advance(task, n)  # type: ignore[union-attr]
            self.bar.update(task, completed=total)
        self.seconds[name] = round(time.perf_counter() - started, 2)

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _tokenizer_and_limit(config: RunConfig) -> tuple[Any, int]:
    from transformers import AutoConfig

    from tunesmith.models import load_tokenizer, model_max_length, resolve_model

    settings = config.train
    tokenizer = load_tokenizer(settings.base_model, settings.trust_remote_code)
    model_config = AutoConfig.from_pretrained(resolve_model(settings.base_model),
                                              trust_remote_code=settings.trust_remote_code)  # fmt: skip
    limit = model_max_length(tokenizer, model_config)
    return tokenizer, min(settings.max_length or limit, limit)


def inspect_data(
    config: RunConfig,
    shape: DataShape,
    *,
    output_dir: str | Path | None = None,
    only: Sequence[str] = CHECKS,
    progress: bool = False,
) -> InspectionResult:
    """Run the checks named in `only` over the data `config.data` describes; write the report to `output_dir`."""
    if shape not in SHAPES:
        raise ConfigError(f"`inspect` reads labeled texts and tagged sentences (text-classification and "
                          f"token-classification data); {config.task} data is {shape}.")  # fmt: skip
    unknown = sorted(set(only) - set(CHECKS))
    if unknown:
        raise ConfigError(f"Unknown check(s) {unknown}. Checks: {', '.join(CHECKS)}.")
    started = time.perf_counter()
    rows, source, files = _read(config, shape)
    ner = shape == "tagged-sentences"
    results: dict[str, Any] = {}
    lengths: list[int] = []
    with _Progress(progress) as bar:
        if "duplicates" in only:
            with bar.task("duplicates & leaks", len(rows)) as tick:
                results["duplicates"] = checks.duplicates_and_leaks(rows, tick=tick)
        if "label_errors" in only:
            with bar.task("label errors", len(rows)) as tick:
                if ner:
                    train = [s for s, split in enumerate(rows.split) if split == "train"]
                    results["label_errors"] = label_errors.token_classification(
                        [s.tokens for s in source.sentences], [s.tags for s in source.sentences],
                        lambda s: rows.where(train[s]), seed=config.seed, tick=tick,
                    )  # fmt: skip
                else:
                    results["label_errors"] = label_errors.classification(rows, seed=config.seed, tick=tick)
        if "balance" in only:
            results["balance"] = _ner_balance(rows) if ner else checks.balance(rows)
        if "lengths" in only:
            tokenizer, limit = _tokenizer_and_limit(config)
            with bar.task("lengths", len(rows)) as tick:
                results["lengths"] = checks.lengths(rows, tokenizer, limit, tick=tick)
            lengths = results["lengths"].pop("_counts")
        if "junk" in only:
            results["junk"] = checks.junk(rows)
        if "languages" in only:
            with bar.task("languages", len(rows)) as tick:
                results["languages"] = checks.languages(rows, tick=tick)
        if "pii" in only:
            with bar.task("personal data", len(rows)) as tick:
                results["pii"] = pii.scan(rows.texts, rows.where)
                tick(len(rows))
    name = Path(config.data.train or "data").name
    record = {
        "name": name, "task": config.task, "rows": len(rows), "files": files, "checks": results,
        "version": library_versions().get("tunesmith"), "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - started, "seconds_per_check": bar.seconds,
    }  # fmt: skip
    result = InspectionResult(record, Path(output_dir) if output_dir else None, rows=rows, source=source)
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        report.write_plots(record, lengths, out / "plots")
        full = {key: results[key]["_all"] for key in ("label_errors",) if key in results and "_all" in results[key]}
        report.write_json(record, out / "report.json", full)
        report.write_html(record, out / "report.html")
    return result


def severity(result: InspectionResult) -> str:
    """"error" when the data would give wrong scores or contradictory targets (leaks across splits, identical
    texts with different labels), "warning" for any other finding, "none" when nothing was found: what
    `inspect --fail-on` compares against."""
    duplicates = result.report["checks"].get("duplicates", {})
    leaks = duplicates.get("leaks", {})
    if leaks.get("exact_groups") or leaks.get("near_groups") or duplicates.get("exact_conflicts", {}).get("groups"):
        return "error"
    return "warning" if result.findings else "none"


def _names(spec: str | Sequence[str]) -> list[str]:
    # One spelling on the command line, hyphens (label-errors, drop-label-errors); underscores are read too.
    return [n.strip().replace("_", "-") for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]


def parse_checks(spec: str | Sequence[str]) -> list[str]:
    """Check names as typed (`label-errors,pii`) -> the checks' own names; unknown ones are refused, listing all."""
    names = _names(spec)
    valid = [c.replace("_", "-") for c in CHECKS]
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ConfigError(f"Unknown check(s) {', '.join(unknown)}. Checks: {', '.join(valid)}.")
    return [n.replace("-", "_") for n in names]


def parse_fixes(spec: str | Sequence[str]) -> list[str]:
    names = _names(spec)
    unknown = [n for n in names if n not in FIXES]
    if unknown:
        listed = "; ".join(f"{k}: {v}" for k, v in FIXES.items())
        raise ConfigError(f"Unknown fix(es) {', '.join(unknown)}. Fixes: {listed}.")
    return names


def write_fixed(result: InspectionResult, fixes: Sequence[str], output: str | Path) -> dict[str, int]:
    """Write the training file with `fixes` applied to `output`; returns rows changed per fix.

    The input is only read: `output` must be another path, and it is written to a temporary file first and
    renamed into place, so an interrupted run leaves either nothing or a complete file.
    """
    rows, source = result.rows, result.source
    output = Path(output)
    inputs = [Path(f["path"]).resolve() for f in result.report["files"].values()]
    if output.resolve() in inputs:
        raise ConfigError(f"--output {output} is one of the input files; `inspect` never changes its input. "
                          "Name a new file.")  # fmt: skip
    checked = result.report["checks"]
    needs = {"dedupe": "duplicates", "drop-conflicts": "duplicates", "drop-leaks": "duplicates", "drop-junk": "junk",
             "drop-label-errors": "label_errors"}  # fmt: skip
    drop: set[int] = set()
    counts: dict[str, int] = {}
    for fix in parse_fixes(fixes):
        if fix == "mask-pii":
            continue
        check = needs[fix]
        if check not in checked:
            raise ConfigError(f"--fix {fix} needs the {check!r} check; do not leave it out.")
        chosen = {i for i in checked[check]["_fix_rows"][fix] if rows.split[i] == "train"}
        counts[fix] = len(chosen - drop)
        drop |= chosen
    mask = "mask-pii" in fixes
    train = [i for i, split in enumerate(rows.split) if split == "train"]
    keep = [i for i in train if i not in drop]
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        if source.frame is not None:
            counts["mask-pii"] = _write_table(source, rows, keep, mask, partial, output)
        else:
            counts["mask-pii"] = _write_sentences(source, [rows.row[i] - 1 for i in keep], mask, partial, output)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    if not mask:
        counts.pop("mask-pii")
    result.fixed, result.fix_counts = output, counts
    return counts


def _write_table(source: _Source, rows: Rows, keep: list[int], mask: bool, partial: Path, output: Path) -> int:
    from tunesmith.data import detect_format

    frame = source.frame.iloc[[rows.row[i] - 1 for i in keep]].copy()
    masked = 0
    if mask:
        texts = frame[source.text_column].astype(str).tolist()
        new = [pii.mask(t) for t in texts]
        masked = sum(a != b for a, b in zip(texts, new, strict=True))
        frame[source.text_column] = new
    kind = detect_format(output)
    if kind == "csv":
        frame.to_csv(partial, index=False)
    elif kind == "tsv":
        frame.to_csv(partial, index=False, sep="\t")
    elif kind in ("jsonl", "json"):
        frame.to_json(partial, orient="records", lines=kind == "jsonl", force_ascii=False)
    else:
        frame.to_parquet(partial, index=False)
    return masked


def _write_sentences(source: _Source, keep: list[int], mask: bool, partial: Path, output: Path) -> int:
    import json

    masked = 0
    with partial.open("w", encoding="utf-8") as handle:
        for i in keep:
            sentence = source.sentences[i]
            tokens = [pii.mask(t) for t in sentence.tokens] if mask else sentence.tokens
            masked += tokens != sentence.tokens
            if output.suffix.lower() in (".jsonl", ".json"):
                handle.write(json.dumps({"tokens": tokens, "tags": sentence.tags}, ensure_ascii=False) + "\n")
            else:  # CoNLL, IOB2 tags (the scheme inspect normalised them to)
                handle.write("".join(f"{t} {g}\n" for t, g in zip(tokens, sentence.tags, strict=True)) + "\n")
    return masked


def summary_lines(config: RunConfig, shape: DataShape, log: Log) -> None:
    """The quick checks `train` runs before training: a few lines, and where the full report comes from."""
    result = inspect_data(config, shape, only=QUICK_CHECKS)
    findings = [f for key in ("duplicates", "junk", "pii") for f in result.report["checks"][key]["findings"]]
    for finding in findings:
        log(f"inspect: {finding}")
    more = "" if findings else "no duplicates, leaks, junk rows or personal data found. "
    log(f"inspect: {more}`tunesmith inspect {config.data.train}` also checks label errors, lengths and languages "
        "and writes an HTML report.")  # fmt: skip
