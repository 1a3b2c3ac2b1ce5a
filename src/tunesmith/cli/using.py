"""Commands that use a model: `predict`, `evaluate`, `export`, `serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from tunesmith.cli.app import app, console, open_registry, print_json, say, say_warnings
from tunesmith.cli.flags import BACKEND_HELP, Auth, Backend, Json, Quiet, described
from tunesmith.errors import DataError
from tunesmith.export import DEFAULT_MIN_AGREEMENT
from tunesmith.serving.settings import BatchSettings, ServeSettings
from tunesmith.tasks.catalog import TASKS


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
            print_json({"predictions": n, "output": str(output_file)})
        elif not quiet:
            console.print(f"Wrote {n} predictions to {output_file}.")
        return
    if as_json:
        print_json(task.predict_records(predictor, texts or [], **options))
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
        say(str(issue))
    if as_json:
        print_json({"report": str(folder / "report.md"), **result})
        return
    lines = TASKS[predictor.task].evaluation_lines(result)
    lines[-1] += f" Report: {folder / 'report.md'}"
    for line in lines:
        if line.startswith("warning"):
            say(line)
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

    version = open_registry().resolve(ref)
    task = TASKS[version.task]
    log = say_warnings if quiet or as_json else say
    if task.export_format == "onnx":
        log(f"Exporting {version.ref} to ONNX ...")
    record = export_artifact(version.path, quantize=quantize == "int8", min_agreement=min_agreement, log=log)
    if as_json:
        print_json(record)
        return
    if task.export_format != "onnx":
        for line in task.export_lines(version.ref, record):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        return
    if record["default"] is None:
        say(f"warning: no variant reached {min_agreement:.0%} agreement; the server will use PyTorch.")
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
    host: Annotated[str | None, typer.Option(help=described(ServeSettings, "host"))] = None,
    port: Annotated[int | None, typer.Option(help=described(ServeSettings, "port"))] = None,
    auth: Annotated[Auth, typer.Option(help=described(ServeSettings, "auth"))] = None,
    backend: Annotated[Backend | None, typer.Option(help=BACKEND_HELP + " (default: auto)")] = None,
    default_model: Annotated[str | None, typer.Option(help=described(ServeSettings, "default_model"))] = None,
    max_batch_size: Annotated[int | None, typer.Option(help=described(BatchSettings, "max_batch_size"))] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help=described(BatchSettings, "max_wait_ms"))] = None,
    max_texts_per_request: Annotated[
        int | None, typer.Option(help=described(ServeSettings, "max_texts_per_request"))
    ] = None,
    max_text_chars: Annotated[int | None, typer.Option(help=described(ServeSettings, "max_text_chars"))] = None,
    max_body_bytes: Annotated[int | None, typer.Option(help=described(ServeSettings, "max_body_bytes"))] = None,
    request_timeout: Annotated[float | None, typer.Option(help=described(ServeSettings, "request_timeout_s"))] = None,
    threads: Annotated[int | None, typer.Option(help=described(ServeSettings, "threads"))] = None,
    watch_interval: Annotated[float | None, typer.Option(help=described(ServeSettings, "watch_interval_s"))] = None,
    rate_limit: Annotated[float | None, typer.Option(help=described(ServeSettings, "rate_limit_per_s"))] = None,
    max_concurrent_requests: Annotated[
        int | None, typer.Option(help=described(ServeSettings, "max_concurrent_requests"))
    ] = None,
    protect_ops: Annotated[bool | None, typer.Option("--protect-ops", help=described(ServeSettings, "protect_ops"))] = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="JSON access log on stderr.")] = True,
    log_predictions: Annotated[
        bool | None, typer.Option("--log-predictions/--no-log-predictions", help=described(ServeSettings, "log_predictions"))
    ] = None,
    log_inputs: Annotated[str | None, typer.Option(help=described(ServeSettings, "log_inputs"))] = None,
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
        "log_predictions": log_predictions, "log_inputs": log_inputs,
    })  # fmt: skip
    run_server(settings, open_registry(), access_log_enabled=access_log)


@app.command()
def index(
    ref: Annotated[str, typer.Argument(help="An embedding model: NAME (as served: production, else latest) or NAME@VERSION.")],
    corpus: Annotated[Path, typer.Argument(help="The texts to search (CSV/TSV/JSONL/Parquet): a `text` column, an optional `id`.")],
    text_column: Annotated[str | None, typer.Option(help="Text column (default: text, document, passage or the only one).")] = None,
    id_column: Annotated[str | None, typer.Option(help="Id column (default: id, else the row number).")] = None,
    backend: Annotated[Backend, typer.Option(help=BACKEND_HELP)] = "auto",
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Embed a corpus into the model's search index (kept beside the model; re-embedded when the served version
    changes). Exact search for small corpora, an HNSW graph for large ones."""
    from tunesmith import api

    record = api.index(ref, corpus, registry=open_registry(), text_column=text_column, id_column=id_column,
                       backend=backend, log=lambda line: None if quiet or as_json else say(line))  # fmt: skip
    if as_json:
        print_json(record)
    elif not quiet:
        console.print(f"Indexed {record['size']:,} texts for {record['name']}@{record['version']} "
                      f"({record['kind']} search, {record['dimension']} dimensions).")  # fmt: skip


@app.command()
def search(
    ref: Annotated[str, typer.Argument(help="An embedding model with an index (`tunesmith index`).")],
    queries: Annotated[list[str], typer.Argument(help="One or more queries.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, max=1000, help="Matches per query.")] = 10,
    backend: Annotated[Backend, typer.Option(help=BACKEND_HELP)] = "auto",
    as_json: Json = False,
) -> None:
    """The texts of the model's index most similar to each query, best first, with their cosine similarity."""
    from tunesmith import api

    found = api.search(ref, list(queries), top_k=top_k, registry=open_registry(), backend=backend)
    if as_json:
        print_json([{"query": q, "hits": hits} for q, hits in zip(queries, found, strict=True)])
        return
    for query, hits in zip(queries, found, strict=True):
        table = Table(title=query, title_justify="left")
        for column in ("score", "id", "text"):
            table.add_column(column)
        for hit in hits:
            table.add_row(f"{hit['score']:.4f}", hit["id"], hit["text"][:100])
        console.print(table)
