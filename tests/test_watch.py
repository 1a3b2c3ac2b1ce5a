"""`tunesmith watch`: feedback crossing its threshold starts retrain -> gate -> canary -> promote; a loop killed
mid-training resumes from its checkpoint and trains once; a canary the server rolled back ends the round."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from conftest import private_copy
from tunesmith.monitoring.feedback import held_out, store_feedback
from tunesmith.registry import Registry

# The tiny random model learns at a large step; many epochs so that the run is long enough to be killed in.
RETRAIN = ["--set", "train.learning_rate=5e-3", "--set", "train.epochs=80"]


def _watch(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "tunesmith.cli", "--home", str(home), "watch", "support", "--min-feedback", "10",
            *RETRAIN, *args]  # fmt: skip


def _home_with_feedback(trained_home: Path, target: Path) -> tuple[Path, Registry]:
    home = private_copy(trained_home, target)
    registry = Registry(home)
    registry.promote("support@1", "production")
    for i in range(40):  # a label production does not know: what the candidate must learn to pass the gate
        store_feedback(home, "support", request_id=None, caller="t", input=f"the warranty on my kettle number {i} has "
                       "expired", answer="warranty", predicted=None, version=1, correct=False)  # fmt: skip
    return home, registry


def _events(home: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (home / "watch" / "support.log.jsonl").read_text().splitlines()]


def test_too_little_feedback_waits(trained_home: Path, tmp_path: Path) -> None:
    home = private_copy(trained_home, tmp_path / "home")
    Registry(home).promote("support@1", "production")
    done = subprocess.run(_watch(home, "--once"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _events(home)[-1]["event"] == "waiting" and _events(home)[-1]["new_feedback"] == 0
    assert [v.version for v in Registry(home).versions("support")] == [1]


def test_a_killed_watch_resumes_its_training_and_promotes_once(trained_home: Path, tmp_path: Path) -> None:
    home, registry = _home_with_feedback(trained_home, tmp_path / "home")
    process = subprocess.Popen(_watch(home, "--canary-share", "0", "--interval", "1"), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    checkpoints = home / "runs" / "support" / "checkpoints"
    deadline = time.time() + 240
    while not list(checkpoints.glob("checkpoint-*/trainer_state.json")):
        assert process.poll() is None and time.time() < deadline, process.stdout.read() if process.stdout else ""
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # mid-training, as a crash or an OOM kill would
    process.wait(30)
    assert json.loads((home / "watch" / "support.json").read_text())["step"] == "retraining"
    assert [v.version for v in registry.versions("support")] == [1]

    resumed = subprocess.run(_watch(home, "--canary-share", "0", "--once"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resuming from" in resumed.stdout + resumed.stderr
    assert [v.version for v in registry.versions("support")] == [1, 2]  # trained once, not again from the start
    assert registry.resolve("support@production").version == 2, resumed.stdout + resumed.stderr
    events = [e["event"] for e in _events(home)]
    assert events == ["retrain_started", "promoted"], events
    state = json.loads((home / "watch" / "support.json").read_text())
    trained = [i + 1 for i in range(40) if not held_out(f"the warranty on my kettle number {i} has expired")]
    assert state["step"] == "watching" and state["used_feedback"] == max(trained)  # feedback ids count from 1
    again = subprocess.run(_watch(home, "--once"), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and _events(home)[-1]["event"] == "waiting"  # the feedback was used: nothing new


def test_a_passing_candidate_goes_through_a_canary_on_the_server(trained_home: Path, tmp_path: Path, start_server) -> None:
    home, registry = _home_with_feedback(trained_home, tmp_path / "home")
    canary = ["--canary-share", "0.5", "--canary-min-requests", "20", "--canary-minutes", "0"]
    started = subprocess.run(_watch(home, *canary, "--once"), capture_output=True, text=True, timeout=600)
    assert started.returncode == 0, started.stdout + started.stderr
    assert _events(home)[-1]["event"] == "canary_started" and registry.canary_table()["support"]["share"] == 0.5
    server = start_server(home, "support@production", "--watch-interval", "0.3")
    variants: list[str] = []
    deadline = time.time() + 60
    # Until the canary has answered more than it needs: a share of 0.5 gives it about half of the users.
    while variants.count("candidate") < 25 or "production" not in variants:
        answer = httpx.post(f"{server.url}/v1/models/support/predict", json={"text": "where is my parcel"},
                            headers={"X-Tunesmith-User": f"user-{len(variants)}"}, timeout=30)  # fmt: skip
        assert answer.status_code == 200
        variants.append(answer.headers.get("x-tunesmith-variant", ""))
        assert time.time() < deadline, variants
    time.sleep(1)  # the prediction log is written in the background
    promoted = subprocess.run(_watch(home, *canary, "--once"), capture_output=True, text=True, timeout=300)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert _events(home)[-1]["event"] == "canary_promoted" and _events(home)[-1]["answered"] >= 20
    assert registry.resolve("support@production").version == 2 and "support" not in registry.canary_table()

    def serves_the_new_production() -> bool:
        answer = httpx.post(f"{server.url}/v1/models/support/predict", json={"text": "where is my parcel"}, timeout=30)
        return answer.json()["version"] == 2 and answer.headers["x-tunesmith-variant"] == "production"

    deadline = time.time() + 60
    while not serves_the_new_production():
        assert time.time() < deadline
        time.sleep(0.3)


def test_a_rolled_back_canary_ends_the_round(trained_home: Path, tmp_path: Path) -> None:
    home, registry = _home_with_feedback(trained_home, tmp_path / "home")
    canary = ["--canary-share", "0.1", "--canary-min-requests", "20", "--canary-minutes", "0"]
    assert subprocess.run(_watch(home, *canary, "--once"), capture_output=True, timeout=600).returncode == 0
    registry.stop_canary("support", "rolled_back", "canary of @candidate rolled back: planted")  # as a server does
    ended = subprocess.run(_watch(home, *canary, "--once"), capture_output=True, text=True, timeout=300)
    assert ended.returncode == 0, ended.stderr
    last = _events(home)[-1]
    assert last["event"] == "canary_rolled_back" and "planted" in last["detail"]
    assert registry.resolve("support@production").version == 1
    assert json.loads((home / "watch" / "support.json").read_text())["step"] == "watching"
