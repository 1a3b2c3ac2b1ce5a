"""Commands that make a model: `train`, `retrain`, `tune`, `zeroshot`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from tunesmith.cli.app import app, console, draw, open_registry, print_json, say, say_warnings
from tunesmith.cli.flags import (
    DATA_FLAGS,
    TRAIN_FLAGS,
    ConfigFlag,
    DelimiterFlag,
    Json,
    LabelColumnFlag,
    MethodFlag,
    ModelFlag,
    MultiLabelFlag,
    NameFlag,
    Precision,
    Quiet,
    SetFlag,
    TaskFlag,
    TestFlag,
    TextColumnFlag,
    ValidationFlag,
    described,
    run_settings,
)
from tunesmith.config import TRIALS, RunConfig, TrainConfig
from tunesmith.tasks.catalog import TASKS


@app.command()
def train(
    data: Annotated[str, typer.Argument(help="Training file: CSV, TSV, JSONL, JSON or Parquet (CoNLL, SQuAD JSON for their tasks).")],
    config: ConfigFlag = None,
    name: NameFlag = None,
    task: TaskFlag = None,
    validation: ValidationFlag = None,
    test: TestFlag = None,
    text_column: TextColumnFlag = None,
    label_column: LabelColumnFlag = None,
    multi_label: MultiLabelFlag = None,
    label_delimiter: DelimiterFlag = None,
    model: ModelFlag = None,
    method: MethodFlag = None,
    epochs: Annotated[float | None, typer.Option(help=described(TrainConfig, "epochs"))] = None,
    learning_rate: Annotated[
        float | None, typer.Option("--learning-rate", "--lr", help=described(TrainConfig, "learning_rate"))
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help=described(TrainConfig, "batch_size"))] = None,
    max_length: Annotated[int | None, typer.Option(help=described(TrainConfig, "max_length"))] = None,
    max_steps: Annotated[int | None, typer.Option(help=described(TrainConfig, "max_steps"))] = None,
    max_minutes: Annotated[float | None, typer.Option(help=described(TrainConfig, "max_minutes"))] = None,
    class_weights: Annotated[
        bool | None, typer.Option("--class-weights/--no-class-weights", help=described(TrainConfig, "class_weights"))
    ] = None,
    precision: Annotated[Precision, typer.Option(help=described(TrainConfig, "precision"))] = None,
    seed: Annotated[int | None, typer.Option(help=described(RunConfig, "seed") + " Also seeds training.")] = None,
    set_: SetFlag = None,
    resume: Annotated[
        bool, typer.Option(help="Continue this name's interrupted run from its last checkpoint.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Fine-tune a model on DATA, evaluate it beside a baseline, and register it as a new version."""
    import tunesmith

    settings = run_settings(data, config, set_, locals(), TRAIN_FLAGS)
    log = say_warnings if quiet or as_json else say
    result = tunesmith.train(config=settings, registry=open_registry(), resume=resume, progress=progress and not as_json,
                             log=log)  # fmt: skip
    summary = TASKS[settings.task].summary(result)
    if as_json:
        print_json({"ref": result.version.ref, "path": str(result.version.path), "metrics": result.metrics,
                     "baseline": result.baseline, "train_minutes": result.train_minutes,
                     "issues": [str(i) for i in result.issues]})  # fmt: skip
        return
    if quiet:
        return
    console.print(draw(summary))
    console.print(f"Trained in {result.train_minutes:.1f} min. Report: {result.version.path / 'report.md'}")
    console.print(f'Use it: tunesmith predict {result.version.ref} "some text"')


@app.command()
def retrain(
    name: Annotated[str, typer.Argument(help="The model to retrain: its production version and its feedback.")],
    strategy: Annotated[
        Literal["rehearsal", "scratch", "feedback", "lora"],
        typer.Option(help="rehearsal: production's weights on the new rows plus a replay sample of the old ones; "
                     "scratch: the base model on all rows; feedback: production's weights on the new rows alone; "
                     "lora: an adapter over production's weights on the rehearsal mix (docs/improving.md)."),
    ] = "rehearsal",
    against: Annotated[str, typer.Option(help="The alias (or NAME@VERSION) to start from and gate against.")] = "production",
    data: Annotated[
        list[Path] | None, typer.Option("--data", help="More training rows in the task's format (repeatable).")
    ] = None,
    replay: Annotated[float, typer.Option(help="Old rows replayed per new row (rehearsal, lora).")] = 2.0,
    max_minutes: Annotated[float | None, typer.Option(help=described(TrainConfig, "max_minutes"))] = None,
    set_: SetFlag = None,
    gate: Annotated[bool, typer.Option(help="Export and gate the candidate against the version it started from.")] = True,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    as_json: Json = False,
) -> None:
    """Train a candidate from the production version's training rows and the feedback collected since (plus
    --data files), export it and run the regression gate against production; a pass moves the `candidate`
    alias. Exit code 1 when the gate fails."""
    from tunesmith.retraining import retrain as run_retrain

    overrides = [*(set_ or []), *([f"train.max_minutes={max_minutes}"] if max_minutes else [])]
    outcome = run_retrain(open_registry(), name, strategy=strategy, against=against, files=data or [],
                          replay=replay, overrides=overrides, gate=gate, export=gate,
                          progress=progress and not as_json, log=say_warnings if as_json else say)  # fmt: skip
    result, verdict = outcome.result, outcome.gate
    if as_json:
        print_json({"ref": result.version.ref, "metrics": result.metrics, "lineage": outcome.lineage,
                    "gate": verdict.to_dict() if verdict else None})  # fmt: skip
    else:
        console.print(draw(TASKS[result.version.task].summary(result)))
        if verdict is not None:
            from tunesmith.cli.registry import show_gate

            show_gate(verdict)
    if verdict is not None and not verdict.passed:
        raise typer.Exit(1)


