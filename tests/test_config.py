from __future__ import annotations

from pathlib import Path

import pytest

from tunesmith.config import dump_config, load_config
from tunesmith.errors import ConfigError


def test_defaults_yaml_and_overrides_layer(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("name: intents\ntrain:\n  learning_rate: 3.0e-5\n  batch_size: 16\n", encoding="utf-8")
    config = load_config(path, ["train.batch_size=8", "data.label_delimiter=|"])
    assert config.name == "intents"
    assert config.train.learning_rate == 3e-5  # from YAML
    assert config.train.batch_size == 8  # override wins
    assert config.train.warmup_ratio == 0.1  # default
    assert config.data.label_delimiter == "|"


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    config = load_config(None, {"train.epochs": 3, "data.train": "x.csv"})
    path = tmp_path / "saved.yaml"
    path.write_text(dump_config(config), encoding="utf-8")
    assert load_config(path) == config


def test_unknown_setting_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"Unknown setting 'train.learnin_rate'.*learning_rate"):
        load_config(None, ["train.learnin_rate=1e-4"])


def test_out_of_range_value() -> None:
    with pytest.raises(ConfigError, match=r"'train.warmup_ratio'.*less than 1"):
        load_config(None, ["train.warmup_ratio=1.5"])


def test_malformed_override_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_configuration_reference_is_current() -> None:
    import runpy

    docs = Path(__file__).resolve().parent.parent / "docs"
    render = runpy.run_path(str(docs / "make_config_reference.py"))["render"]
    assert (docs / "configuration.md").read_text(encoding="utf-8") == render(), (
        "docs/configuration.md is stale: run python docs/make_config_reference.py"
    )
