"""Shared fixtures: a tiny random BERT built offline, small datasets written on the fly, a registry."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from make_support_data import make_rows  # noqa: E402
from tunesmith.registry import Registry  # noqa: E402


def write_csv(path: Path, rows: Iterable[Iterable[object]], header: Iterable[str] = ("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(header))
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, records: Iterable[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def support_rows() -> list[tuple[str, str]]:
    """120 synthetic support messages, 20 per intent."""
    return make_rows(per_intent=20, seed=3)


@pytest.fixture
def support_csv(tmp_path: Path, support_rows: list[tuple[str, str]]) -> Path:
    return write_csv(tmp_path / "support.csv", support_rows)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, support_rows: list[tuple[str, str]]) -> str:
    """A 2-layer, 64-wide random BERT with a WordPiece vocabulary trained on the test texts."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    torch.manual_seed(0)  # the same random weights in every run, so results do not drift between runs
    folder = tmp_path_factory.mktemp("tiny-bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        [t for t, _ in support_rows] * 2, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials)
    )
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=64,
    )  # fmt: skip
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=64,
    )  # fmt: skip
    BertModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "home")


@pytest.fixture
def train_tiny(tiny_model: str, registry: Registry) -> Callable[..., object]:
    """Train the tiny model quickly: train_tiny(data_path, **overrides) -> TrainResult."""
    import tunesmith

    def run(data: Path, **overrides: object) -> object:
        settings = {"base_model": tiny_model, "epochs": 2, "learning_rate": 5e-3, "batch_size": 16, **overrides}
        return tunesmith.train(data, registry=registry, progress=False, **settings)

    return run


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, support_rows: list) -> Path:
    """A registry home holding one trained tiny classifier named 'support' (version 1)."""
    import tunesmith

    folder = tmp_path_factory.mktemp("trained")
    data = write_csv(folder / "support.csv", support_rows)
    home = folder / "home"
    tunesmith.train(
        data, registry=Registry(home), name="support", progress=False, base_model=tiny_model, epochs=25, early_stopping_patience=0,
        learning_rate=5e-3, batch_size=16,
    )  # fmt: skip
    return home
