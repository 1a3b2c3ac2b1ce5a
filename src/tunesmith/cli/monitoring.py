"""Commands after release: `logs` (the prediction log), `feedback` (what users said), `monitor` (drift, estimated
accuracy), `watch` (the retrain -> gate -> canary -> promote loop)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunesmith.cli.app import app, console, open_registry, print_json, say
from tunesmith.cli.flags import Json
from tunesmith.errors import DataError

Since = Annotated[str | None, typer.Option(help="How far back: 30m, 24h, 7d (default: everything).")]


@app.command()
def logs(
    name: Annotated[str, typer.Argument(help="The served model's name.")],
    since: Since = "24h",
    output: Annotated[Path, typer.Option("--output", "-o", help="Write here: .jsonl, .csv or .parquet.")] = Path(
        "predictions.jsonl"
    ),
    as_json: Json = False,
) -> None:
    """Export the prediction log of a served model (inputs masked unless the server was told otherwise)."""
    from tunesmith.monitoring.predictions import export_predictions
    from tunesmith.paths import check_name

    registry = open_registry()
    n = export_predictions(registry.home, check_name(name.partition("@")[0]), output, since)
    if as_json:
        print_json({"model": name, "rows": n, "output": str(output)})
        return
    say(f"Wrote {n} logged predictions of {name!r}{f' from the last {since}' if since else ''} to {output}.")


@app.command()
def feedback(
    name: Annotated[str, typer.Argument(help="The served model's name.")],
    export: Annotated[Path | None, typer.Option(help="Write the feedback as a training file (.jsonl).")] = None,
    include_held_out: Annotated[bool, typer.Option("--all", help="Export the held-out fifth too (the gate then "
                                                   "judges on feedback the candidate trained on).")] = False,
    since: Since = None,
    as_json: Json = False,
) -> None:
    """Show the feedback a served model received, or --export it as training data in the task's own format
    (`tunesmith train` reads it)."""
    from tunesmith.monitoring.feedback import export_feedback, read_feedback
    from tunesmith.paths import check_name
    from tunesmith.tasks.catalog import TASKS

    registry = open_registry()
    model = check_name(name.partition("@")[0])
    if export is not None:
        task = TASKS[registry.resolve(model).task]
        n = export_feedback(registry.home, model, task, export, since, include_held_out)
        if as_json:
            print_json({"model": model, "rows": n, "output": str(export)})
        else:
            kept = "" if include_held_out else " (one input in five is held out for `tunesmith gate`; --all exports it too)"
            say(f"Wrote {n} feedback rows of {model!r} to {export}{kept}. Train on them with the original data.")
        return
    records = list(read_feedback(registry.home, model, since))
    if as_json:
        print_json(records)
        return
    graded = [r["correct"] for r in records if r["correct"] is not None]
    right = f"; the model was right on {sum(graded)} of {len(graded)}" if graded else ""
    say(f"{len(records)} feedback rows for {model!r}{right}.")


@app.command()
def monitor(
    ref: Annotated[str, typer.Argument(help="NAME (or NAME@ALIAS: whose artifact holds the reference).")],
    since: Since = "24h",
    reference: Annotated[str, typer.Option(help="validation, test, or a FILE of texts.")] = "validation",
    output: Annotated[Path | None, typer.Option(help="Report folder (default: under the model's log folder).")] = None,
    as_json: Json = False,
) -> None:
    """Compare recent traffic with the training-time reference: input drift (a domain classifier on embeddings,
    text descriptors), label and confidence drift, accuracy estimated without labels (CBPE) and from feedback.
    Writes monitor.html and monitor.json."""
    from tunesmith.monitoring.report import monitor as run_monitor

    if reference not in ("validation", "test") and not Path(reference).is_file():
        raise DataError(f"--reference {reference!r}: write validation, test, or the path of a file of texts.")
    result = run_monitor(open_registry(), ref, since=since, reference=reference, output=output)
    if as_json:
        print_json(result.report)
        return
    report = result.report
    accuracy = report["accuracy"]
    console.print(f"{report['predictions']} predictions of {report['ref']} since {since}.")
    for line in report["alerts"] or ["No drift found (p < 0.01)."]:
        console.print(f"- {line}", markup=False, highlight=False)
    shown = {"estimated accuracy": accuracy["estimated"], "reference accuracy": accuracy["reference"],
             "realised accuracy (feedback)": accuracy["realised"]}  # fmt: skip
    console.print(", ".join(f"{k} {v:.3f}" for k, v in shown.items() if v is not None) or "no accuracy figures")
    say(f"Report: {result.html}")


@app.command()
def watch(
    name: Annotated[str, typer.Argument(help="The served model's name.")],
    interval: Annotated[float, typer.Option(help="Seconds between passes.")] = 300.0,
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit (for cron or a systemd timer).")] = False,
    strategy: Annotated[str, typer.Option(help="How to retrain (see `tunesmith retrain`).")] = "rehearsal",
    min_feedback: Annotated[int, typer.Option(help="New training feedback that starts a retrain by itself.")] = 200,
    drift_min_feedback: Annotated[
        int, typer.Option(help="New feedback enough to retrain when monitoring raised an alert.")
    ] = 50,
    since: Annotated[str, typer.Option(help="The traffic monitoring compares: 30m, 24h, 7d.")] = "24h",
    canary_share: Annotated[float, typer.Option(help="Traffic share of a passing candidate's canary (0: none, "
                                                "promote at once).")] = 0.1,
    canary_min_requests: Annotated[int, typer.Option(help="Logged answers of the canary before promotion.")] = 200,
    canary_minutes: Annotated[float, typer.Option(help="Minutes a canary runs at least before promotion.")] = 60.0,
    set_: Annotated[list[str] | None, typer.Option("--set", help="A setting of the retrain, section.key=value.")] = None,
) -> None:
    """The loop, off until started: monitor -> retrain when feedback (or drift with some feedback) crosses its
    threshold -> gate -> canary -> promote, or end the round on a failed gate or a rollback. Every step is logged
    (watch/NAME.log.jsonl in the home); stopped at any point, it resumes where it was."""
    from tunesmith.paths import check_name
    from tunesmith.watching import Watch, WatchSettings, check_settings

    settings = check_settings(WatchSettings(
        strategy=strategy, min_feedback=min_feedback, drift_min_feedback=drift_min_feedback, since=since,
        canary_share=canary_share, canary_min_requests=canary_min_requests, canary_minutes=canary_minutes,
        overrides=tuple(set_ or ())))  # fmt: skip
    loop = Watch(open_registry(), check_name(name), settings, log=say)
    loop.run(interval, passes=1 if once else None)
