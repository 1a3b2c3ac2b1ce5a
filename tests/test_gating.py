"""The regression gate: a candidate is judged against production on production's frozen test split, the
feedback, latency and its export; `models promote` to production needs a pass (or --force)."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tunesmith
import tunesmith.gating
from conftest import private_copy, write_csv
from tunesmith.gating import mcnemar_worse
from tunesmith.registry import Registry
from tunesmith.tasks.catalog import TASKS


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunesmith.cli", "--home", str(home), *args], capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def test_mcnemar_counts_only_the_rows_the_two_disagree_on() -> None:
    same = [True] * 90 + [False] * 10
    assert mcnemar_worse(same, same) == (1.0, 0, 0)
    worse = [True] * 70 + [False] * 30  # loses 20 rows production had right, wins none
    p, lost, won = mcnemar_worse(worse, same)
    assert (lost, won) == (20, 0) and p < 1e-5
    mixed = [False] * 3 + [True] * 87 + [True] * 2 + [False] * 8  # lost 3, won 2: noise
    assert mcnemar_worse(mixed, same)[0] > 0.3


def test_a_good_candidate_passes_a_planted_bad_one_fails_and_promotion_needs_the_gate(
    trained_home: Path, tiny_model: str, support_rows: list[tuple[str, str]], tmp_path: Path
) -> None:  # fmt: skip
    home = private_copy(trained_home, tmp_path / "home")
    registry = Registry(home)
    registry.promote("support@1", "production")
    data = write_csv(tmp_path / "support.csv", support_rows)
    settings = {"base_model": tiny_model, "epochs": 25, "early_stopping_patience": 0, "learning_rate": 5e-3,
                "batch_size": 16, "freeze_embeddings": False}  # as trained_home was trained  # fmt: skip
    good = tunesmith.train(data, registry=registry, name="support", progress=False, **settings).version
    tunesmith.export_model(good.ref, registry=registry)
    rng = random.Random(0)
    labels = [label for _, label in support_rows]
    rng.shuffle(labels)
    shuffled = write_csv(tmp_path / "shuffled.csv", [(text, label) for (text, _), label in zip(support_rows, labels, strict=True)])
    bad = tunesmith.train(shuffled, registry=registry, name="support", progress=False, **settings).version

    refused = _cli(home, "models", "promote", good.ref)
    assert refused.returncode == 1 and f"tunesmith gate {good.ref}" in refused.stderr, refused.stderr

    failed = _cli(home, "gate", bad.ref)
    assert failed.returncode == 1 and "FAIL" in failed.stdout, failed.stdout + failed.stderr
    verdict = tunesmith.gating.gate(registry, bad.ref, log=lambda _line: None)
    criteria = {c.name: c for c in verdict.criteria}
    assert not verdict.passed and criteria["test split"].passed is False and criteria["export"].passed is False
    assert "worse beyond noise" in criteria["test split"].detail and criteria["test split"].figures["lost"] > 0
    assert _cli(home, "models", "promote", bad.ref).returncode == 1  # a failed gate does not open the door

    passed = _cli(home, "gate", good.ref, "--json")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert registry.resolve("support@candidate").version == good.version
    promoted = _cli(home, "models", "promote", good.ref)
    assert promoted.returncode == 0 and registry.resolve("support@production").version == good.version

    forced = _cli(home, "models", "promote", bad.ref, "--force")
    assert forced.returncode == 0 and registry.resolve("support@production").version == bad.version


def test_the_gate_refuses_to_judge_a_version_against_itself(trained_home: Path, tmp_path: Path) -> None:
    home = private_copy(trained_home, tmp_path / "home")
    registry = Registry(home)
    registry.promote("support@1", "production")
    with pytest.raises(tunesmith.ConfigError, match="nothing to gate"):
        tunesmith.gating.gate(registry, "support@1")


def test_a_burst_on_the_machine_during_the_candidates_pass_is_no_latency_regression(
    trained_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    home = private_copy(trained_home, tmp_path / "home")
    registry = Registry(home)
    production = registry.promote("support@1", "production")
    twin = registry.register_folder(production.path)  # the same weights: the same speed
    tunesmith.export_model(twin.ref, registry=registry, log=lambda _line: None)
    task = TASKS[twin.task]
    rows = len(task.reference(production.path, "test")[0])
    # Another process's burst: the candidate's answers and its first timed pass (over at most 128 rows) stall.
    stalls = [math.ceil(rows / 32) + math.ceil(min(rows, 128) / 32)]
    seen: list[object] = []  # production is loaded and answers first, the candidate second
    compute = task.serve_compute

    def bursty(predictor: object, items: list[object], batch_size: int) -> object:
        if not any(p is predictor for p in seen):
            seen.append(predictor)
        if predictor is seen[-1] and len(seen) == 2 and stalls[0] > 0:
            stalls[0] -= 1
            time.sleep(0.1)
        return compute(predictor, items, batch_size)

    monkeypatch.setattr(task, "serve_compute", bursty)
    verdict = tunesmith.gating.gate(registry, twin.ref, log=lambda _line: None)
    latency = {c.name: c for c in verdict.criteria}["latency"]
    assert latency.passed, latency.detail
    assert stalls == [0]  # the burst did hit a timed pass
