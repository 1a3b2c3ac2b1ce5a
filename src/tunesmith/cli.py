"""The `tunesmith` command line: a thin typer layer that parses flags and calls the Python API."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table
from typer.exceptions import TyperException

from tunesmith.artifact import read_export, read_meta
from tunesmith.config import TRIALS, DataConfig, RunConfig, TrainConfig
from tunesmith.errors import DataError, TunesmithError
from tunesmith.export import DEFAULT_MIN_AGREEMENT
from tunesmith.quality.inspection import CHECKS, FIXES
from tunesmith.serving.settings import BatchSettings, ServeSettings
from tunesmith.tasks.base import Summary
from tunesmith.tasks.catalog import TASKS

HELP = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    help="Fine-tune, evaluate, register, export and serve transformer models (classifiers, taggers, question "
    "answering, instruction-tuned LMs), offline on a CPU.",
    no_args_is_help=True,
    context_settings=HELP,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(context_settings=HELP, help="List, inspect, promote, roll back and delete registered models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
keys_app = typer.Typer(context_settings=HELP, help="API keys for `tunesmith serve` (stored hashed in the registry).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
runs_app = typer.Typer(context_settings=HELP, help="Compare training runs (registered versions).", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # one message, one line: no wrapping at 80 columns
_state = {"verbose": False}


BACKEND_HELP = "auto: the checked ONNX export if any, else PyTorch; onnx: the export's default variant."


def _doc(section: type[Any], field: str) -> str:
    """A flag's help is its setting's description and default: one home for each default and its reason."""
    info = section.model_fields[field]
    default = None if info.default_factory is not None else info.default
    shown = "" if default is None or default == [] else f" (default: {default})"
    return (info.description or "") + shown


def _kind(section: type[Any], field: str) -> Any:
    """A setting's own type (a Literal shows its choices in --help), optional: a flag not given leaves it unset."""
    annotation = section.model_fields[field].annotation
    return annotation | None


Task = Literal[tuple(TASKS)]  # type: ignore[valid-type]
Method = _kind(TrainConfig, "method")
Precision = _kind(TrainConfig, "precision")
Auth = _kind(ServeSettings, "auth")
Backend = Literal["auto", "onnx", "onnx-fp32", "onnx-int8", "pytorch"]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (and nothing else there).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only warnings and errors.")]

# Flags shared by `train` and `tune`, and the setting each one sets.
NameFlag = Annotated[str | None, typer.Option(help=_doc(RunConfig, "name"))]
TaskFlag = Annotated[Task | None, typer.Option(help=_doc(RunConfig, "task"))]
ValidationFlag = Annotated[str | None, typer.Option(help=_doc(DataConfig, "validation"))]
TestFlag = Annotated[str | None, typer.Option(help=_doc(DataConfig, "test"))]
TextColumnFlag = Annotated[str | None, typer.Option(help=_doc(DataConfig, "text_column"))]
LabelColumnFlag = Annotated[str | None, typer.Option(help=_doc(DataConfig, "label_column"))]
MultiLabelFlag = Annotated[bool | None, typer.Option("--multi-label/--single-label", help=_doc(DataConfig, "multi_label"))]
DelimiterFlag = Annotated[str | None, typer.Option(help=_doc(DataConfig, "label_delimiter"))]
ModelFlag = Annotated[str | None, typer.Option(help=_doc(TrainConfig, "base_model"))]
MethodFlag = Annotated[Method, typer.Option(help=_doc(TrainConfig, "method"))]
ConfigFlag = Annotated[Path | None, typer.Option(help="YAML settings file (see docs/configuration.md).")]
SetFlag = Annotated[list[str] | None, typer.Option("--set", help="Any setting as section.key=value, e.g. train.weight_decay=0.")]
DATA_FLAGS = {"name": "name", "task": "task", "validation": "data.validation", "test": "data.test",
              "text_column": "data.text_column", "label_column": "data.label_column", "multi_label": "data.multi_label",
              "label_delimiter": "data.label_delimiter", "model": "train.base_model", "method": "train.method"}  # fmt: skip
