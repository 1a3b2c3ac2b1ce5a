"""Registry: versions, aliases, immutability, atomic registration under kills and concurrent writers."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tunesmith.errors import RegistryError
from tunesmith.registry import Registry


def stage(registry: Registry, content: str = "weights") -> Path:
    with registry.staging() as folder:
        (folder / "model.safetensors").write_text(content)
        (folder / "tunesmith.json").write_text("{}")
    return folder


def test_versions_are_numbered_and_immutable(registry: Registry) -> None:
    first = registry.register("intents", stage(registry, "one"), "text-classification", {"accuracy": 0.9})
    second = registry.register("intents", stage(registry, "two"), "text-classification", {"accuracy": 0.95})
    assert (first.version, second.version) == (1, 2)
    assert (first.path / "model.safetensors").read_text() == "one"
    assert (first.path / "model.safetensors").stat().st_mode & 0o222 == 0  # read-only, even for its owner
    assert [v.version for v in registry.versions("intents")] == [1, 2]
    assert registry.resolve("intents").version == 2  # no production alias yet: latest
    assert registry.resolve("intents@v1").metrics == {"accuracy": 0.9}
    assert not list((registry.home / "staging").iterdir())


def test_aliases_promote_and_rollback(registry: Registry) -> None:
    for _ in range(3):
        registry.register("m", stage(registry), "text-classification")
    registry.promote("m@1")
    registry.promote("m@3")
    assert registry.resolve("m").version == 3  # a bare name follows 'production'
    assert registry.resolve("m@production").aliases == ["production"]
    assert registry.rollback("m").version == 1
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback("m")
    registry.promote("m@2", alias="staging")
    assert registry.resolve("m@staging").version == 2
    with pytest.raises(RegistryError, match=r"no alias 'canary'.*production, staging"):
        registry.resolve("m@canary")
    with pytest.raises(RegistryError, match="Invalid alias"):
        registry.promote("m@2", alias="7")


def test_delete_refuses_aliased_versions_without_force(registry: Registry) -> None:
    registry.register("m", stage(registry), "text-classification")
    kept = registry.register("m", stage(registry), "text-classification")
    registry.promote("m@2")
    with pytest.raises(RegistryError, match="Refusing to delete aliased"):
        registry.delete("m@2")
    registry.delete("m@1")
    assert [v.version for v in registry.versions("m")] == [2]
    registry.delete("m", force=True)
    assert registry.names() == [] and not kept.path.exists()
    # numbers are never given twice, even after the whole model was deleted
    assert registry.register("m", stage(registry), "text-classification").version == 3


def test_unknown_names_and_versions_explain_themselves(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="Train one with"):
        registry.resolve("ghost")
    registry.register("m", stage(registry), "text-classification")
    with pytest.raises(RegistryError, match=r"no version 9\. Versions: 1"):
        registry.resolve("m@9")
    with pytest.raises(RegistryError, match="Invalid model name"):
        registry.resolve("../etc")


def test_failed_staging_leaves_nothing(registry: Registry) -> None:
    with pytest.raises(RuntimeError), registry.staging() as folder:
        (folder / "model.safetensors").write_text("half")
        raise RuntimeError("disk full while writing")
    assert not list((registry.home / "staging").iterdir())
    assert registry.names() == []


KILLED_REGISTER = """
import os, sys, time
from pathlib import Path
from tunesmith.registry import Registry

registry = Registry(sys.argv[1])
with registry.staging() as folder:
    (folder / "model.safetensors").write_text("complete artifact")
real_replace = os.replace
def slow_replace(src, dst):
    real_replace(src, dst)          # the artifact is in place ...
    print("moved", flush=True)
    time.sleep(60)                  # ... and the process dies before the index commits
os.replace = slow_replace
registry.register("m", folder, "text-classification")
"""


def test_kill_during_registration_never_leaves_a_half_registered_version(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Registry(home).register("m", stage(Registry(home), "v1"), "text-classification")
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(KILLED_REGISTER))
    process = subprocess.Popen([sys.executable, str(script), str(home)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "moved"
    process.send_signal(signal.SIGKILL)
    process.wait()
    registry = Registry(home)
    assert [v.version for v in registry.versions("m")] == [1]
    assert (registry.resolve("m").path / "model.safetensors").read_text() == "v1"
    assert registry.register("m", stage(registry, "v2"), "text-classification").version == 2


CONCURRENT_REGISTER = """
import sys
from tunesmith.registry import Registry
registry = Registry(sys.argv[1])
for i in range(5):
    with registry.staging() as folder:
        (folder / "w").write_text(sys.argv[2] + str(i))
    registry.register("m", folder, "text-classification")
"""


def test_concurrent_writers_get_distinct_versions(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Registry(home)  # create the schema once
    script = tmp_path / "writer.py"
    script.write_text(CONCURRENT_REGISTER)
    writers = [subprocess.Popen([sys.executable, str(script), str(home), tag]) for tag in "ab"]
    deadline = time.monotonic() + 120
    for writer in writers:
        assert writer.wait(timeout=max(1, deadline - time.monotonic())) == 0
    versions = Registry(home).versions("m")
    assert [v.version for v in versions] == list(range(1, 11))
    contents = sorted((v.path / "w").read_text() for v in versions)
    assert contents == sorted(f"{t}{i}" for t in "ab" for i in range(5))
