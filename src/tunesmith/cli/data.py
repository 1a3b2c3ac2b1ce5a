"""Commands about data: `inspect` (checks before training) and `suggest` (what to label next)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from tunesmith.cli.app import app, console, print_json
from tunesmith.cli.flags import BACKEND_HELP, Backend, DelimiterFlag, Json, LabelColumnFlag, Quiet, Task, TextColumnFlag
from tunesmith.quality.inspection import CHECKS, FIXES
from tunesmith.tasks.catalog import TASKS


@app.command("inspect")
def inspect_(
    data: Annotated[str, typer.Argument(help="Data file: CSV, TSV, JSONL, JSON or Parquet (CoNLL/JSONL for NER).")],
    validation: Annotated[str | None, typer.Option(help="Validation file, checked for leaks from training.")] = None,
    test: Annotated[str | None, typer.Option(help="Test file, checked for leaks from training.")] = None,
    task: Annotated[Task | None, typer.Option(help="The task whose data this is; inspect reads text-classification and token-classification data. (default: text-classification)")] = None,
    text_column: TextColumnFlag = None,
    label_column: LabelColumnFlag = None,
    label_delimiter: DelimiterFlag = None,
    model: Annotated[str | None, typer.Option(help="Model whose tokenizer and length limit the length check uses.")] = None,
    max_length: Annotated[int | None, typer.Option(help="Token limit to check against (default: the model's).")] = None,
    report: Annotated[Path | None, typer.Option(help="Report folder (default: DATA's name + '-report').")] = None,
    fix: Annotated[str | None, typer.Option(help="Comma-separated fixes: " + ", ".join(FIXES) + ".")] = None,
    mask_pii: Annotated[bool, typer.Option(help="Shorthand for adding mask-pii to --fix.")] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where --fix writes the cleaned training file (default: DATA's name + '.cleaned').")
    ] = None,
    skip: Annotated[str | None, typer.Option(help="Comma-separated checks to leave out: " + ", ".join(c.replace("_", "-") for c in CHECKS) + ".")] = None,
    fail_on: Annotated[
        Literal["none", "warning", "error"],
        typer.Option(help="Exit with code 1 when a finding of this severity or worse is found (for CI)."),
    ] = "none",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Check DATA before training: duplicates, leaks, label errors, balance, lengths, junk, languages, personal
    data. Writes report.html and report.json; --fix writes a cleaned copy (the input is never changed)."""
    from tunesmith.config import load_config
    from tunesmith.quality import CHECKS, inspect_data, parse_checks, parse_fixes, severity, write_fixed

    fixes = parse_fixes((fix or "") + (",mask-pii" if mask_pii else ""))
    left_out = set(parse_checks(skip or ""))
    if fixes and output is None:
        source = Path(data)
        output = source.with_name(f"{source.stem}.cleaned{source.suffix}")
    flags = {"data.train": data, "data.validation": validation, "data.test": test, "task": task,
             "data.text_column": text_column, "data.label_column": label_column,
             "data.label_delimiter": label_delimiter, "train.base_model": model, "train.max_length": max_length}  # fmt: skip
    settings = load_config(None, {k: v for k, v in flags.items() if v is not None})
    folder = report or Path(f"{Path(data).name.split('.')[0]}-report")
    result = inspect_data(settings, TASKS[settings.task].data_shape, output_dir=folder, only=[c for c in CHECKS if c not in left_out],
                          progress=progress and not as_json)  # fmt: skip
    counts = write_fixed(result, fixes, output) if fixes and output is not None else {}
    worst = severity(result)
    if as_json:
        print_json({"findings": result.findings, "severity": worst, "report": str(folder / "report.json"),
                     "fixed": str(output) if counts else None, "fix_counts": counts, "checks": result.report["checks"]})  # fmt: skip
    elif not quiet:
        for finding in result.findings:
            console.print(f"- {finding}", markup=False, highlight=False, soft_wrap=True)
        if not result.findings:
            console.print("No problems found.")
        console.print(f"Report: {folder / 'report.html'} (and report.json)", soft_wrap=True)
        if counts:
            done = ", ".join(f"{k}: {n} row(s)" for k, n in counts.items())
            console.print(f"Wrote {output} ({done}); {data} is unchanged.", soft_wrap=True)
    levels = ("none", "warning", "error")
    if fail_on != "none" and levels.index(worst) >= levels.index(fail_on):
        raise typer.Exit(1)


@app.command()
def suggest(
    ref: Annotated[str, typer.Argument(help="The model: NAME, NAME@VERSION or NAME@ALIAS.")],
    pool: Annotated[Path, typer.Option(help="Unlabelled texts (CSV/TSV/JSONL/JSON/Parquet).")],
    n: Annotated[int, typer.Option("-n", help="How many texts to suggest.")] = 200,
    output: Annotated[Path | None, typer.Option(help="CSV to write (default: POOL's name + '.suggested.csv').")] = None,
    strategy: Annotated[
        Literal["uncertainty-diversity", "uncertainty", "random"], typer.Option(help="How texts are picked.")
    ] = "uncertainty-diversity",
    exclude: Annotated[Path | None, typer.Option(help="Texts never to suggest, e.g. the training file.")] = None,
    text_column: Annotated[str | None, typer.Option(help="Text column of the pool (default: detected).")] = None,
    backend: Annotated[Backend, typer.Option(help=BACKEND_HELP)] = "auto",
) -> None:
    """Pick the pool texts worth labelling next (uncertain and diverse); writes a CSV with an empty label column
    and a Label Studio import file. Labelled results train like any data file."""
    from tunesmith import load_model
    from tunesmith.tasks.text_classification.active_learning import suggest as pick

    model = load_model(ref, backend=backend)
    output = output or pool.with_name(f"{pool.name.split('.')[0]}.suggested.csv")
    result = pick(model, pool, n, output=output, text_column=text_column, strategy=strategy, exclude=exclude,
                  model_version=ref)  # fmt: skip
    console.print(f"Picked {len(result.suggestions)} of {result.pool_size} texts ({strategy}).", soft_wrap=True)
    console.print(f"Label them in {result.csv} (the 'label' column), or import {result.label_studio} into Label "
                  f"Studio with the labelling config {result.label_config}; then train on the labelled file or "
                  "Label Studio's JSON export.", soft_wrap=True)  # fmt: skip