TRAIN_FLAGS = {**DATA_FLAGS, "seed": "seed", "epochs": "train.epochs", "learning_rate": "train.learning_rate",
               "batch_size": "train.batch_size", "max_length": "train.max_length", "max_steps": "train.max_steps",
               "max_minutes": "train.max_minutes", "class_weights": "train.class_weights", "precision": "train.precision"}  # fmt: skip


def _settings(data: str, config: Path | None, set_: list[str] | None, given: dict[str, Any], flags: dict[str, str]) -> RunConfig:
    """Layers, later ones winning: defaults < YAML file < --set overrides < named flags."""
    from tunesmith.config import load_config, parse_override

    overrides = dict(parse_override(item) for item in set_ or [])
    overrides["data.train"] = data
    overrides.update({key: given[flag] for flag, key in flags.items() if given.get(flag) is not None})
    if given.get("seed") is not None:
        overrides["train.seed"] = given["seed"]  # --seed seeds both the split and the training
    return load_config(config, overrides)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def _table(summary: Summary) -> Table:
    table = Table(title=summary.title)
    for i, column in enumerate(summary.columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in summary.rows:
        table.add_row(*row)
    return table


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"tunesmith {version('tunesmith')}")
        raise typer.Exit(0)


@app.callback()
def _root(
    home: Annotated[
        Path | None, typer.Option(help="Registry folder (default: $TUNESMITH_HOME or ./.tunesmith).")
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show tracebacks on errors (also accepted after the command).")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True)
    ] = False,
) -> None:
    if home is not None:
        os.environ["TUNESMITH_HOME"] = str(home)
    _state["verbose"] = verbose


