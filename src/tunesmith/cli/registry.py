"""Commands over the registry: `models ...`, `keys ...`, `runs compare`, `doctor`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tunesmith.artifact import read_export, read_meta
from tunesmith.cli.app import app, canary_app, console, keys_app, models_app, open_registry, print_json, runs_app, say
from tunesmith.cli.flags import Json
from tunesmith.errors import DataError
from tunesmith.tasks.catalog import TASKS


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A name for the key (who or what uses it).")],
    scope: Annotated[list[str] | None, typer.Option(help="read (predictions), feedback (read + sending feedback) or admin (everything: reload, aliases).")] = None,
) -> None:
    """Create an API key. It is printed once; only its hash is stored."""
    key = open_registry().create_key(name, scope or ["read"])
    say(f"Created key {name!r} with scope {', '.join(scope or ['read'])}. Store it now; it cannot be shown again:")
    print(key)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (names and scopes; keys themselves are not stored)."""
    table = Table("name", "scopes", "created")
    for key in open_registry().api_keys():
        table.add_row(key.name, ", ".join(key.scopes), f"{key.created_at:%Y-%m-%d %H:%M}")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="Name of the key to revoke.")]) -> None:
    """Revoke an API key; running servers refuse it within seconds."""
    open_registry().revoke_key(name)
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

    registry = open_registry()
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
        print_json(rows)
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

    report = check(open_registry(), repair=repair, checksums=checksums)
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
    registry = open_registry()
    names = [name] if name else registry.names()
    if as_json:
        print_json([_version_record(v) for model in names for v in registry.versions(model)])
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
    version = open_registry().resolve(ref)
    meta = read_meta(version.path)
    if as_json:
        export = read_export(version.path)
        print_json({**_version_record(version), "meta": meta, "export": export})
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
    lineage = meta.get("lineage")
    if lineage:
        rows = lineage["rows"]
        console.print(f"lineage:    retrained from {lineage['parent']} ({lineage['strategy']}): {rows['feedback']} feedback "
                      f"+ {rows['files']} file rows, {rows['replayed']} of {rows['old']} old rows replayed; rows "
                      f"{lineage['fingerprints']['training_rows']}")  # fmt: skip
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
    force: Annotated[bool, typer.Option("--force", help="Promote to production without a passing gate.")] = False,
) -> None:
    """Point an alias (default 'production') at a version. A new production version must first pass
    `tunesmith gate` against the current one (--force to skip)."""
    from tunesmith.gating import check_promotion

    if "@" not in ref:
        ref = f"{ref}@latest"
    registry = open_registry()
    target = registry.resolve(ref)
    check_promotion(registry, target.ref, alias, force)
    version = registry.promote(target.ref, alias)
    console.print(f"{version.name}@{alias} -> version {version.version}")


@app.command()
def gate(
    candidate: Annotated[str, typer.Argument(help="NAME@VERSION to judge.")],
    against: Annotated[str, typer.Option(help="The alias (or version) it must not fall behind.")] = "production",
    confidence: Annotated[float, typer.Option(help="Confidence of the paired test on the test split.")] = 0.95,
    max_latency_ratio: Annotated[float, typer.Option(help="Slowest the candidate may be, as a ratio.")] = 1.5,
    as_json: Json = False,
) -> None:
    """The regression gate: score CANDIDATE and production on production's frozen test split (paired McNemar
    test: not worse beyond noise), on the feedback received (must be better), for latency and for its export's
    agreement. A pass moves the `candidate` alias and lets `models promote` move production. Exit code 1 on a fail."""
    from tunesmith.gating import gate as run_gate

    result = run_gate(open_registry(), candidate, against, confidence=confidence,
                      max_latency_ratio=max_latency_ratio, log=say)  # fmt: skip
    if as_json:
        print_json(result.to_dict())
    else:
        show_gate(result)
    if not result.passed:
        raise typer.Exit(1)


def show_gate(result: Any) -> None:
    """A gate's verdict as a table, criterion by criterion (`gate`, `retrain`)."""
    table = Table("criterion", "verdict", "detail", title=f"gate: {result.candidate} against {result.against}")
    for c in result.criteria:
        table.add_row(c.name, {True: "pass", False: "FAIL", None: "-"}[c.passed], c.detail)
    console.print(table)
    console.print(f"{result.candidate} {'passed: the candidate alias points at it' if result.passed else 'failed'}.")


