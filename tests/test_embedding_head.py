"""A classifier fine-tuned on a sentence-embedding base reads the pooled embedding (embedding-head artifacts)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import tunesmith
from conftest import write_csv, write_jsonl
from tunesmith.models import sentence_pooling
from tunesmith.tasks.text_classification import embedding

QUICK = {"epochs": 6, "batch_size": 16, "learning_rate": 5e-3, "early_stopping_patience": 0,
         "freeze_embeddings": False}  # fmt: skip


def as_sentence_model(source: str, target: Path, pooling: str) -> str:
    """`source` (a plain encoder folder) made a sentence-transformers model that pools with `pooling`."""
    shutil.copytree(source, target)
    (target / "1_Pooling").mkdir()
    (target / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 64, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False}))  # fmt: skip
    (target / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))  # fmt: skip
    return str(target)


def train_on(base: str, data: Path, registry: tunesmith.Registry, name: str, **overrides: object) -> object:
    """A quick run of `base` on `data`, registered as `name`."""
    return tunesmith.train(data, name=name, registry=registry, progress=False, base_model=base,
                           **{**QUICK, **overrides})  # fmt: skip


@pytest.fixture(scope="module")
def sentence_model(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> str:
    return as_sentence_model(tiny_model, tmp_path_factory.mktemp("st") / "tiny-st", "mean")


def test_the_head_reads_what_was_measured_best_for_the_base_and_data(sentence_model: str, tiny_model: str, tmp_path: Path) -> None:
    assert sentence_pooling(sentence_model) == "mean"
    assert sentence_pooling(as_sentence_model(tiny_model, tmp_path / "cls-st", "cls")) == "cls"
    assert sentence_pooling(tiny_model) is None
    # Multi-label data: the [CLS] vector straight to the head, whatever pooling the base embeds with; a frozen
    # encoder: the embedding it was trained for; single-label data: BERT's own head (docs/planning.md).
    assert embedding.pooling_for(sentence_model, "auto", multi_label=True) == "cls"
    assert embedding.pooling_for(str(tmp_path / "cls-st"), "auto", multi_label=True) == "cls"
    assert embedding.pooling_for(sentence_model, "auto", frozen=True) == "mean"
    assert embedding.pooling_for(sentence_model, "auto") is None
    assert embedding.pooling_for(tiny_model, "auto", multi_label=True) is None  # a plain encoder: its own head
    assert embedding.pooling_for(sentence_model, "pooler") is None
    assert embedding.pooling_for(tiny_model, "mean") == "mean"


def test_a_sentence_embedding_base_trains_a_linear_head_on_cls_that_reloads_and_exports(
    sentence_model: str, support_rows: list[tuple[str, str]], tmp_path: Path
) -> None:
    # The embedding-head artifact: encoder + head.safetensors, as few-shot models are saved.
    data = write_csv(tmp_path / "support.csv", support_rows)
    registry = tunesmith.Registry(tmp_path / "home")
    result = train_on(sentence_model, data, registry, "mean", classifier_pooling="cls")
    path = result.version.path
    meta = json.loads((path / "tunesmith.json").read_text())
    assert meta["architecture"] == "embedding-head" and meta["pooling"] == "cls" and meta["method"] == "full"
    assert (path / "head.safetensors").is_file()
    assert result.metrics["accuracy"] > 0.5  # 6 intents: it learned
    model = tunesmith.load_model("mean", registry=registry, backend="pytorch")
    report = tunesmith.evaluate(model, path / "data" / "test.jsonl", tmp_path / "again")
    assert report["test"]["accuracy"] == pytest.approx(result.metrics["accuracy"], abs=1e-9)
    record = tunesmith.export_model("mean", registry=registry, quantize=False)
    assert record["variants"]["fp32"]["agreement"] == 1.0
    texts = ["where is my parcel", "refund please"]
    onnx = tunesmith.load_model("mean", registry=registry, backend="onnx-fp32")
    assert np.allclose(onnx.predict_proba(texts), model.predict_proba(texts), atol=1e-4)
    # Single-label data on a sentence-embedding base keeps the architecture's own head by default.
    own = train_on(sentence_model, data, registry, "own")
    assert not (own.version.path / "head.safetensors").exists()
    assert "architecture" not in json.loads((own.version.path / "tunesmith.json").read_text())


def test_multi_label_data_on_a_sentence_embedding_base_trains_a_linear_head_on_cls(sentence_model: str, tmp_path: Path) -> None:
    records = [{"text": f"order {i} " + ("arrived broken" if i % 4 == 0 else "arrived fine"),
                "labels": ["delivery"] + (["damage"] if i % 4 == 0 else [])} for i in range(120)]  # fmt: skip
    data = write_jsonl(tmp_path / "multi.jsonl", records)
    registry = tunesmith.Registry(tmp_path / "home")
    result = train_on(sentence_model, data, registry, "multi")
    model = tunesmith.load_model("multi", registry=registry, backend="pytorch")
    assert model.meta["architecture"] == "embedding-head" and model.meta["pooling"] == "cls" and model.multi_label
    assert result.metrics["f1_micro"] > 0.8
    predicted = model.predict(["order 7 arrived broken", "order 9 arrived fine"])
    assert set(predicted[0].label) == {"damage", "delivery"} and predicted[1].label == ["delivery"]


def test_a_warm_retrain_of_an_embedding_head_keeps_the_old_labels_rows(
    sentence_model: str, support_rows: list[tuple[str, str]], tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    data = write_csv(tmp_path / "support.csv", support_rows)
    registry = tunesmith.Registry(tmp_path / "home")
    parent = train_on(sentence_model, data, registry, "s", classifier_pooling="mean", epochs=1)
    source = parent.version.path / "model"
    old_names = json.loads((parent.version.path / "tunesmith.json").read_text())["label_names"]
    old = load_file(str(parent.version.path / "head.safetensors"))
    assert embedding.pooling_for(str(source), "auto") == "mean"  # a warm retrain keeps the parent's pooling
    names = sorted([*old_names, "aaa_new"])  # the new label sorts first: every old row moves down one
    model = embedding.fresh(str(source), names, pooling="mean", multi_label=False, bias=[-1.0] * len(names))
    for j, name in enumerate(names):
        if name in old_names:
            assert torch.equal(model.head.weight[j].detach(), old["weight"][old_names.index(name)]), name
            assert model.head.bias[j] == old["bias"][old_names.index(name)], name
    assert model.head.bias[0] == -1.0  # the new label starts fresh, at the bias given
    assert not any(torch.equal(model.head.weight[0].detach(), row) for row in old["weight"])


def test_a_lora_retrain_of_an_embedding_head_trains_every_weight_and_keeps_the_head(
    sentence_model: str, support_rows: list[tuple[str, str]], tmp_path: Path
) -> None:  # fmt: skip
    from tunesmith.retraining import retrain

    registry = tunesmith.Registry(tmp_path / "home")
    train_on(sentence_model, write_csv(tmp_path / "support.csv", support_rows), registry, "s",
             classifier_pooling="mean", epochs=1)  # fmt: skip
    registry.promote("s@1", "production")
    more = write_csv(tmp_path / "more.csv", [(f"my parcel {i} has not come", support_rows[0][1]) for i in range(10)])
    lines: list[str] = []
    outcome = retrain(registry, "s", strategy="lora", files=[more], gate=False, export=False, progress=False,
                      overrides=["train.epochs=1"], log=lines.append)  # fmt: skip
    assert outcome.lineage["strategy"] == "rehearsal"
    assert any("a LoRA adapter cannot carry" in line for line in lines), lines
    meta = json.loads((outcome.result.version.path / "tunesmith.json").read_text())
    assert meta["architecture"] == "embedding-head" and meta["pooling"] == "mean" and meta["method"] == "full"