def _registry() -> Any:
    from tunesmith.registry import Registry

    return Registry()


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
    epochs: Annotated[float | None, typer.Option(help=_doc(TrainConfig, "epochs"))] = None,
    learning_rate: Annotated[
        float | None, typer.Option("--learning-rate", "--lr", help=_doc(TrainConfig, "learning_rate"))
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help=_doc(TrainConfig, "batch_size"))] = None,
    max_length: Annotated[int | None, typer.Option(help=_doc(TrainConfig, "max_length"))] = None,
    max_steps: Annotated[int | None, typer.Option(help=_doc(TrainConfig, "max_steps"))] = None,
    max_minutes: Annotated[float | None, typer.Option(help=_doc(TrainConfig, "max_minutes"))] = None,
    class_weights: Annotated[
        bool | None, typer.Option("--class-weights/--no-class-weights", help=_doc(TrainConfig, "class_weights"))
    ] = None,
    precision: Annotated[Precision, typer.Option(help=_doc(TrainConfig, "precision"))] = None,
    seed: Annotated[int | None, typer.Option(help=_doc(RunConfig, "seed") + " Also seeds training.")] = None,
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

    settings = _settings(data, config, set_, locals(), TRAIN_FLAGS)
    log = _say_warnings if quiet or as_json else _say
    result = tunesmith.train(config=settings, registry=_registry(), resume=resume, progress=progress and not as_json,
                             log=log)  # fmt: skip
    summary = TASKS[settings.task].summary(result)
    if as_json:
        _print_json({"ref": result.version.ref, "path": str(result.version.path), "metrics": result.metrics,
                     "baseline": result.baseline, "train_minutes": result.train_minutes,
                     "issues": [str(i) for i in result.issues]})  # fmt: skip
        return
    if quiet:
        return
    console.print(_table(summary))
    console.print(f"Trained in {result.train_minutes:.1f} min. Report: {result.version.path / 'report.md'}")
    console.print(f'Use it: tunesmith predict {result.version.ref} "some text"')


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

    settings = _settings(data, config, set_, locals(), DATA_FLAGS)
    result = run_search(
        settings, trials=trials, timeout=parse_duration(timeout), pruner=pruner, study_name=study,
        log=_say_warnings if as_json else _say, registry=_registry(), space=load_space(space) if space else None,
        methods=[m.strip() for m in methods.split(",") if m.strip()] if methods else None,
    )  # fmt: skip
    if as_json:
        _print_json({"study": result.study, "ref": result.version.ref if result.version else None,
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
    model: Annotated[str | None, typer.Option(help=_doc(TrainConfig, "base_model"))] = None,
    template: Annotated[str, typer.Option(help='How a description is phrased, e.g. "This text is about {}."')] = "{}",
) -> None:
    """Register a classifier built from label names or descriptions alone (no training): each text gets the
    label whose description its embedding is closest to."""
    from tunesmith.config import DEFAULT_MODEL
    from tunesmith.tasks.text_classification.zeroshot import create, parse_labels

    descriptions = parse_labels(labels, labels_file)
    result = create(descriptions, name=name, registry=_registry(), base_model=model or DEFAULT_MODEL,
                    template=template, test=test, log=_say)  # fmt: skip
    if result.skipped_rows:
        _say(f"warning: {result.skipped_rows} test row(s) carry other labels; they were left out.")
    console.print(f"Registered {result.version.ref} ({len(descriptions)} labels, zero-shot).")
    console.print(f'Use it: tunesmith predict {result.version.ref} "some text"')


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
        _print_json({"findings": result.findings, "severity": worst, "report": str(folder / "report.json"),
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


def _say(message: str) -> None:
    style = "yellow" if message.startswith("warning") else None
    err_console.print(message, style=style, markup=False, highlight=False)


def _say_warnings(message: str) -> None:
    """The log of --quiet and --json runs: warnings only."""
    if message.startswith(("warning", "hint")):
        _say(message)


@app.command()
def predict(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION, NAME@ALIAS, or a model folder.")],
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify or tag, questions (with --context), or prompts.")] = None,
    input_file: Annotated[Path | None, typer.Option("--input", "-i", help="File of texts (CSV/TSV/JSONL/...); text classifiers.")] = None,
    output_file: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where to write predictions of --input (.csv or .jsonl).")
    ] = None,
    text_column: Annotated[str | None, typer.Option(help="Text column of --input (default: detected).")] = None,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass.")] = 64,
    backend: Annotated[Backend, typer.Option(help=BACKEND_HELP)] = "auto",
    context: Annotated[str | None, typer.Option(help="For question-answering models: the text to search.")] = None,
    max_tokens: Annotated[int, typer.Option(help="For text-generation models: most tokens to generate.")] = 256,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Predict with a registered model: labels (or entities) for texts, answers to questions (--context),
    replies to prompts (text-generation models, greedy), or a whole file with --input/--output."""
    from tunesmith import load_model

    if not texts and input_file is None:
        raise DataError('Nothing to predict: pass texts (tunesmith predict NAME "text") or --input FILE.')
    if input_file is not None and output_file is None:
        raise DataError("--input needs --output FILE (.csv or .jsonl) to write the predictions to.")
    if output_file is not None and output_file.suffix.lower() not in (".csv", ".jsonl"):
        raise DataError(f"Cannot write {output_file.suffix!r}: pass an --output ending in .csv or .jsonl.")
    predictor = load_model(ref, backend=backend)
    task = TASKS[predictor.task]
    options = {"context": context, "max_tokens": max_tokens, "batch_size": batch_size}
    if input_file is not None:
        n = task.predict_file(predictor, input_file, output_file, text_column=text_column, batch_size=batch_size)
        if as_json:
            _print_json({"predictions": n, "output": str(output_file)})
        elif not quiet:
            console.print(f"Wrote {n} predictions to {output_file}.")
        return
    if as_json:
        _print_json(task.predict_records(predictor, texts or [], **options))
        return
    for line in task.predict_lines(predictor, texts or [], **options):
        print(line)


@app.command()
def evaluate(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION, NAME@ALIAS, or a model folder.")],
    data: Annotated[str, typer.Argument(help="Labeled file to score the model on.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Report folder.")] = None,
    text_column: Annotated[str | None, typer.Option(help="Text column (default: detected).")] = None,
    label_column: Annotated[str | None, typer.Option(help="Label column (default: detected).")] = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Score a registered model on a labeled file: metrics, errors and report.md (a confusion matrix too for
    classifiers)."""
    from tunesmith import evaluate as run_evaluation
    from tunesmith import load_model

    predictor = load_model(ref)
    name = str(predictor.meta.get("name", "model"))
    folder = output or Path(f"evaluation-{name}-{Path(data).name.split('.')[0]}")
    columns = {k: v for k, v in (("text_column", text_column), ("label_column", label_column)) if v is not None}
    result = run_evaluation(predictor, data, folder, **columns)
    for issue in result.get("issues", []):
        _say(str(issue))
    if as_json:
        _print_json({"report": str(folder / "report.md"), **result})
        return
    lines = TASKS[predictor.task].evaluation_lines(result)
    lines[-1] += f" Report: {folder / 'report.md'}"
    for line in lines:
        if line.startswith("warning"):
            _say(line)
        elif not quiet:
            console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def export(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@ALIAS.")],
    format: Annotated[Literal["onnx"], typer.Option("--format", help="Export format of the encoder tasks.")] = "onnx",
    quantize: Annotated[Literal["int8", "none"], typer.Option(help="int8: also a static int8 model; none: fp32 only.")] = "int8",
    min_agreement: Annotated[
        float, typer.Option(help="Share of validation predictions a variant must share with PyTorch to be used.")
    ] = DEFAULT_MIN_AGREEMENT,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Export a registered model to ONNX (and int8), checked against PyTorch on its validation split; a
    text-generation model is exported as one merged Hugging Face folder (adapter folded into the weights)."""
    from tunesmith.api import export_artifact
    from tunesmith.export import export_summary

    version = _registry().resolve(ref)
    task = TASKS[version.task]
    log = _say_warnings if quiet or as_json else _say
    if task.export_format == "onnx":
        log(f"Exporting {version.ref} to ONNX ...")
    record = export_artifact(version.path, quantize=quantize == "int8", min_agreement=min_agreement, log=log)
    if as_json:
        _print_json(record)
        return
    if task.export_format != "onnx":
        for line in task.export_lines(version.ref, record):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        return
    if record["default"] is None:
        _say(f"warning: no variant reached {min_agreement:.0%} agreement; the server will use PyTorch.")
    if quiet:
        return
    checked = record["checked_on"]
    console.print(f"Checked on {checked['n']} validation and {checked['test_n']} test items against PyTorch:")
    rows = export_summary(record)
    schemes = {row["variant"]: row.pop("scheme") for row in rows}
    table = Table(*rows[0].keys())
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
    if "int8" in schemes:
        console.print(f"int8 scheme: {schemes['int8']}")
    if record["default"] is not None:
        console.print(f"Served by default: {record['default']} ({version.path / 'onnx'})")


@app.command()
def serve(
    models: Annotated[
        list[str] | None, typer.Argument(help="Models to serve: NAME, NAME@ALIAS or NAME@VERSION.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML server settings (docs/serving.md).")] = None,
    host: Annotated[str | None, typer.Option(help=_doc(ServeSettings, "host"))] = None,
    port: Annotated[int | None, typer.Option(help=_doc(ServeSettings, "port"))] = None,
    auth: Annotated[Auth, typer.Option(help=_doc(ServeSettings, "auth"))] = None,
    backend: Annotated[Backend | None, typer.Option(help=BACKEND_HELP + " (default: auto)")] = None,
    default_model: Annotated[str | None, typer.Option(help=_doc(ServeSettings, "default_model"))] = None,
    max_batch_size: Annotated[int | None, typer.Option(help=_doc(BatchSettings, "max_batch_size"))] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help=_doc(BatchSettings, "max_wait_ms"))] = None,
    max_texts_per_request: Annotated[
        int | None, typer.Option(help=_doc(ServeSettings, "max_texts_per_request"))
    ] = None,
    max_text_chars: Annotated[int | None, typer.Option(help=_doc(ServeSettings, "max_text_chars"))] = None,
    max_body_bytes: Annotated[int | None, typer.Option(help=_doc(ServeSettings, "max_body_bytes"))] = None,
    request_timeout: Annotated[float | None, typer.Option(help=_doc(ServeSettings, "request_timeout_s"))] = None,
    threads: Annotated[int | None, typer.Option(help=_doc(ServeSettings, "threads"))] = None,
    watch_interval: Annotated[float | None, typer.Option(help=_doc(ServeSettings, "watch_interval_s"))] = None,
    rate_limit: Annotated[float | None, typer.Option(help=_doc(ServeSettings, "rate_limit_per_s"))] = None,
    max_concurrent_requests: Annotated[
        int | None, typer.Option(help=_doc(ServeSettings, "max_concurrent_requests"))
    ] = None,
    protect_ops: Annotated[bool | None, typer.Option("--protect-ops", help=_doc(ServeSettings, "protect_ops"))] = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="JSON access log on stderr.")] = True,
) -> None:
    """Serve registered models over HTTP: /v1/models/NAME/predict, /predict, /models/NAME, /metrics, /docs."""
    from tunesmith.serving import load_settings
    from tunesmith.serving import serve as run_server

    settings = load_settings(config, {
        "models": models, "host": host, "port": port, "auth": auth, "backend": backend,
        "default_model": default_model, "max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms,
        "max_texts_per_request": max_texts_per_request, "max_text_chars": max_text_chars,
        "max_body_bytes": max_body_bytes, "request_timeout_s": request_timeout, "threads": threads,
        "watch_interval_s": watch_interval, "rate_limit_per_s": rate_limit,
        "max_concurrent_requests": max_concurrent_requests, "protect_ops": protect_ops,
    })  # fmt: skip
    run_server(settings, _registry(), access_log_enabled=access_log)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A name for the key (who or what uses it).")],
    scope: Annotated[list[str] | None, typer.Option(help="read (predictions) and/or admin (reload, aliases).")] = None,
) -> None:
    """Create an API key. It is printed once; only its hash is stored."""
    key = _registry().create_key(name, scope or ["read"])
    _say(f"Created key {name!r} with scope {', '.join(scope or ['read'])}. Store it now; it cannot be shown again:")
    print(key)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (names and scopes; keys themselves are not stored)."""
    table = Table("name", "scopes", "created")
    for key in _registry().api_keys():
        table.add_row(key.name, ", ".join(key.scopes), f"{key.created_at:%Y-%m-%d %H:%M}")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="Name of the key to revoke.")]) -> None:
    """Revoke an API key; running servers refuse it within seconds."""
    _registry().revoke_key(name)
    console.print(f"Revoked {name!r}.")


@runs_app.command("compare")
def runs_compare(
    refs: Annotated[
        list[str] | None, typer.Argument(help="Models (all their versions) or NAME@VERSION; default all.")
    ] = None,
    sort: Annotated[str | None, typer.Option(help="Sort by this test metric, best first (e.g. f1_macro).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the rows to this JSON file.")] = None,
    as_json: Json = False,
) -> None:
    """One table of runs: method, settings, validation and test metrics, training time, trainable parameters,
    size on disk (without exports)."""
    from tunesmith.comparison import compare_runs

    registry = _registry()
    versions = []
    for ref in refs or registry.names():
        versions += [registry.resolve(ref)] if "@" in ref else registry.versions(ref)
    if not versions:
        raise DataError("No registered model to compare: train one with `tunesmith train`.")
    rows = compare_runs(versions)
    if sort:
        if not any(sort in r["test"] for r in rows):
            raise DataError(f"No run has a test metric {sort!r}; metrics here: "
                            f"{sorted({k for r in rows for k in r['test']})}.")  # fmt: skip
        rows.sort(key=lambda r: r["test"].get(sort, float("-inf")), reverse=True)
    if output is not None:
        output.write_text(json.dumps(rows, indent=2, default=str), encoding="utf-8")
    if as_json:
        _print_json(rows)
        return
    table = Table(title=f"{len(rows)} runs")
    for column in ("run", "task", "method", "lr", "epochs", "validation", "test", "baseline", "min", "trainable", "MB"):
        table.add_column(
            column, justify="left" if column in ("run", "task", "method", "test", "validation") else "right"
        )
    for r in rows:

        def metrics(values: dict[str, float]) -> str:
            return " ".join(f"{k} {v:.4f}" for k, v in values.items()) or "-"

        table.add_row(
            r["ref"], r["task"], r["method"], f"{r['learning_rate']:.2g}" if r["learning_rate"] else "auto",
            str(r["epochs"] or "auto"), metrics(r["validation"]), metrics(r["test"]), metrics(r["baseline"]),
            f"{r['train_minutes']:.1f}" if r["train_minutes"] is not None else "-",
            f"{r['trainable_parameters']:,}" if r["trainable_parameters"] is not None else "-", f"{r['size_mb']:.1f}",
        )  # fmt: skip
    console.print(table)
    if output is not None:
        console.print(f"Wrote {output}.")


@app.command()
def doctor(
    repair: Annotated[bool, typer.Option(help="Fix what can be fixed (see below); without it, only report.")] = False,
    checksums: Annotated[bool, typer.Option(help="Also verify every version's files against its checksum.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check that the registry's index and its files agree: every row has its artifact and checksum, every
    artifact folder its row, every alias a live version, every export pointer a valid export. --repair removes
    leftovers of killed processes (complete unreferenced models are moved to unregistered/, never deleted),
    drops rows whose files are gone and aliases that point nowhere. Exit code 1 while problems remain."""
    from tunesmith.doctor import check

    report = check(_registry(), repair=repair, checksums=checksums)
    if as_json:
        console.print_json(json.dumps(report.to_dict()))
    else:
        for title, findings in (("problem", report.problems), ("leftover", report.leftovers), ("kept", report.kept)):
            for f in findings:
                mark = " [repaired]" if f.repaired else ""
                console.print(f"{title}: {f.what}{mark}" + (f" ({f.path})" if f.path else ""), markup=False,
                              soft_wrap=True)  # fmt: skip
        verdict = "consistent" if report.consistent else "INCONSISTENT"
        console.print(f"{report.checked_versions} version(s) checked: {verdict}; {len(report.problems)} problem(s), "
                      f"{len(report.leftovers)} leftover(s)" + ("" if repair or report.clean else
                      "; run `tunesmith doctor --repair` to fix them") + ".", markup=False, soft_wrap=True)  # fmt: skip
    if not report.consistent:
        raise typer.Exit(1)


@models_app.command("list")
def models_list(
    name: Annotated[str | None, typer.Argument(help="Only this model's versions.")] = None, as_json: Json = False
) -> None:
    """List registered models and their versions, with each version's headline test metrics."""
    registry = _registry()
    names = [name] if name else registry.names()
    if as_json:
        _print_json([_version_record(v) for model in names for v in registry.versions(model)])
        return
    table = Table(title=f"Models in {registry.home}")
    for column in ("model", "version", "task", "aliases", "created", "test metrics"):
        table.add_column(column)
    for model in names:
        for v in registry.versions(model):
            keys = TASKS[v.task].headline_metrics if v.task in TASKS else tuple(v.metrics)
            shown = ", ".join(f"{k} {v.metrics[k]:.4f}" for k in keys if isinstance(v.metrics.get(k), float)) or "-"
            table.add_row(v.name, str(v.version), v.task, ", ".join(v.aliases), f"{v.created_at:%Y-%m-%d %H:%M}", shown)
    if not table.row_count:
        console.print("No models yet. Train one with `tunesmith train DATA`." if not name else f"No model {name!r}.")
        return
    console.print(table)


def _version_record(v: Any) -> dict[str, Any]:
    return {"ref": v.ref, "name": v.name, "version": v.version, "task": v.task, "aliases": v.aliases,
            "created_at": v.created_at.isoformat(), "metrics": v.metrics, "path": str(v.path)}  # fmt: skip


@models_app.command("show")
def models_show(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@ALIAS.")], as_json: Json = False
) -> None:
    """Show one version: where it lives, its data, settings and metrics."""
    version = _registry().resolve(ref)
    meta = read_meta(version.path)
    if as_json:
        export = read_export(version.path)
        _print_json({**_version_record(version), "meta": meta, "export": export})
        return
    console.print(f"[bold]{version.ref}[/bold]  aliases: {', '.join(version.aliases) or '-'}")
    console.print(f"path:       {version.path}")
    kind = {True: " (multi-label)", False: " (single-label)"}.get(meta.get("multi_label"), "")
    console.print(f"task:       {meta['task']}{kind}")
    console.print(f"base model: {meta['base_model']}  max_length: {meta['max_length']}  precision: {meta['precision']}")
    if meta.get("label_names"):
        console.print(f"labels:     {', '.join(meta['label_names'])}")
    console.print(
        f"data:       {meta['data']['train_file']}  {meta['data']['sizes']}  {meta['data']['fingerprint'][:23]}"
    )
    console.print(f"created:    {meta['created_at']}")
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in meta["metrics"].items())
    console.print(f"test:       {metrics}")
    if meta.get("baseline_metrics"):
        console.print(f"baseline:   {', '.join(f'{k} {v:.4f}' for k, v in meta['baseline_metrics'].items())}")
    console.print(f"report:     {version.path / 'report.md'}")
    export = read_export(version.path)
    if export is None:
        console.print(f"export:     none (`tunesmith export {version.ref}` for a faster server)")
    else:
        variants = ", ".join(
            f"{n} {v['agreement']:.2%}{'' if v['passed'] else ' FLAGGED'}" for n, v in export["variants"].items()
        )
        console.print(f"export:     ONNX, served as {export['default'] or 'pytorch'}; agreement {variants}")


@models_app.command("promote")
def models_promote(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION to promote (NAME alone: the latest version).")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "production",
) -> None:
    """Point an alias (default 'production') at a version."""
    if "@" not in ref:
        ref = f"{ref}@latest"
    version = _registry().promote(ref, alias)
    console.print(f"{version.name}@{alias} -> version {version.version}")


@models_app.command("register")
def models_register(
    folder: Annotated[Path, typer.Argument(help="A model folder, e.g. one a failed registration kept.")],
    name: Annotated[str | None, typer.Option(help="Name to register under (default: its trained name).")] = None,
) -> None:
    """Register a complete model folder as the next version of a name (the folder is copied in)."""
    version = _registry().register_folder(folder, name)
    console.print(f"Registered {version.ref}.")


@models_app.command("rollback")
def models_rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Option(help="Alias to move back.")] = "production",
) -> None:
    """Move an alias back to the version it pointed at before."""
    version = _registry().rollback(name, alias)
    console.print(f"{name}@{alias} -> version {version.version}")


@models_app.command("delete")
def models_delete(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION, or NAME for every version.")],
    force: Annotated[bool, typer.Option(help="Also delete versions an alias points at.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a version or a whole model, files included."""
    registry = _registry()
    name = ref.partition("@")[0]
    victims = [registry.resolve(ref)] if "@" in ref else registry.versions(name)
    if not victims:
        registry.resolve(name)  # raises the 'no such model' error
    what = ", ".join(v.ref for v in victims)
    if not yes and not typer.confirm(f"Delete {what}?", default=False):
        raise typer.Exit(1)
    deleted = registry.delete(ref, force=force)
    console.print(f"Deleted {', '.join(v.ref for v in deleted)}.")


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 1, usage mistakes one line and exit code
    2 (click's message, with its "Did you mean"), not a traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    # --verbose is a root option, but users add it at the end of a command line; take it from anywhere before `--`.
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in ("--verbose", "-v")]
    if flags:
        args = [a for a in args[:end] if a not in flags] + args[end:]
        args.insert(0, "--verbose")
    _state["verbose"] = bool(flags)
    try:
        code = app(args=args, prog_name="tunesmith", standalone_mode=False)
    except TunesmithError as exc:
        if _state["verbose"]:
            raise
        err_console.print(f"error: {exc}", style="red", markup=False, highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("Interrupted. Continue a training run with --resume.", style="yellow")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except TyperException as exc:  # typer's bundled click: usage errors and friends
        sys.exit(_usage_error(exc))
    if isinstance(code, int) and code:  # `raise typer.Exit(n)` in a command comes back as a return value here
        sys.exit(code)


def _usage_error(exc: TyperException) -> int:
    """Show a click exception as one `error:` line (with where to find help); return its exit code."""
    ctx = getattr(exc, "ctx", None)
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    possible = sorted(getattr(exc, "possibilities", None) or [])
    if possible:  # click's NoSuchOption: its close matches, said as for a mistyped command
        message = f"{getattr(exc, 'message', message)}. Did you mean {' or '.join(possible)}?"
    if message.lstrip().startswith("Usage:"):  # no arguments where some are needed: the help is the answer
        err_console.print(message, markup=False, highlight=False)
        return int(getattr(exc, "exit_code", 2))
    where = f" See '{ctx.command_path} --help'." if ctx is not None else ""
    text = " ".join(message.split())  # one line, whatever click wrapped
    err_console.print(f"error: {text}{where}", style="red", markup=False, highlight=False)
    return int(getattr(exc, "exit_code", 2))

if __name__ == "__main__":
    main()
