"""Base-model resolution: the embedded default, local folders and hub ids share one code path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.errors import ModelError
from tunesmith.models import attention_dropout_override, load_classifier, load_tokenizer, resolve_model


def test_embedded_default_resolves_to_the_packaged_folder() -> None:
    path = Path(resolve_model("embedded:all-MiniLM-L6-v2"))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def test_local_folder_loads_through_the_same_path(tiny_model: str) -> None:
    model = load_classifier(tiny_model, ["a", "b", "c"], multi_label=False)
    assert model.config.num_labels == 3 and model.config.id2label[2] == "c"
    assert load_tokenizer(tiny_model)("hello")["input_ids"][0] == load_tokenizer(tiny_model).cls_token_id


def test_unknown_names_fail_with_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelError, match="Unknown embedded model"):
        resolve_model("embedded:gpt-17")
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path / "not-a-model"))
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model("./missing/model")
    # A hub id with no network: a clear error, no traceback. Offline mode is read at import time, so patch the
    # constant too (otherwise the hub client retries for most of a minute before giving up).
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert resolve_model("some-org/some-model") == "some-org/some-model"
    with pytest.raises(ModelError, match="Could not load model 'some-org/some-model'.*embedded default"):
        load_tokenizer("some-org/some-model")


def test_training_is_reproducible_with_a_seed(train_tiny, support_csv: Path) -> None:
    import tunesmith

    first = train_tiny(support_csv, name="a", epochs=1)
    second = train_tiny(support_csv, name="b", epochs=1)
    texts = ["where is my parcel", "refund please", "I cannot log in"]
    a = tunesmith.load_model(str(first.version.path)).predict_proba(texts)
    b = tunesmith.load_model(str(second.version.path)).predict_proba(texts)
    assert (a == b).all()
    assert first.metrics == second.metrics


def test_training_turns_attention_dropout_off_unless_asked(train_tiny, support_csv: Path, tiny_llm: str) -> None:
    """PyTorch's fused attention takes no dropout on a CPU: with it on, a step falls back to the slow path."""

    def trained_with(result: object) -> float:
        config = json.loads((result.version.path / "model" / "config.json").read_text())  # type: ignore[attr-defined]
        return config["attention_probs_dropout_prob"]

    assert trained_with(train_tiny(support_csv, name="off", epochs=1)) == 0.0  # the tiny BERT comes with 0.1
    assert trained_with(train_tiny(support_csv, name="set", epochs=1, attention_dropout=0.2)) == 0.2
    # Architectures that name it otherwise (DistilBERT, Llama, ...) get it under their own name.
    assert attention_dropout_override(tiny_llm, 0.0) == {"attention_dropout": 0.0}
    assert attention_dropout_override(tiny_llm, None) == {}
