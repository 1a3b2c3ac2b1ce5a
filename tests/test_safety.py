"""Data safety: names that would escape the home are refused before anything is touched, version numbers are
never given twice, a failed registration keeps the trained model, two runs of one name do not collide."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

import tunesmith
from conftest import private_copy, snapshot
from test_cli import run as run_cli
from tunesmith.errors import InvalidNameError, LockedError, RegistryError
from tunesmith.paths import check_name, confine
from tunesmith.registry import Registry

HOSTILE = ["..", "../x", "/abs/path", "a\nb", "abc\n", "con", "NUL.txt", "x" * 300, "", "-x", "a/b", "a b", "x."]


@pytest.fixture
def home(trained_home: Path, tmp_path: Path) -> Path:
    import sqlite3

    home = private_copy(trained_home, tmp_path / "home")
    db = sqlite3.connect(home / "registry.db")  # fold the copied WAL in now: a later reader would do it and change the bytes
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    (home / "runs" / "other").mkdir(parents=True)  # a run folder exists: today's `--name ..` then deleted the home
    (home / "runs" / "other" / "run.json").write_text("{}")
    return home


@pytest.mark.parametrize("name", HOSTILE)
def test_check_name_refuses(name: str) -> None:
    with pytest.raises(InvalidNameError):
        check_name(name)


@pytest.mark.parametrize("name", ["support", "a", "Support_v2.1", "x" * 64, "1st-model", "console", "com10"])
def test_check_name_accepts(name: str) -> None:
    assert check_name(name) == name


def test_confine_refuses_paths_outside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    for bad in ["..", "../outside", "/etc", "link/x", ".", ""]:
        with pytest.raises(tunesmith.errors.ConfigError, match="outside"):
            confine(root, bad)
    assert confine(root, "models/a") == (root / "models" / "a").resolve()


@pytest.mark.parametrize("name", ["..", "../x", "/abs/path", "a\nb", "con", "x" * 300])
def test_train_refuses_bad_names_and_leaves_the_home_untouched(
    capsys: pytest.CaptureFixture[str], home: Path, support_csv: Path, tiny_model: str, name: str
) -> None:
    before = snapshot(home.parent)
    code, _, err = run_cli(capsys, "--home", str(home), "train", str(support_csv), "--name", name, "--model", tiny_model)
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "model name" in err
    assert snapshot(home.parent) == before


@pytest.mark.parametrize("name", ["..", "../x", "/abs/path", "a\nb", "con", "x" * 300])
def test_every_entry_refuses_bad_names(
    capsys: pytest.CaptureFixture[str], home: Path, support_csv: Path, tmp_path: Path, name: str
) -> None:
    import json

    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("name: " + json.dumps(name) + "\n")  # JSON is YAML: escapes survive
    before = snapshot(home.parent)
    for args in (
        ["train", str(support_csv), "--config", str(yaml_file)],
        ["train", str(support_csv), "--set", f"name={name}"],
        ["models", "promote", "support@1", "--alias", name],
        ["models", "rollback", "support", "--alias", name],
        ["keys", "create", name],
        ["tune", str(support_csv), "--study", name, "--trials", "1"],
    ):
        if "\n" in name and "--set" in args:
            continue  # a newline cannot be typed into one --set argument's value meaningfully
        code, _, err = run_cli(capsys, "--home", str(home), *args)
        assert code == 1, (args, err)
        assert err.startswith("error: ") and "Traceback" not in err, (args, err)
    with pytest.raises(tunesmith.errors.ConfigError, match="model name"):
        tunesmith.train(support_csv, registry=Registry(home), name=name, progress=False)
    assert snapshot(home.parent) == before


def test_a_row_pointing_outside_the_home_is_never_followed(registry: Registry, tmp_path: Path) -> None:
    from sqlalchemy import text

    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    stage = registry.home / "staging" / "s"
    stage.mkdir(parents=True)
    (stage / "tunesmith.json").write_text("{}")
    version = registry.register("m", stage, "text-classification")
    with registry.engine.begin() as connection:
        connection.execute(text("UPDATE versions SET path = :p"), {"p": str(outside)})
    with pytest.raises(RegistryError, match="points outside"):
        registry.delete("m@1", force=True)
    assert (outside / "keep.txt").read_text() == "mine"
    assert version.path.exists()


def make_stage(registry: Registry, content: str = "w") -> Path:
    with registry.staging() as folder:
        (folder / "model.safetensors").write_text(content)
        (folder / "tunesmith.json").write_text('{"name": "m", "task": "text-classification"}')
    return folder


def test_version_numbers_are_never_reused(registry: Registry) -> None:
    for _ in range(3):
        registry.register("m", make_stage(registry), "text-classification")
    registry.delete("m@3")
    assert registry.register("m", make_stage(registry), "text-classification").version == 4
    registry.delete("m", force=True)
    assert registry.register("m", make_stage(registry), "text-classification").version == 5
    # a reopened registry (another process) still knows the counter
    assert Registry(registry.home).register("m", make_stage(registry), "text-classification").version == 6


def test_old_registry_databases_gain_the_new_columns(tmp_path: Path) -> None:
    import sqlite3

    home = tmp_path / "old"
    home.mkdir()
    db = sqlite3.connect(home / "registry.db")  # the tables as wave 1 created them
    db.executescript("""
        CREATE TABLE models (name VARCHAR(64) PRIMARY KEY, task VARCHAR(64), created_at DATETIME);
        CREATE TABLE versions (id INTEGER PRIMARY KEY, model_name VARCHAR(64), version INTEGER, path VARCHAR(512),
            created_at DATETIME, metrics JSON, description VARCHAR(1024), UNIQUE (model_name, version));
        INSERT INTO models VALUES ('m', 'text-classification', '2026-01-01 00:00:00');
        INSERT INTO versions VALUES (1, 'm', 7, 'models/m/v-old', '2026-01-01 00:00:00', '{}', '');
    """)
    db.commit()
    db.close()
    (home / "models" / "m" / "v-old").mkdir(parents=True)
    registry = Registry(home)
    assert registry.resolve("m").version == 7 and registry.resolve("m").checksum is None
    assert registry.register("m", make_stage(registry), "text-classification").version == 8


def test_a_failed_registration_keeps_the_model(capsys: pytest.CaptureFixture[str], registry: Registry) -> None:
    registry.register("m", make_stage(registry), "text-classification")
    staged = make_stage(registry, "precious weights")
    with pytest.raises(RegistryError, match="holds text-classification models.*kept in") as caught:
        registry.register("m", staged, "token-classification")
    kept = Path(str(caught.value).split("kept in ")[1].split(";")[0])
    assert kept.is_relative_to(registry.home / "unregistered")
    assert (kept / "model.safetensors").read_text() == "precious weights"
    # ... and the command the message names registers it
    code, _, err = run_cli(capsys, "--home", str(registry.home), "models", "register", str(kept), "--name", "m2")
    assert code == 0, err
    assert (registry.resolve("m2").path / "model.safetensors").read_text() == "precious weights"
    assert not kept.exists()


def test_a_locked_database_keeps_the_trained_model(train_tiny, registry: Registry, support_csv: Path) -> None:
    import sqlite3

    blocker = sqlite3.connect(registry.home / "registry.db", timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database for longer than we wait
    try:
        import tunesmith.registry as reg

        original = reg._sqlite_pragmas

        def short_wait(connection, record):
            original(connection, record)
            connection.execute("PRAGMA busy_timeout=200")

        reg.event.remove(registry.engine, "connect", original)
        reg.event.listen(registry.engine, "connect", short_wait)
        registry.engine.dispose()
        with pytest.raises(RegistryError, match="kept in"):
            train_tiny(support_csv, name="locked", epochs=1)
    finally:
        blocker.rollback()
        blocker.close()
    kept = list((registry.home / "unregistered").iterdir())
    assert len(kept) == 1 and (kept[0] / "model" / "model.safetensors").is_file()
    assert not (registry.home / "runs" / "locked").exists() or list((registry.home / "runs" / "locked").iterdir())


def test_two_runs_of_one_name_do_not_collide(registry: Registry, support_csv: Path, tiny_model: str) -> None:
    with registry.run_lock("same"):
        (registry.run_dir("same") / "checkpoints").mkdir(parents=True)
        with pytest.raises(LockedError, match="in progress"):
            tunesmith.train(support_csv, registry=registry, name="same", base_model=tiny_model, progress=False)
        assert (registry.run_dir("same") / "checkpoints").is_dir()  # the running one's checkpoints are intact
    with pytest.raises(RegistryError):  # lock released: a plain run now gets past the lock (and fails on data)
        registry.resolve("same")


def test_trial_paths_read_back_from_the_study_are_confined(tmp_path: Path) -> None:
    from tunesmith.tuning import _trial_path

    class Trial:
        user_attrs: ClassVar[dict[str, str]] = {}

    scratch = tmp_path / "tuning" / "study"
    for hostile in ("/etc", str(tmp_path), "../../x", str(scratch)):
        Trial.user_attrs = {"path": hostile}
        assert _trial_path(Trial(), scratch) is None, hostile
    Trial.user_attrs = {"path": str(scratch / "home" / "models" / "trial-1" / "v-1")}
    assert _trial_path(Trial(), scratch) == (scratch / "home" / "models" / "trial-1" / "v-1").resolve()
