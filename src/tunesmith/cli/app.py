"""The `tunesmith` command line: the typer apps, the consoles, the shared printing, and `main` (user errors
become one line and exit code 1, usage mistakes one line and exit code 2)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.exceptions import TyperException

from tunesmith.errors import TunesmithError
from tunesmith.tasks.base import Summary

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


canary_app = typer.Typer(context_settings=HELP, help="Traffic splits: send a share of a model's requests to another "
                         "version (sticky per user), or a shadow copy of all of them.", no_args_is_help=True)


app.add_typer(canary_app, name="canary")


runs_app = typer.Typer(context_settings=HELP, help="Compare training runs (registered versions).", no_args_is_help=True)


app.add_typer(runs_app, name="runs")


console = Console()


err_console = Console(stderr=True, soft_wrap=True)  # one message, one line: no wrapping at 80 columns


_state = {"verbose": False}


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def draw(summary: Summary) -> Table:
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


def open_registry() -> Any:
    from tunesmith.registry import Registry

    return Registry()


def say(message: str) -> None:
    style = "yellow" if message.startswith("warning") else None
    err_console.print(message, style=style, markup=False, highlight=False)


def say_warnings(message: str) -> None:
    """The log of --quiet and --json runs: warnings only."""
    if message.startswith(("warning", "hint")):
        say(message)


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


