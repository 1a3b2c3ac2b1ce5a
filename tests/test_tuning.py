"""Hyperparameter search: trials run, a trailing trial is pruned, the best is registered, a killed search resumes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tunesmith
from conftest import write_csv
from tunesmith.errors import ConfigError
from tunesmith.tuning import Param, load_space, parse_duration, within_noise

# BERT's attention dropout: the tiny random model leaves its chance-level plateau by epoch 2-3 with it, by epoch
# 5-6 without (tunesmith's default, measured for pretrained models), and the pruning test needs learners early.
FAST = {"epochs": 10, "early_stopping_patience": 0, "attention_dropout": 0.1}


def test_search_prunes_registers_the_best_and_saves_plots(
    tiny_model: str, support_rows: list[tuple[str, str]], tmp_path: Path
) -> None:
    data = write_csv(tmp_path / "support.csv", support_rows)
    registry = tunesmith.Registry(tmp_path / "home")
    # Trial 0 is the defaults (lr 5e-3 below). The third trial's learning rate is 1e-6: as soon as the first two
    # start learning (epoch 2-3 on the tiny model), it trails their median and is pruned.
    space = {"learning_rate": Param("categorical", choices=[5e-3, 4e-3, 1e-6])}
    import optuna

    logs: list[str] = []
    storage_url = registry.engine.url.render_as_string(hide_password=False)
    study = optuna.create_study(study_name="tune-s", storage=storage_url, direction="maximize")
    study.enqueue_trial({"learning_rate": 5e-3}, user_attrs={"defaults": True})
    study.enqueue_trial({"learning_rate": 4e-3})
    study.enqueue_trial({"learning_rate": 1e-6})
    stored_when_said: dict[int, str] = {}

    def log(line: str) -> None:  # a trial said finished is already stored: a kill after the line keeps it
        logs.append(line)
        if said := re.match(r"trial (\d+): validation", line):
            number = int(said.group(1))
            stored_when_said[number] = study.get_trials(deepcopy=False)[number].state.name

    result = tunesmith.tune(data, trials=3, registry=registry, name="s", base_model=tiny_model, space=space,
                            learning_rate=5e-3, log=log, **FAST)  # fmt: skip
    states = [row["state"] for row in result.trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"], (states, logs)
    assert stored_when_said == {0: "COMPLETE", 1: "COMPLETE"}, logs
    assert result.trials[2]["evaluations_reported"] <= 3  # stopped once it trailed, not after all ten evaluations
    assert result.default_value == result.trials[0]["value"] and result.best["number"] in (0, 1)
    version = result.version
    assert version is not None and version.ref == "s@1"
    meta = tunesmith.load_model("s", registry=registry).meta
    assert meta["tuning"]["best_trial"] == result.best["number"] and meta["name"] == "s"
    # 12 validation rows would train a plain run of this data; trials are ranked on them, so they stay held out.
    assert json.loads((version.path / "metrics.json").read_text())["validation_trained_on"] is False
    assert (version.path / "tuning" / "optimization_history.png").stat().st_size > 1000
    assert (version.path / "tuning" / "param_importances.png").is_file()
    # Only the best trial's artifact is kept in the scratch registry.
    kept = [p for p in (registry.home / "tuning" / "tune-s" / "home" / "models").rglob("tunesmith.json")]
    assert len(kept) == 1


def test_a_killed_search_resumes(tiny_model: str, support_rows: list[tuple[str, str]], tmp_path: Path) -> None:
    import optuna

    data = write_csv(tmp_path / "support.csv", support_rows)
    home = tmp_path / "home"
    command = [sys.executable, "-m", "tunesmith.cli", "--home", str(home), "tune", str(data), "--trials", "3",
               "--name", "s", "--model", tiny_model, "--set", "train.epochs=2", "--set",
               "train.early_stopping_patience=0"]  # fmt: skip
    # Its output goes to a file: a pipe nobody reads fills up (64 KiB) and blocks the search mid-trial.
    output = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, text=True)
    url = f"sqlite:///{home / 'registry.db'}"
    deadline = time.time() + 240
    # Watch its output, not the study: reading the database while the search writes to it can fail as locked.
    while time.time() < deadline and "trial 0:" not in (tmp_path / "first.log").read_text():
        time.sleep(0.5)
    first.kill()
    first.wait()
    output.close()
    study = optuna.load_study(study_name="tune-s", storage=url)
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert finished, "no trial finished before the deadline:\n" + (tmp_path / "first.log").read_text()[-3000:]
    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Resuming study 'tune-s'" in second.stderr + second.stdout
    study = optuna.load_study(study_name="tune-s", storage=url)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert len(done) >= 3 and finished[0].number in {t.number for t in done}  # the first run's trial counts
    assert tunesmith.Registry(home).resolve("s").version == 1


def test_the_timeout_bounds_the_running_trial(
    tiny_model: str, support_rows: list[tuple[str, str]], tmp_path: Path
) -> None:  # fmt: skip
    """Optuna's timeout only stops new trials; ours also hands the running trial what is left as its budget."""
    data = write_csv(tmp_path / "support.csv", support_rows)
    result = tunesmith.tune(data, trials=1, timeout=90, registry=tunesmith.Registry(tmp_path / "home"), name="s",
                            base_model=tiny_model, log=lambda _m: None, epochs=1)  # fmt: skip
    assert 1.0 < result.trials[0]["budget_minutes"] <= 1.5
    unbounded = tunesmith.tune(data, trials=1, registry=tunesmith.Registry(tmp_path / "home2"), name="s",
                               base_model=tiny_model, log=lambda _m: None, epochs=1)  # fmt: skip
    assert unbounded.trials[0]["budget_minutes"] is None


def test_durations_and_space_files(tmp_path: Path) -> None:
    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400 and parse_duration("90s") == 90
    assert parse_duration("45") == 45 and parse_duration(None) is None
    with pytest.raises(ConfigError, match="Cannot read the duration"):
        parse_duration("soon")
    good = tmp_path / "space.yaml"
    good.write_text("learning_rate@lora: {low: 1.0e-4, high: 1.0e-2, log: true}\nbatch_size: {choices: [8, 16]}\n")
    space = load_space(good)
    assert space["learning_rate@lora"].log and space["learning_rate@lora"].methods == ("lora",)
    assert space["batch_size"].choices == [8, 16]
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: {low: 1, high: 2}\n")
    with pytest.raises(ConfigError, match="not a training setting"):
        load_space(bad)


def test_a_lead_within_the_noise_of_the_validation_split_is_called_out() -> None:
    # TREC's 545 validation questions: +0.011 macro-F1 is under two standard errors (~0.025)
    assert "may be chance" in within_noise(0.9055, 0.8949, 545)
    assert within_noise(0.95, 0.80, 545) is None  # a clear lead
    assert within_noise(0.9055, 0.8949, 100_000) is None  # the same lead on a large split
    assert within_noise(0.9, None, 545) is None and within_noise(-0.4, -0.5, 545) is None  # no defaults; a loss
