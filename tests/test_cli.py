"""Every CLI command, in process, as a user types it; errors are one line and exit code 1."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import private_copy
from tunesmith import cli


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `tunesmith ARGS` in this process; return (exit code, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["tunesmith", *args]
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def home(trained_home: Path, tmp_path: Path) -> Path:
    """A private copy of the trained registry, so tests that change it do not affect others."""
    return private_copy(trained_home, tmp_path / "home")


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["train"],
        ["predict"],
        ["models"],
        ["models", "list"],
        ["models", "show"],
        ["models", "promote"],
        ["models", "rollback"],
        ["models", "delete"],
        ["inspect"],
        ["suggest"],
        ["tune"],
        ["zeroshot"],
        ["export"],
        ["serve"],
    ],
)
def test_every_command_has_help(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0 and "Usage:" in out


def test_train_with_defaults_on_the_embedded_model(capsys, tmp_path: Path, support_rows) -> None:
    # `tunesmith train data.csv` with no other flag, on the real default model (a small slice).
    data = tmp_path / "tickets.csv"
    with data.open("w", newline="") as handle:
        csv.writer(handle).writerows([("text", "label"), *support_rows[:60]])
    code, out, err = run(capsys, "--home", str(tmp_path / "h"), "train", str(data), "--max-steps", "4", "--no-progress")
    assert code == 0, err
    assert "tickets@1" in out and "TF-IDF baseline" in out
    # 54 rows (6 validation rows folded in), 9 a class: few-shot by default, and the step limit holds for it too.
    assert "Data: 54 train (the validation rows among them)" in err and "few-shot training" in err
    assert "(4 steps)" in err
    assert "inspect: " in err  # the quick data checks ran first


def test_predict_texts_and_files(capsys, home: Path, tmp_path: Path) -> None:
    code, out, err = run(capsys, "--home", str(home), "predict", "support", "where is my parcel", "refund me please")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].endswith("where is my parcel") and lines[1].endswith("refund me please")

    source = tmp_path / "in.csv"
    texts = ["my order is late", "I can't log in", "the lamp is broken", "cancel my plan"]
    with source.open("w", newline="") as handle:
        csv.writer(handle).writerows([("id", "message"), *enumerate(texts)])
    code, _, err = run(
        capsys, "--home", str(home), "predict", "support@1", "-i", str(source), "-o", str(tmp_path / "out.csv")
    )
    assert code == 0, err
    with (tmp_path / "out.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["message"] for r in rows] == texts and [r["id"] for r in rows] == ["0", "1", "2", "3"]
    score_columns = [c for c in rows[0] if c.startswith("score_")]
    assert len(score_columns) == 6 and all(r["predicted_label"] for r in rows)
    for row in rows:  # the reported label is the highest-scoring class of the same row
        best = max(score_columns, key=lambda c: float(row[c]))
        assert best == f"score_{row['predicted_label']}"

    code, _, err = run(
        capsys, "--home", str(home), "predict", "support", "-i", str(source), "-o", str(tmp_path / "out.jsonl")
    )
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert code == 0 and [r["message"] for r in records] == texts and len(records[0]["scores"]) == 6


def test_models_list_show_promote_rollback_delete(capsys, home: Path, tiny_model: str, support_csv: Path) -> None:
    h = ["--home", str(home)]
    code, out, _ = run(capsys, *h, "train", str(support_csv), "--name", "support", "--model", tiny_model, "--epochs", "1",
                       "--no-progress")  # fmt: skip
    assert code == 0 and "support@2" in out
    assert run(capsys, *h, "models", "promote", "support@1")[1].strip() == "support@production -> version 1"
    code, _, err = run(capsys, *h, "models", "promote", "support@2")  # not gated against production (version 1)
    assert code == 1 and "tunesmith gate support@2" in err and "--force" in err
    assert run(capsys, *h, "models", "promote", "support@2", "--force")[1].strip() == "support@production -> version 2"
    code, out, _ = run(capsys, *h, "models", "list")
    assert code == 0 and "production" in out and out.count("support") >= 2
    code, out, _ = run(capsys, *h, "models", "show", "support@production")
    assert code == 0 and "support@2" in out and "fingerprint" not in out and "sha256:" in out
    assert run(capsys, *h, "models", "rollback", "support")[1].strip() == "support@production -> version 1"
    code, _, err = run(capsys, *h, "models", "delete", "support@1", "--yes")
    assert code == 1 and "Refusing to delete aliased" in err
    code, out, _ = run(capsys, *h, "models", "delete", "support@2", "--yes")
    assert code == 0 and "Deleted support@2" in out


def test_evaluate_on_a_labeled_file(capsys, home: Path, tmp_path: Path, support_rows) -> None:
    data = tmp_path / "fresh.csv"
    with data.open("w", newline="") as handle:
        csv.writer(handle).writerows(
            [("message", "intent"), *support_rows[:30], ("a brand new kind of request", "upgrade")]
        )
    out = tmp_path / "eval"
    code, stdout, err = run(capsys, "--home", str(home), "evaluate", "support@1", str(data), "-o", str(out))
    assert code == 0, err
    assert "30 texts scored" in stdout and "1 row(s) carry labels the model does not know (upgrade)" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == 30 and metrics["skipped_rows"] == 1
    assert (out / "confusion_matrix.png").is_file() and "| accuracy |" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "missing.csv"], "does not exist"),
        (["predict", "nomodel", "hi"], "No model named 'nomodel'"),
        (["predict", "support@7", "hi"], "no version 7"),
        (["predict", "support"], "Nothing to predict"),
        (["train", "x.csv", "--set", "train.nope=1"], "Unknown setting 'train.nope'"),
        (["models", "rollback", "support"], "never been set"),
    ],
)
def test_user_errors_are_one_line_without_traceback(capsys, home: Path, args: list[str], message: str) -> None:
    code, _, err = run(capsys, "--home", str(home), *args)
    assert code == 1
    assert message in err and "Traceback" not in err and err.startswith("error:")


def test_installed_entry_point_reports_errors_cleanly(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("tunesmith")
    result = subprocess.run([str(exe), "--home", str(tmp_path), "train", str(tmp_path / "nope.csv")],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1 and "does not exist" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["train"], "Missing argument 'DATA'"),
        (["train", "x.csv", "--epoch", "3"], "Did you mean --epochs?"),
        (["models", "lst"], "Did you mean 'list'?"),
        (["predict"], "Missing argument"),
        (["train", "x.csv", "--epochs", "many"], "Invalid value"),
        (["frobnicate"], "No such command"),
    ],
)
def test_usage_mistakes_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], says: str) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert says.lower() in err.lower() and "--help" in err
    assert "Traceback" not in err + out


def test_usage_mistake_as_installed_command_has_no_traceback(tmp_path: Path) -> None:
    # The console script, as a user runs it (in-process runs cannot show what the entry point prints).
    done = subprocess.run([str(Path(sys.executable).parent / "tunesmith"), "models", "lst"],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: No such command 'lst'. Did you mean 'list'? See 'tunesmith models --help'."
    ]


def test_short_help_version_and_trailing_verbose(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    code, out, _ = run(capsys, "models", "-h")
    assert code == 0 and "Usage:" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("tunesmith ")
    code, out, err = run(capsys, "--home", str(home), "models", "list", "--verbose")
    assert code == 0 and "support" in out, err
    # --verbose after the command turns on tracebacks for errors, as before it does
    with pytest.raises(Exception, match="No model named"):
        run(capsys, "--home", str(home), "models", "show", "nothere", "--verbose")


def test_flags_with_fixed_values_show_their_choices_and_defaults(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # the help table uncut
    _, out, _ = run(capsys, "train", "--help")
    flat = " ".join(out.split())
    assert "auto|bf16|fp32" in flat and "(default: auto)" in flat  # --precision
    assert "text-classification|token-classification|question-answering|text-generation" in flat.replace(" ", "")
    assert "full|lora|adalora|ia3|frozen|fewshot|baseline|prefix" in flat.replace(" ", "")
    _, out, _ = run(capsys, "serve", "--help")
    assert "auto|on|off" in "".join(out.split()) and "pytorch" in out
    code, _, err = run(capsys, "train", "x.csv", "--precision", "fp16")
    assert code == 2 and "fp16" in err and "bf16" in err


def test_json_output_is_json_on_stdout(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    h = ["--home", str(home)]
    code, out, _ = run(capsys, *h, "models", "list", "--json")
    listed = json.loads(out)
    assert code == 0 and listed[0]["ref"] == "support@1" and listed[0]["task"] == "text-classification"
    code, out, _ = run(capsys, *h, "models", "show", "support", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["meta"]["label_names"] and Path(shown["path"], "tunesmith.json").is_file()
    code, out, _ = run(capsys, *h, "predict", "support", "where is my parcel", "--json")
    predicted = json.loads(out)
    assert code == 0 and predicted[0]["text"] == "where is my parcel" and set(predicted[0]["scores"]) == set(
        shown["meta"]["label_names"]
    )


def _documented_commands() -> list[tuple[str, str, list[str]]]:
    """(file, command line, its --flags) for every `tunesmith ...` line in a code block of the README and docs/."""
    import re

    root = Path(__file__).resolve().parents[1]
    found = []
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        in_code = False
        text = doc.read_text(encoding="utf-8").replace("\\\n", " ")  # a command continued on the next line
        for line in text.splitlines():
            if line.strip().startswith("```"):
                in_code = not in_code
                continue
            if in_code and re.match(r"\s*(\$ )?tunesmith ", line):
                found.append((doc.name, line.strip(), re.findall(r"(?<![\w-])--?[a-zA-Z][\w-]*", line)))
    return found


def test_every_flag_the_docs_show_exists_on_its_command() -> None:
    """The README and docs/ are checked against the CLI itself: a renamed or missing flag fails here."""
    import shlex

    import typer.main

    root = typer.main.get_command(cli.app)
    documented = _documented_commands()
    assert len(documented) > 20
    problems = []
    for doc, line, flags in documented:
        try:
            words = shlex.split(line.split(" #")[0].removeprefix("$ "))[1:]
        except ValueError:
            words = line.split()[1:]
        words = [w for w in words if not w.startswith("-")]
        command, ctx_params = root, {p for p in root.params for p in p.opts}
        for word in words:  # walk down the command groups as far as the words name subcommands
            sub = getattr(command, "commands", {}).get(word)
            if sub is None:
                break
            command = sub
        known = ctx_params | {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"-h", "--help"}
        problems += [f"{doc}: `{line}`: {flag}" for flag in flags if flag not in known]
    assert problems == []
