"""Artifacts written by an earlier tunesmith still load, predict, score the same, export and register."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import tunesmith
from test_cli import run

LEGACY = Path(__file__).parent / "data" / "legacy"


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    target = tmp_path / "legacy"
    shutil.copytree(LEGACY, target, symlinks=True)
    return target


def test_an_old_text_classifier_loads_on_both_backends_and_scores_as_recorded(legacy: Path, tmp_path: Path) -> None:
    folder = legacy / "support"
    recorded = json.loads((folder / "metrics.json").read_text())["test"]
    pytorch = tunesmith.load_model(folder, backend="pytorch")
    assert pytorch.task == "text-classification" and pytorch.backend == "pytorch"
    report = tunesmith.evaluate(pytorch, folder / "data" / "test.jsonl", tmp_path / "again")
    assert report["test"]["accuracy"] == pytest.approx(recorded["accuracy"], abs=1e-9)
    onnx = tunesmith.load_model(folder)  # auto: the export the old release wrote and checked
    assert onnx.backend.startswith("onnx-")
    texts = ["where is my parcel", "refund please"]
    assert [p.label for p in onnx.predict(texts)] == [p.label for p in pytorch.predict(texts)]


def test_an_old_token_classifier_loads_and_scores_as_recorded(legacy: Path, tmp_path: Path) -> None:
    folder = legacy / "people"
    recorded = json.loads((folder / "metrics.json").read_text())["test"]
    tagger = tunesmith.load_model(folder)
    assert tagger.task == "token-classification"
    report = tunesmith.evaluate(tagger, folder / "data" / "test.jsonl", tmp_path / "again")
    assert report["test"]["f1"] == pytest.approx(recorded["f1"], abs=1e-9)


def test_old_artifacts_register_show_and_export_with_todays_cli(
    legacy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h = ["--home", str(tmp_path / "home")]
    for name in ("support", "people"):
        code, out, err = run(capsys, *h, "models", "register", str(legacy / name))
        assert code == 0 and f"Registered {name}@1" in out, err
    code, out, _ = run(capsys, *h, "models", "show", "support", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["task"] == "text-classification" and shown["meta"]["format"] == 1
    code, out, err = run(capsys, *h, "export", "people", "--json")
    assert code == 0 and json.loads(out)["default"] in ("int8", "fp32", None), err
    code, out, err = run(capsys, *h, "predict", "people", "dave moved to oslo", "--json")
    assert code == 0 and isinstance(json.loads(out)[0]["entities"], list), err
