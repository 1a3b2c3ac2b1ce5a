"""`tunesmith retrain`: a candidate from production's kept training rows and the feedback since, a label new in
the feedback extending the head without resetting the old ones, the lineage recorded, the gate run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import private_copy
from tunesmith.errors import ConfigError
from tunesmith.monitoring.feedback import store_feedback
from tunesmith.registry import Registry
from tunesmith.retraining import MIN_REPLAY, replay_sample, retrain

TINY = ["train.learning_rate=5e-3", "train.epochs=12"]  # the tiny random model learns at a large step


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunesmith.cli", "--home", str(home), *args], capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def test_the_replay_sample_keeps_proportions_and_every_label() -> None:
    rows = [{"text": f"a{i}", "label": "big"} for i in range(900)] + [{"text": f"b{i}", "label": "small"} for i in range(3)]
    rows += [{"text": f"c{i}", "label": "mid"} for i in range(97)]
    sample = replay_sample(rows, 100, "label", seed=1)
    counts = {label: sum(r["label"] == label for r in sample) for label in ("big", "mid", "small")}
    assert counts == {"big": 90, "mid": max(MIN_REPLAY, 10), "small": 3}  # a rare label is replayed whole
    assert replay_sample(rows, 100, "label", seed=1) == sample  # seeded
    assert len(replay_sample(rows, 50, None, seed=1)) == 50 and replay_sample(rows, 5000, "label", seed=1) == rows


def test_a_new_label_extends_the_head_keeping_the_old_labels_rows(trained_home: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from tunesmith.models import load_classifier

    source = Registry(trained_home).resolve("support@1").path / "model"
    old = json.loads((source / "config.json").read_text())["id2label"]
    old_names = [old[str(i)] for i in range(len(old))]
    weights = load_file(str(source / "model.safetensors"))
    names = sorted([*old_names, "aaa_new"])  # the new label sorts first: every old row moves down one
    priors = [-1.0 - j for j in range(len(names))]
    model = load_classifier(str(source), names, multi_label=False, head_bias=priors)
    head, bias = model.classifier.weight.detach(), model.classifier.bias.detach()
    for j, name in enumerate(names):
        if name in old_names:
            assert torch.equal(head[j], weights["classifier.weight"][old_names.index(name)]), name
            assert bias[j] == weights["classifier.bias"][old_names.index(name)], name
    assert not any(torch.equal(head[0], row) for row in weights["classifier.weight"])  # the new one starts fresh
    assert bias[0] == priors[0]  # at its prior, as a fresh head starts
    # The encoder is the fine-tuned one, not the base model's.
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, weights["bert.embeddings.word_embeddings.weight"])


def test_retrain_learns_a_label_from_feedback_records_lineage_and_gates(trained_home: Path, tmp_path: Path) -> None:
    import tunesmith

    home = private_copy(trained_home, tmp_path / "home")
    registry = Registry(home)
    registry.promote("support@1", "production")
    with pytest.raises(ConfigError, match="No new rows for support"):
        retrain(registry, "support", log=lambda _line: None)
    texts = [f"the warranty on my kettle number {i} has expired" for i in range(40)]
    for text in texts:
        store_feedback(home, "support", request_id=None, caller="t", input=text, answer="warranty", predicted=None,
                       version=1, correct=False)  # fmt: skip
    lines: list[str] = []
    outcome = retrain(registry, "support", overrides=TINY, progress=False, log=lines.append)
    version = outcome.result.version
    assert version.ref == "support@2"
    meta = json.loads((version.path / "tunesmith.json").read_text())
    trained = 40 - sum(__import__("tunesmith.monitoring.feedback", fromlist=["x"]).held_out(t) for t in texts)
    lineage = meta["lineage"]
    assert lineage["parent"] == "support@1" and lineage["strategy"] == "rehearsal"
    assert lineage["rows"]["feedback"] == trained and lineage["rows"]["replayed"] == min(2 * trained, lineage["rows"]["old"])
    assert "warranty" in meta["label_names"] and meta["base_model"] == str(registry.resolve("support@1").path / "model")
    kept = (version.path / "data" / "train.jsonl").read_text().splitlines()
    assert len(kept) == trained + lineage["rows"]["replayed"]  # the candidate keeps what it trained on, for its own retrain
    # Validated and tested on production's frozen splits: the two are scored on the same rows.
    assert (version.path / "data" / "test.jsonl").read_bytes() == (registry.resolve("support@1").path / "data" /
                                                                   "test.jsonl").read_bytes()  # fmt: skip
    model = tunesmith.load_model("support@2", registry=registry)
    assert [p.label for p in model.predict(["the warranty on my kettle number 99 has expired"])] == ["warranty"]
    assert outcome.gate is not None and {c.name for c in outcome.gate.criteria} == {"test split", "feedback", "latency",
                                                                                    "export"}  # fmt: skip
    assert any("Retrain (rehearsal)" in line for line in lines)

    shown = _cli(home, "models", "show", "support@2")
    assert "retrained from support@1 (rehearsal)" in shown.stdout, shown.stdout + shown.stderr


def test_retrain_refuses_an_unknown_strategy_and_warm_starts_only_from_full_weights(trained_home: Path,
                                                                                   tmp_path: Path) -> None:  # fmt: skip
    home = private_copy(trained_home, tmp_path / "home")
    failed = _cli(home, "retrain", "support", "--strategy", "sideways")
    assert failed.returncode == 2 and "sideways" in failed.stderr
    registry = Registry(home)
    import tunesmith

    with pytest.raises(ConfigError, match="--replay"):
        tunesmith.retrain("support", registry=registry, against="support@1", replay=-1)
    with pytest.raises(tunesmith.TunesmithError, match="letters, digits"):
        tunesmith.retrain("../escape", registry=registry)


def test_a_lora_retrain_keeps_its_parent_from_being_deleted(trained_home: Path, tmp_path: Path) -> None:
    from tunesmith.errors import RegistryError

    home = private_copy(trained_home, tmp_path / "home")
    registry = Registry(home)
    registry.promote("support@1", "production")
    for i in range(10):
        store_feedback(home, "support", request_id=None, caller="t", input=f"my parcel {i} is late", answer="shipping",
                       predicted=None, version=1, correct=False)  # fmt: skip
    outcome = retrain(registry, "support", strategy="lora", gate=False, export=False, progress=False,
                      overrides=["train.epochs=1"], log=lambda _line: None)  # fmt: skip
    assert outcome.lineage["strategy"] == "lora"
    registry.promote(outcome.result.version.ref, "production")
    with pytest.raises(RegistryError, match=r"support@2 \(an adapter over support@1\)"):
        registry.delete("support@1")
    assert registry.resolve("support@1").path.is_dir()
    registry.delete("support@2", force=True)  # the adapter first: then its parent goes
    assert [v.ref for v in registry.delete("support@1")] == ["support@1"]
