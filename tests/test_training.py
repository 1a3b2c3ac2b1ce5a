"""End-to-end training on a tiny model: artifact contents, row alignment, resume, multi-label, budgets."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import tunesmith
from conftest import Stopped, stop_at, write_csv, write_jsonl
from tunesmith.errors import ConfigError
from tunesmith.registry import Registry


def test_train_registers_a_complete_self_describing_artifact(train_tiny, support_csv: Path, registry: Registry) -> None:
    result = train_tiny(support_csv, name="support")
    path = result.version.path
    assert result.version.ref == "support@1"
    for name in ("model/model.safetensors", "model/config.json", "model/tokenizer.json", "config.yaml",
                 "metrics.json", "report.md", "confusion_matrix.png", "learning_curve.png", "misclassified.csv",
                 "data/validation.jsonl", "data/test.jsonl", "tunesmith.json"):  # fmt: skip
        assert (path / name).is_file(), name
    assert not list(path.rglob("*.bin")) and not list(path.rglob("*.pkl"))  # safetensors only
    meta = json.loads((path / "tunesmith.json").read_text())
    assert meta["label_names"] == sorted({label for _, label in _rows(support_csv)})
    assert meta["data"]["fingerprint"].startswith("sha256:")
    assert {"torch", "transformers"} <= set(meta["library_versions"])
    assert tunesmith.load_config(path / "config.yaml").train.base_model == meta["base_model"]
    metrics = json.loads((path / "metrics.json").read_text())
    assert set(metrics["test"]["per_class"]) == set(meta["label_names"])
    assert 0 <= metrics["baseline"]["accuracy"] <= 1 and metrics["baseline"]["model"].startswith("tf-idf")
    report = (path / "report.md").read_text()
    assert "| accuracy |" in report and "confusion_matrix.png" in report
    assert not (registry.home / "runs" / "support").exists()  # checkpoints cleaned once registered


def _rows(path: Path) -> list[tuple[str, str]]:
    import csv

    with path.open() as handle:
        return [tuple(r) for r in list(csv.reader(handle))[1:]]


def test_predictions_line_up_with_their_input_rows(trained_home: Path) -> None:
    # Texts of very different lengths in a scrambled order: the sorted-by-length batching must
    # still return row i's prediction for text i (see the length-grouping pitfall in MEASURED.md).
    model = tunesmith.load_model("support", registry=Registry(trained_home))
    texts = [json.loads(line)["text"] for line in (model_path(trained_home) / "data/test.jsonl").open()]
    texts += ["refund " * n for n in (1, 9, 30)] + ["where is my order"]
    random.Random(0).shuffle(texts)
    batched = model.predict_proba(texts, batch_size=4)
    one_by_one = np.stack([model.predict_proba([t])[0] for t in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    reversed_ = model.predict_proba(texts[::-1], batch_size=4)[::-1]
    np.testing.assert_allclose(batched, reversed_, atol=1e-5)


def model_path(home: Path) -> Path:
    return Registry(home).resolve("support").path


def test_tiny_model_learns_the_task(trained_home: Path, support_rows: list[tuple[str, str]]) -> None:
    # 12 test rows are too few to judge a random 2-layer model; all 120 rows show whether it learned.
    model = tunesmith.load_model(str(model_path(trained_home)))
    predicted = [p.label for p in model.predict([text for text, _ in support_rows])]
    accuracy = np.mean([p == label for p, (_, label) in zip(predicted, support_rows, strict=True)])
    assert accuracy > 0.8  # chance is 1/6; this model reaches 0.95


def test_thresholds_are_tuned_per_label_where_validation_has_enough_examples() -> None:
    from tunesmith.tasks.text_classification.evaluation import MIN_POSITIVES, tune_thresholds

    rng = np.random.default_rng(0)
    truth = np.zeros((400, 3), dtype=np.int64)
    truth[:200, 0] = 1  # label 0: positives score ~0.35, negatives ~0.1 -> a low threshold
    truth[:100, 1] = 1  # label 1: negatives reach 0.6, positives ~0.85 -> a high threshold
    truth[:MIN_POSITIVES - 1, 2] = 1  # label 2: too rare to tune
    probs = np.stack([np.where(truth[:, 0], 0.35, 0.1), np.where(truth[:, 1], 0.85, 0.6), np.full(400, 0.2)], axis=1)
    probs = np.clip(probs + rng.normal(0, 0.02, probs.shape), 0, 1)
    thresholds, rare = tune_thresholds(truth, probs)
    assert 0.1 < thresholds[0] <= 0.35 and 0.6 < thresholds[1] <= 0.85 and rare == [2]
    assert (probs[:, :2] >= thresholds[:2]).astype(int).tolist() == truth[:, :2].tolist()  # both separated exactly


def test_a_fresh_multi_label_head_starts_at_the_label_priors(train_tiny, tmp_path: Path, monkeypatch) -> None:
    # A fresh head at bias 0 puts every label at even odds; a rare label then spends the first steps (in a
    # budget, much of the run) learning that it is rare.
    from tunesmith.tasks.text_classification import training

    given = stop_at(monkeypatch, training, "load_classifier")
    records = [{"text": f"text {i}", "labels": ["common"] + (["rare"] if i % 10 == 0 else [])} for i in range(200)]
    data = write_jsonl(tmp_path / "multi.jsonl", records)
    with pytest.raises(Stopped):
        train_tiny(data, name="priors", method="full", class_weights=False)
    common, rare = given["head_bias"]  # labels sorted by name
    assert common > 3 and -2.5 < rare < -1.8  # log-odds of ~100 % and ~10 % of the training rows
    given.clear()
    with pytest.raises(Stopped):
        train_tiny(data, name="priors", method="full", class_weights=True)
    assert given["head_bias"] is None  # the weighted loss balances the labels instead
    given.clear()
    single = write_csv(tmp_path / "single.csv", [(f"text {i}", "rare" if i % 10 == 0 else "common") for i in range(200)])
    with pytest.raises(Stopped):
        train_tiny(single, name="priors", method="full")
    assert given["head_bias"] is None  # a softmax head started at the class shares lost TREC's rare classes


def test_multi_label_checkpoints_are_compared_at_tuned_thresholds_not_at_one_half() -> None:
    # Early in a budgeted run every label's probability is below 0.5: at 0.5 each evaluation scored F1 0, so
    # checkpoint choice and early stopping saw nothing but the loss.
    from types import SimpleNamespace

    from tunesmith.tasks.text_classification.training import _trainer_metrics

    truth = np.zeros((300, 3), dtype=np.float32)
    for j in range(3):
        truth[j * 100:j * 100 + 30, j] = 1
    logits = np.where(truth == 1, -1.0, -3.0)  # ranked perfectly, all below 0.5
    metrics = _trainer_metrics(True)(SimpleNamespace(predictions=logits, label_ids=truth))
    assert metrics["f1_micro"] == metrics["f1_macro"] == 1.0


def test_multi_label_tunes_a_threshold(train_tiny, tmp_path: Path) -> None:
    rng = random.Random(0)
    words = {"billing": "invoice charge payment", "bug": "crash error broken", "ui": "button screen color"}
    records = []
    for i in range(300):
        labels = rng.sample(sorted(words), k=1 + (i % 3 == 0))
        text = " ".join(rng.choice(words[label].split()) for label in labels for _ in range(3)) + f" ticket {i}"
        records.append({"text": text, "labels": labels})
    result = train_tiny(write_jsonl(tmp_path / "tickets.jsonl", records), name="tickets", epochs=3)
    meta = json.loads((result.version.path / "tunesmith.json").read_text())
    # 30 validation rows give each label 10+ positives: a threshold of its own each.
    assert meta["multi_label"] and len(meta["threshold"]) == 3 and all(0 < t < 1 for t in meta["threshold"])
    assert {"subset_accuracy", "f1_micro", "f1_macro"} <= set(result.metrics)
    prediction = tunesmith.load_model(str(result.version.path)).predict("crash error broken button")[0]
    assert isinstance(prediction.label, list) and set(prediction.scores) == set(words)

    # Exported, the multi-label model keeps its sigmoid scores and tuned threshold.
    record = tunesmith.export_model(str(result.version.path))
    assert record["variants"]["fp32"]["agreement"] == 1.0
    onnx = tunesmith.load_model(str(result.version.path), backend="onnx-fp32")
    texts = [r["text"] for r in records[:20]]
    assert [p.label for p in onnx.predict(texts)] == [
        p.label for p in tunesmith.load_model(str(result.version.path), backend="pytorch").predict(texts)
    ]


def test_class_weights_step_budget_and_long_texts(train_tiny, support_rows, tmp_path: Path) -> None:
    long_texts = [(f"my order {i} has not arrived and " * 40, "order_status") for i in range(3)]  # >200 tokens each
    data = write_csv(tmp_path / "long.csv", [*support_rows, *long_texts])
    result = train_tiny(data, class_weights=True, max_steps=3, epochs=5, max_length=512)  # capped at the limit
    assert result.version.version == 1
    truncated = [i for i in result.issues if i.code == "truncated"]
    assert truncated and "training texts are longer than 64 tokens" in truncated[0].message
    history = json.loads((result.version.path / "metrics.json").read_text())
    assert history["epochs_run"] < 1  # 3 steps of a 6-step epoch


def test_time_budget_stops_training(train_tiny, support_csv: Path) -> None:
    result = train_tiny(support_csv, max_minutes=0.0001, epochs=20)
    assert json.loads((result.version.path / "metrics.json").read_text())["epochs_run"] < 1


def test_resume_without_an_interrupted_run_says_so(train_tiny, support_csv: Path) -> None:
    with pytest.raises(ConfigError, match="Nothing to resume"):
        train_tiny(support_csv, name="fresh", resume=True)


def test_killed_run_resumes_from_its_last_checkpoint(tiny_model: str, support_csv: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    command = [sys.executable, "-m", "tunesmith.cli", "--home", str(home), "train", str(support_csv), "--name",
               "support", "--model", tiny_model, "--epochs", "40", "--lr", "5e-3", "--batch-size", "16",
               "--set", "train.early_stopping_patience=0", "--no-progress"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = home / "runs" / "support" / "checkpoints"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(checkpoints.glob("checkpoint-*/trainer_state.json")):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)  # possibly in the middle of writing the next checkpoint
    process.wait()
    partial = checkpoints / "checkpoint-100000"  # what a kill during a save leaves: weights, no state
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"truncated")
    assert Registry(home).names() == []  # nothing registered by the killed run
    done = [p.parent.name for p in checkpoints.glob("checkpoint-*/trainer_state.json")]
    assert done, "the run was killed before its first checkpoint"

    changed = write_csv(tmp_path / "other.csv", _rows(support_csv)[:-5])
    with pytest.raises(ConfigError, match="differs from the interrupted run"):
        tunesmith.train(changed, name="support", resume=True, registry=Registry(home), progress=False)

    logs: list[str] = []
    from tunesmith.tasks import get_task

    run = get_task("text-classification").train

    config = tunesmith.load_config(None, {"data.train": str(support_csv), "name": "support", "train.base_model": tiny_model,
                                          "train.epochs": 40, "train.learning_rate": 5e-3, "train.batch_size": 16,
                                          "train.early_stopping_patience": 0})  # fmt: skip
    result = run(config, registry=Registry(home), resume=True, progress=False, log=logs.append)
    assert any("Skipping checkpoint-100000" in line for line in logs), logs
    assert any("Resuming from" in line and "checkpoint-" in line for line in logs), logs
    assert result.version.version == 1
    assert json.loads((result.version.path / "metrics.json").read_text())["epochs_run"] == pytest.approx(40)


def test_python_api_evaluate(trained_home: Path, support_csv: Path, tmp_path: Path) -> None:
    metrics = tunesmith.evaluate(str(model_path(trained_home)), support_csv, tmp_path / "report")
    assert metrics["test"]["n"] == 120 and metrics["skipped_rows"] == 0
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "confusion_matrix.png").is_file()


def test_a_model_below_its_baseline_says_so(tiny_model: str, support_csv: Path, tmp_path: Path) -> None:
    from tunesmith.tasks import get_task

    # One step at a vanishing learning rate leaves the head random; TF-IDF separates these intents easily.
    config = tunesmith.load_config(None, {"data.train": str(support_csv), "name": "weak", "train.base_model": tiny_model,
                                          "train.max_steps": 1, "train.learning_rate": 1e-9})  # fmt: skip
    logs: list[str] = []
    result = get_task("text-classification").train(config, registry=Registry(tmp_path / "home"), progress=False,
                                                   log=logs.append)  # fmt: skip
    assert result.metrics["f1_macro"] < result.baseline["f1_macro"] - 0.1
    warning = [line for line in logs if line.startswith("warning: the fine-tuned model")]
    assert len(warning) == 1 and "TF-IDF baseline" in warning[0] and "--method baseline" in warning[0], logs


def test_macro_f1_averages_only_the_classes_a_split_holds_or_the_model_predicts() -> None:
    from tunesmith.tasks.text_classification.evaluation import classification_metrics

    names = [f"c{i}" for i in range(10)]
    labels = [0, 1, 2, 0, 1, 2]  # a small test split: 3 of 10 classes
    perfect = np.eye(10)[labels]
    assert classification_metrics(labels, perfect, names, multi_label=False)["f1_macro"] == 1.0
    # A class predicted but absent from the split still counts, as a zero: the mistake is not averaged away.
    wrong = np.eye(10)[[0, 1, 2, 0, 1, 7]]
    assert abs(classification_metrics(labels, wrong, names, multi_label=False)["f1_macro"] - (1 + 1 + 2 / 3 + 0) / 4) < 1e-9
    hot = np.array([[0.9, 0.1] + [0.0] * 8, [0.1, 0.9] + [0.0] * 8, [0.9, 0.9] + [0.0] * 8])
    assert classification_metrics([[0], [1], [0, 1]], hot, names, multi_label=True)["f1_macro"] == 1.0


def test_below_the_baseline_advice_leaves_out_what_the_run_already_did(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from tunesmith.config import DEFAULT_MODEL
    from tunesmith.models import MULTILINGUAL_MODEL
    from tunesmith.registry import ModelVersion
    from tunesmith.tasks import get_task
    from tunesmith.tasks.base import TrainResult

    task = get_task("text-classification")
    warnings = {}
    for method, base in [("full", DEFAULT_MODEL), ("fewshot", DEFAULT_MODEL), ("full", MULTILINGUAL_MODEL),
                         ("fewshot", MULTILINGUAL_MODEL)]:  # fmt: skip
        folder = tmp_path / f"{method}-{base.split(':')[1]}"
        folder.mkdir()
        (folder / "tunesmith.json").write_text(json.dumps({"method": method, "base_model": base}), encoding="utf-8")
        version = ModelVersion("weak", 1, folder, "text-classification", datetime.now(UTC), {})
        warnings[method, base] = task.baseline_warning(TrainResult(version, {"f1_macro": 0.4}, {"f1_macro": 0.9}))
    assert all("--method baseline" in str(w) for w in warnings.values())
    assert "--method fewshot" in warnings["full", DEFAULT_MODEL]
    assert "--method fewshot" not in warnings["fewshot", DEFAULT_MODEL] and "few-shot" in warnings["fewshot", DEFAULT_MODEL]
    assert MULTILINGUAL_MODEL in warnings["full", DEFAULT_MODEL] and MULTILINGUAL_MODEL in warnings["fewshot", DEFAULT_MODEL]
    # A run already on the multilingual encoder is not told to use it.
    assert MULTILINGUAL_MODEL not in warnings["full", MULTILINGUAL_MODEL] + warnings["fewshot", MULTILINGUAL_MODEL]


def test_many_examples_a_class_get_fewer_larger_epochs(tiny_model: str, tmp_path: Path) -> None:
    rows = [(f"{word} number {i}", word) for i in range(660) for word in ("refund", "delivery")]  # 528 a class
    data = write_csv(tmp_path / "many.csv", rows)
    logs: list[str] = []
    registry = Registry(tmp_path / "home")
    result = tunesmith.train(data, name="many", registry=registry, progress=False, log=logs.append,
                             base_model=tiny_model, data__inspect=False)  # fmt: skip
    assert any("training examples a class: 3 epochs of 32" in line for line in logs), logs
    saved = yaml.safe_load((result.version.path / "config.yaml").read_text())["train"]
    assert saved["epochs"] == 3 and saved["batch_size"] == 32
    mine = tunesmith.train(data, name="mine", registry=registry, progress=False, log=lambda _m: None,
                           base_model=tiny_model, epochs=1, data__inspect=False)  # fmt: skip
    assert yaml.safe_load((mine.version.path / "config.yaml").read_text())["train"]["batch_size"] == 16
