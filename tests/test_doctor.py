"""Exports switch atomically (a kill at every step leaves a valid export), and `doctor` finds and repairs what
killed processes and damaged databases leave behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import private_copy
from test_cli import run
from tunesmith import doctor
from tunesmith.artifact import EXPORT_DIR, read_export
from tunesmith.pointers import EXPORTS, current, publishing
from tunesmith.registry import Registry


def fake_export(folder: Path, stamp: str) -> None:
    (folder / "model.onnx").write_text(stamp)
    (folder / "export.json").write_text(json.dumps({"created_at": stamp, "default": "fp32",
                                                    "variants": {"fp32": {"file": "model.onnx"}}}))  # fmt: skip


def publish_killed_at(artifact: Path, stamp: str, step: int) -> int:
    """Publish a fake export in a subprocess that SIGKILLs itself at its `step`-th file-system switch."""
    script = textwrap.dedent(f"""
        import os, signal, shutil, sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_doctor import fake_export
        from tunesmith import pointers
        calls = [0]
        def counted(real):
            def wrapper(*args, **kwargs):
                calls[0] += 1
                if calls[0] == {step}:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(*args, **kwargs)
            return wrapper
        for name in ("rename", "replace", "symlink", "mkdir"):
            setattr(pointers.os, name, counted(getattr(os, name)))
        pointers.shutil.rmtree = counted(shutil.rmtree)
        with pointers.publishing(Path({str(artifact)!r}), "onnx") as work:
            fake_export(work, {stamp!r})
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True).returncode


@pytest.mark.parametrize("legacy", [False, True])
def test_a_kill_at_every_step_of_an_export_leaves_a_valid_one(tmp_path: Path, legacy: bool) -> None:
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    if legacy:  # the layout before pointers: a real onnx/ folder
        (artifact / EXPORT_DIR).mkdir()
        fake_export(artifact / EXPORT_DIR, "old")
    else:
        with publishing(artifact, EXPORT_DIR) as work:
            fake_export(work, "old")
    seen = set()
    for step in range(1, 12):
        code = publish_killed_at(artifact, f"new-{step}", step)
        record = read_export(artifact)
        if code == 0:
            assert record is not None and record["created_at"] == f"new-{step}"
            break
        assert code == -9
        # killed: an export is still there, complete (legacy layout: but for the one rename moving the folder)
        if record is None:
            assert legacy, f"no export after a kill at step {step}"
            continue
        assert (Path(record["folder"]) / "model.onnx").read_text() == record["created_at"]
        seen.add(record["created_at"])
    else:
        pytest.fail("the export never finished")
    assert step >= 4  # the kills did hit the steps in between
    report = doctor.check(Registry(tmp_path / "home"))  # a home of its own; check leftovers directly:
    from tunesmith.pointers import leftovers

    assert report.consistent
    left = leftovers(artifact, (EXPORT_DIR,))
    assert all(p.name.startswith((".tmp-", ".onnx-link", "onnx-")) for p in left)
    assert current(artifact, EXPORT_DIR) is not None


def test_exports_keep_only_the_current_and_the_previous(tmp_path: Path) -> None:
    artifact = tmp_path / "a"
    artifact.mkdir()
    for stamp in ("one", "two", "three"):
        with publishing(artifact, EXPORT_DIR) as work:
            fake_export(work, stamp)
    assert read_export(artifact)["created_at"] == "three"
    assert len([p for p in (artifact / EXPORTS).iterdir() if p.is_dir()]) == 2
    assert (artifact / EXPORT_DIR).is_symlink()
    # a failed export changes nothing
    with pytest.raises(RuntimeError), publishing(artifact, EXPORT_DIR) as work:
        fake_export(work, "four")
        raise RuntimeError("quantizer crashed")
    assert read_export(artifact)["created_at"] == "three"


@pytest.fixture
def home(trained_home: Path, tmp_path: Path) -> Path:
    return private_copy(trained_home, tmp_path / "home")


