"""The `tunesmith` command line: a thin typer layer that parses flags, calls the Python API, and prints what
the task renders. Commands live in modules by what they act on; importing them registers them on `app`, in
the order `tunesmith --help` lists them."""

from tunesmith.cli.app import app, main  # noqa: I001
from tunesmith.cli import training, data, using, registry, monitoring

__all__ = ["app", "data", "main", "monitoring", "registry", "training", "using"]