@app.command()
def tune(
    data: Annotated[str, typer.Argument(help="Training file (as for `tunesmith train`).")],
    trials: Annotated[int, typer.Option(help="Trials to finish (completed or pruned), across resumed runs.")] = TRIALS,
    timeout: Annotated[str | None, typer.Option(help="Budget of the whole search: 30m, 2h, 90s. The trial running at the end is cut there (its best checkpoint counts).")] = None,
    methods: Annotated[
        str | None, typer.Option(help="Methods to search over, e.g. full,lora (default: --method, i.e. the task's default).")
    ] = None,
    pruner: Annotated[Literal["median", "hyperband"], typer.Option(help="How trailing trials are stopped.")] = "median",
    space: Annotated[Path | None, typer.Option(help="YAML search space replacing the default one.")] = None,
    study: Annotated[str | None, typer.Option(help="Study name (default tune-NAME); reuse it to resume.")] = None,
    config: ConfigFlag = None,
    name: NameFlag = None,
    task: TaskFlag = None,
    validation: ValidationFlag = None,
    test: TestFlag = None,
    text_column: TextColumnFlag = None,
    label_column: LabelColumnFlag = None,
    multi_label: MultiLabelFlag = None,
    label_delimiter: DelimiterFlag = None,
    model: ModelFlag = None,
    method: MethodFlag = None,
    set_: SetFlag = None,
    as_json: Json = False,
) -> None:
    """Search hyperparameters with Optuna (TPE + pruning); register the best trial's model. The study is kept
    in the registry database: run the same command again to resume it, or in several processes at once."""
    from tunesmith.tuning import load_space, parse_duration
    from tunesmith.tuning import tune as run_search

    settings = run_settings(data, config, set_, locals(), DATA_FLAGS)
    result = run_search(
        settings, trials=trials, timeout=parse_duration(timeout), pruner=pruner, study_name=study,
        log=say_warnings if as_json else say, registry=open_registry(), space=load_space(space) if space else None,
        methods=[m.strip() for m in methods.split(",") if m.strip()] if methods else None,
    )  # fmt: skip
    if as_json:
        print_json({"study": result.study, "ref": result.version.ref if result.version else None,
                     "best": result.best, "defaults": result.default_value, "trials": result.trials})  # fmt: skip
        return
    table = Table(title=f"study {result.study}: {len(result.trials)} trials")
    for column in ("trial", "state", "validation", "settings"):
        table.add_column(column, justify="right" if column != "settings" else "left")
    for row in result.trials:
        value = f"{row['value']:.4f}" if row["value"] is not None else "-"
        mark = " (defaults)" if row["defaults"] else (" (best)" if row["number"] == result.best["number"] else "")
        settings_text = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["params"].items()
        )
        table.add_row(f"{row['number']}{mark}", row["state"].lower(), value, settings_text)
    console.print(table)
    if result.version is not None:
        console.print(f"Registered the best trial as {result.version.ref}; plots in {result.version.path / 'tuning'}.")


@app.command()
def zeroshot(
    name: Annotated[str, typer.Option(help="Registry name of the model.")],
    labels: Annotated[
        str | None, typer.Option(help='Comma-separated labels, e.g. "refund,card lost,delivery".')
    ] = None,
    labels_file: Annotated[
        Path | None, typer.Option(help="One label per line, optionally 'label: description' (or tab-separated).")
    ] = None,
    test: Annotated[str | None, typer.Option(help="Labeled file to evaluate on (same report as training).")] = None,
    model: Annotated[str | None, typer.Option(help=described(TrainConfig, "base_model"))] = None,
    template: Annotated[str, typer.Option(help='How a description is phrased, e.g. "This text is about {}."')] = "{}",
) -> None:
    """Register a classifier built from label names or descriptions alone (no training): each text gets the
    label whose description its embedding is closest to."""
    from tunesmith.tasks.text_classification.zeroshot import create, parse_labels

    descriptions = parse_labels(labels, labels_file)
    result = create(descriptions, name=name, registry=open_registry(), base_model=model,
                    template=template, test=test, log=say)  # fmt: skip
    if result.skipped_rows:
        say(f"warning: {result.skipped_rows} test row(s) carry other labels; they were left out.")
    console.print(f"Registered {result.version.ref} ({len(descriptions)} labels, zero-shot).")
    console.print(f'Use it: tunesmith predict {result.version.ref} "some text"')