def test_doctor_finds_and_repairs(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    registry = Registry(home)
    assert doctor.check(registry).clean
    good = registry.resolve("support")
    # what killed processes leave behind, and damage
    (home / "staging" / "20260101-000000-deadbeef").mkdir(parents=True)  # killed while writing
    complete = home / "models" / "support" / "v-000000000000"  # killed between rename and commit
    complete.mkdir()
    (complete / "tunesmith.json").write_text('{"name": "support"}')
    (good.path / EXPORTS / ".tmp-onnx-x").mkdir(parents=True)
    (good.path / ".onnx-1234abcd").mkdir()  # the old layout's work folder
    registry.register("support", _stage(registry), "text-classification")
    registry.promote("support@2", "staging")
    gone = registry.resolve("support@2").path
    for sub in [gone, *gone.rglob("*")]:
        sub.chmod(0o755)
    import shutil

    shutil.rmtree(gone)
    (good.path / "metrics.json").chmod(0o644)
    (good.path / "metrics.json").write_text("{}")  # damaged after registration

    code, out, _ = run(capsys, "--home", str(home), "doctor")
    assert code == 1, out
    assert "support@2: its folder is missing" in out
    assert "support@staging points at version 2, which does not exist" in out
    assert "checksum mismatch" in out and "staging folder" in out and "complete model" in out
    assert "INCONSISTENT" in out
    code, out, _ = run(capsys, "--home", str(home), "doctor", "--repair", "--json")
    report = json.loads(out)
    assert [p["what"].split(":")[0] for p in report["problems"] if not p["repaired"]] == ["support@1"]  # checksum
    assert all(f["repaired"] for f in report["leftovers"]) and len(report["leftovers"]) == 4
    assert [v.version for v in registry.versions("support")] == [1]
    assert registry.resolve("support").aliases == []
    assert (home / "unregistered" / "support-v-000000000000" / "tunesmith.json").is_file()
    assert not (home / "staging" / "20260101-000000-deadbeef").exists()
    assert not (good.path / ".onnx-1234abcd").exists() and not (good.path / EXPORTS / ".tmp-onnx-x").exists()
    assert read_export(good.path) is None  # trained_home has no export; nothing was invented
    report = doctor.check(registry, checksums=False)
    assert report.clean and any("failed registration" in k.what for k in report.kept)


def test_doctor_leaves_live_work_alone(home: Path) -> None:
    registry = Registry(home)
    with registry.staging() as folder:
        (folder / "weights").write_text("being written")
        report = doctor.check(registry, repair=True)
        assert folder.is_dir() and report.clean
    with registry.run_lock("support"):
        registry.run_dir("support").mkdir(parents=True)
        report = doctor.check(registry, repair=True)
        assert registry.run_dir("support").is_dir()
        assert any("running" in k.what for k in report.kept)
    assert any("interrupted" in k.what for k in doctor.check(registry).kept)


def _stage(registry: Registry) -> Path:
    with registry.staging() as folder:
        (folder / "tunesmith.json").write_text('{"name": "support", "task": "text-classification"}')
    return folder


def test_the_server_serving_a_deleted_version_notices(home: Path) -> None:
    """A revision key of (number, folder, export): a deleted latest makes the server move to what is latest now."""
    from tunesmith.serving.server import revision_of

    registry = Registry(home)
    first = registry.resolve("support")
    second = registry.register("support", _stage(registry), "text-classification")
    assert revision_of(second) != revision_of(first)
    registry.delete("support@2")
    third = registry.register("support", _stage(registry), "text-classification")
    assert third.version == 3 and revision_of(third) != revision_of(second)
    assert os.path.basename(third.path) != os.path.basename(second.path)


def test_exports_written_after_registration_do_not_change_the_checksum(tmp_path: Path) -> None:
    from tunesmith.registry import artifact_checksum

    artifact = tmp_path / "a"
    (artifact / "model").mkdir(parents=True)
    (artifact / "model" / "w.safetensors").write_text("w")
    before = artifact_checksum(artifact)
    for export in ("onnx", "merged", "exports/onnx-1", ".onnx-tmp", ".merged-tmp"):
        (artifact / export).mkdir(parents=True)
        (artifact / export / "f").write_text("x")
    assert artifact_checksum(artifact) == before
    (artifact / "model" / "w.safetensors").write_text("changed")
    assert artifact_checksum(artifact) != before
