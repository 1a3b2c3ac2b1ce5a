"""The kill drill: SIGKILL at random (seeded) moments during train, register, export, promote, delete and tune;
after each kill `doctor` finds a consistent registry (no half-registered version: every row's files match
the checksum taken at registration), `doctor --repair` leaves it clean, and an interrupted training resumes
from its newest complete checkpoint (so at most one checkpoint interval is lost)."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import private_copy
from tunesmith import doctor
from tunesmith.registry import Registry

SEED = 14
CLI = [sys.executable, "-m", "tunesmith.cli"]

# Registers, promotes and deletes in a loop, so a kill at any moment lands inside one of them.
REGISTRY_LOOP = textwrap.dedent("""
    import json, os, sys
    from tunesmith.registry import Registry
    registry = Registry(sys.argv[1])
    while True:
        with registry.staging() as staged:
            (staged / "model.safetensors").write_bytes(os.urandom(1 << 20))
            (staged / "tunesmith.json").write_text(json.dumps({"name": "loop", "task": "text-classification"}))
            version = registry.register("loop", staged, "text-classification")
        registry.promote(version.ref, "production")
        if version.version > 2:
            registry.delete(f"loop@{version.version - 2}")
""")


def timed(command: list[str]) -> float:
    """Seconds a command takes when left alone: kill moments are drawn as shares of it, so that they land
    mid-way on a fast machine as on a slow one."""
    started = time.monotonic()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.monotonic() - started


def kill_after(command: list[str], seconds: float) -> int:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
    return process.returncode


def _reads_whole(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return False
    return True


def assert_consistent(home: Path, after: str) -> None:
    registry = Registry(home)
    report = doctor.check(registry)
    assert report.consistent, (after, [p.what for p in report.problems])
    for name in registry.names():
        for version in registry.versions(name):
            assert (version.path / "tunesmith.json").is_file(), (after, version.ref)
    repaired = doctor.check(registry, repair=True)
    assert repaired.clean, (after, [f.what for f in repaired.leftovers if not f.repaired])
    assert doctor.check(registry).clean, after


def test_kill_drill(served_home: Path, tiny_model: str, support_csv: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    home = private_copy(served_home, tmp_path / "home")
    train = [*CLI, "--home", str(home), "train", str(support_csv), "--name", "drill", "--model", tiny_model,
             "--epochs", "12", "--lr", "5e-3", "--batch-size", "16", "--set", "train.early_stopping_patience=0",
             "--no-progress"]  # fmt: skip
    kills = 0
    resumed = False
    full = timed(train)
    for _ in range(5):
        code = kill_after(train, rng.uniform(0.3, 0.85) * full)
        kills += code == -9
        assert_consistent(home, "train")
        run_dir = home / "runs" / "drill"
        # Complete: its trainer_state.json, written last, reads whole (a kill can land while it is being written).
        states = {int(p.parent.name.split("-")[1]): _reads_whole(p)
                  for p in run_dir.glob("checkpoints/checkpoint-*/trainer_state.json")}  # fmt: skip
        complete = sorted(n for n, whole in states.items() if whole)
        partial = sorted(n for n, whole in states.items() if not whole and n > max(complete, default=0))
        if code == -9 and complete and not resumed:
            done = subprocess.run([*train, "--resume"], capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr
            started_from = re.search(r"Resuming from .*checkpoint-(\d+)", done.stdout + done.stderr)
            assert started_from and int(started_from.group(1)) == complete[-1]  # the newest complete one
            if partial:  # and one cut short while saving is said and removed, never resumed from
                assert f"Skipping checkpoint-{partial[-1]}" in done.stdout + done.stderr
            resumed = True
            assert_consistent(home, "train --resume")
    export = [*CLI, "--home", str(home), "export", "support@1"]
    full = timed(export)
    for _ in range(5):
        kills += kill_after(export, rng.uniform(0.3, 0.85) * full) == -9
        assert_consistent(home, "export")
        assert Registry(home).resolve("support@1").path.joinpath("onnx", "export.json").is_file()  # never lost
    loop = [sys.executable, "-c", REGISTRY_LOOP, str(home)]
    for _ in range(7):
        kills += kill_after(loop, rng.uniform(1.0, 3.0)) == -9
        assert_consistent(home, "register/promote/delete")
    def tune(name: str) -> list[str]:  # a fresh study each time: a finished one would only be looked up
        return [*CLI, "--home", str(home), "tune", str(support_csv), "--name", name, "--trials", "2", "--model",
                tiny_model, "--set", "train.epochs=3"]  # fmt: skip

    full = timed(tune("tuned"))
    for i in range(3):
        kills += kill_after(tune(f"tuned-{i}"), rng.uniform(0.3, 0.85) * full) == -9
        assert_consistent(home, "tune")
    assert kills >= 15, f"only {kills} of 20 runs were killed mid-way"
    assert Registry(home).resolve("loop").version > 1
