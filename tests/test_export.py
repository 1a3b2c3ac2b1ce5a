"""ONNX export: the checked variants, their agreement with PyTorch, and the torch-free loading path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import private_copy
from test_cli import run
from tunesmith.artifact import EXPORT_DIR, EXPORT_META, read_export
from tunesmith.inference import length_batches
from tunesmith.registry import Registry
from tunesmith.tasks.text_classification.predictor import OnnxClassifier, TextClassifier, load_predictor


@pytest.fixture(scope="module")
def artifact(served_home: Path) -> Path:
    return Registry(served_home).resolve("support").path


def validation_texts(artifact: Path) -> list[str]:
    lines = (artifact / "data" / "validation.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines]


def test_export_records_checked_variants(artifact: Path) -> None:
    record = read_export(artifact)
    assert record is not None
    assert set(record["variants"]) == {"fp32", "int8"}
    for name, variant in record["variants"].items():
        assert (artifact / EXPORT_DIR / variant["file"]).is_file(), name
        assert 0 <= variant["agreement"] <= 1
        assert variant["passed"] == (variant["agreement"] >= record["min_agreement"])
        assert set(variant["metric_delta"]) == {"accuracy", "f1_macro", "f1_micro"}
    assert record["variants"]["fp32"]["agreement"] == 1.0
    assert record["variants"]["int8"]["size_mb"] < record["variants"]["fp32"]["size_mb"]
    passed = [n for n in ("int8", "fp32") if record["variants"][n]["passed"]]
    assert record["default"] == passed[0]
    assert record["checked_on"]["n"] == len(validation_texts(artifact))


def test_onnx_matches_pytorch(artifact: Path) -> None:
    texts = validation_texts(artifact) + ["", "a" * 2000, "refund " * 200]
    reference = TextClassifier.from_artifact(artifact).predict_proba(texts)
    fp32 = OnnxClassifier.from_artifact(artifact, variant="fp32").predict_proba(texts)
    assert np.abs(fp32 - reference).max() < 1e-4
    assert (fp32.argmax(1) == reference.argmax(1)).all()


def test_tokenizer_matches_transformers(artifact: Path) -> None:
    from transformers import AutoTokenizer

    model = OnnxClassifier.from_artifact(artifact)
    hf = AutoTokenizer.from_pretrained(artifact / "model")
    texts = ["Hello there", "", "ÉLAN vital — ünïcode", "word " * 500, "refund\tplease\n now"]
    expected = hf(texts, truncation=True, max_length=model.max_length)["input_ids"]
    assert model.encode(texts) == expected
    assert max(len(ids) for ids in expected) == model.max_length


def test_serving_path_does_not_import_torch(artifact: Path) -> None:
    script = (
        "import sys; from tunesmith.tasks.text_classification.predictor import load_predictor; from tunesmith import serving; "
        f"p = load_predictor({str(artifact)!r}); print(p.backend, p.predict(['where is my parcel'])[0].label); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    backend, label = out.splitlines()[0].split(" ", 1)
    assert backend.startswith("onnx-")
    assert label == TextClassifier.from_artifact(artifact).predict(["where is my parcel"])[0].label
    assert out.splitlines()[1] == "[]"


def test_flagged_variant_is_not_used(artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "artifact"
    shutil.copytree(artifact, copy, symlinks=True)
    meta_file = copy / EXPORT_DIR / EXPORT_META
    meta_file.chmod(0o644)
    record = json.loads(meta_file.read_text())

    record["variants"]["int8"]["passed"], record["default"] = False, "fp32"
    meta_file.write_text(json.dumps(record))
    assert load_predictor(copy).backend == "onnx-fp32"
    assert load_predictor(copy, "onnx-int8").backend == "onnx-int8"  # still there when asked for by name

    record["variants"]["fp32"]["passed"], record["default"] = False, None
    meta_file.write_text(json.dumps(record))
    assert load_predictor(copy).backend == "pytorch"

    (copy / EXPORT_DIR).unlink()  # the pointer: without it there is no export
    assert load_predictor(copy).backend == "pytorch"
    with pytest.raises(Exception, match="no ONNX export"):
        load_predictor(copy, "onnx")


def test_export_cli(trained_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = private_copy(trained_home, tmp_path / "home")
    code, out, err = run(capsys, "--home", str(home), "export", "support@1", "--min-agreement", "0.5")
    assert code == 0, err
    assert "fp32" in out and "int8" in out and "agreement" in out
    assert "Served by default" in out
    code, out, _ = run(capsys, "--home", str(home), "models", "show", "support")
    assert code == 0 and "export:     ONNX, served as" in out
    before = {p: p.stat().st_mtime for p in (home / "models").rglob("*") if p.is_file() and not {EXPORT_DIR, "exports"} & set(p.parts)}
    code, _, err = run(capsys, "--home", str(home), "export", "support", "--quantize", "none")
    assert code == 0, err
    record = read_export(Registry(home).resolve("support").path)
    assert record is not None and set(record["variants"]) == {"fp32"}  # replaced as a whole
    after = {p: p.stat().st_mtime for p in before}
    assert before == after  # the version's own files are never touched


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "tflite"], "'tflite' is not one of 'onnx'"),
        (["--quantize", "int4"], "'int4' is not one of 'int8', 'none'"),
        (["--min-agreement", "1.5"], "min_agreement must be in"),
    ],
)
def test_export_cli_errors(
    trained_home: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = run(capsys, "--home", str(trained_home), "export", "support", *args)
    assert code == (1 if "min_agreement" in message else 2)  # a value outside the flag's choices is a usage error
    assert message in err and "Traceback" not in err


def test_length_batches_keep_long_texts_apart() -> None:
    lengths = [10, 12, 300, 11, 9, 290, 10]
    batches = [list(b) for b in length_batches(lengths, max_batch=4)]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        longest, shortest = max(lengths[i] for i in batch), min(lengths[i] for i in batch)
        assert longest <= 2 * shortest  # a 300-token text never pads 10-token ones
        assert len(batch) <= 4