@models_app.command("register")
def models_register(
    folder: Annotated[Path, typer.Argument(help="A model folder, e.g. one a failed registration kept.")],
    name: Annotated[str | None, typer.Option(help="Name to register under (default: its trained name).")] = None,
) -> None:
    """Register a complete model folder as the next version of a name (the folder is copied in)."""
    version = open_registry().register_folder(folder, name)
    console.print(f"Registered {version.ref}.")


@models_app.command("rollback")
def models_rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Option(help="Alias to move back.")] = "production",
) -> None:
    """Move an alias back to the version it pointed at before."""
    version = open_registry().rollback(name, alias)
    console.print(f"{name}@{alias} -> version {version.version}")


@models_app.command("delete")
def models_delete(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION, or NAME for every version.")],
    force: Annotated[bool, typer.Option(help="Also delete versions an alias points at.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a version or a whole model, files included."""
    registry = open_registry()
    name = ref.partition("@")[0]
    victims = [registry.resolve(ref)] if "@" in ref else registry.versions(name)
    if not victims:
        registry.resolve(name)  # raises the 'no such model' error
    what = ", ".join(v.ref for v in victims)
    if not yes and not typer.confirm(f"Delete {what}?", default=False):
        raise typer.Exit(1)
    deleted = registry.delete(ref, force=force)
    console.print(f"Deleted {', '.join(v.ref for v in deleted)}.")


@canary_app.command("start")
def canary_start(
    name: Annotated[str, typer.Argument(help="The served model's name.")],
    alias: Annotated[str, typer.Option(help="The alias whose version gets the share.")] = "candidate",
    share: Annotated[float, typer.Option(help="Share of users (by X-Tunesmith-User, key, or address) it answers.")] = 0.1,
    shadow: Annotated[bool, typer.Option("--shadow", help="Copy every request to it instead; its answers are logged "
                                         "and compared, never returned.")] = False,
) -> None:
    """Start a canary (or shadow) of NAME@ALIAS; running servers pick it up at their next look (watch interval)."""
    split = open_registry().start_canary(name, alias, share, "shadow" if shadow else "canary")
    what = "a shadow copy of all requests" if shadow else f"{split['share']:.0%} of users"
    console.print(f"{name}@{alias} (version {split['version']}) now gets {what}.")


@canary_app.command("status")
def canary_status(name: Annotated[str, typer.Argument(help="The served model's name.")], as_json: Json = False) -> None:
    """The split in force for NAME, if any, and how the last ones ended (automatic rollbacks with why)."""
    registry = open_registry()
    split = registry.canary_table().get(name)
    events = registry.canary_events(name)
    if as_json:
        print_json({"split": split, "events": events})
        return
    if split is None:
        console.print(f"No canary for {name}: production answers everything.")
    else:
        console.print(f"{name}: {split['mode']} of @{split['alias']}, share {split['share']:.0%}, since "
                      f"{split['started_at']:%Y-%m-%d %H:%M}.")  # fmt: skip
    for event in events:
        console.print(f"  {event['at']:%Y-%m-%d %H:%M:%S} {event['event'].replace('_', ' ')}: {event['detail']}",
                      markup=False, highlight=False)  # fmt: skip


@canary_app.command("abort")
def canary_abort(name: Annotated[str, typer.Argument(help="The served model's name.")]) -> None:
    """End the split: production answers everything again."""
    stopped = open_registry().stop_canary(name)
    console.print(f"Canary of {name} ended." if stopped else f"No canary for {name} was running.")


@canary_app.command("promote")
def canary_promote(
    name: Annotated[str, typer.Argument(help="The served model's name.")],
    force: Annotated[bool, typer.Option("--force", help="Promote without a passing gate.")] = False,
) -> None:
    """Move production to the canary's version (the gate's verdict is required) and end the split."""
    from tunesmith.errors import ConflictError
    from tunesmith.gating import check_promotion

    registry = open_registry()
    split = registry.canary_table().get(name)
    if split is None:
        raise ConflictError(f"No canary for {name} is running: start one with `tunesmith canary start {name}`.")
    target = registry.resolve(f"{name}@{split['alias']}")
    check_promotion(registry, target.ref, "production", force)
    registry.promote(target.ref, "production")
    registry.stop_canary(name)
    console.print(f"{name}@production -> version {target.version}; the canary has ended.")
