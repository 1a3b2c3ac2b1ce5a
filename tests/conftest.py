"""Shared fixtures: a tiny random BERT built offline, small datasets written on the fly, a registry."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import string
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one compute thread each, or they take turns on both and both run slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

from make_support_data import make_rows  # noqa: E402
from tunesmith.registry import Registry  # noqa: E402
from tunesmith.tasks.token_classification.sentences import Sentence  # noqa: E402

# Names and places of the synthetic NER and QA data: the words a tiny model can learn to find.
PEOPLE = ["alice", "bob", "carol", "dave", "erin", "frank"]
CITIES = ["paris", "london", "berlin", "madrid", "rome", "oslo"]


class Stopped(Exception):
    """Raised by `stop_at`'s stand-in: the run ends where the test has seen what it needed."""


def stop_at(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> dict[str, object]:
    """Replace `module.name` with a stand-in that records its keyword arguments and raises `Stopped`: what a
    run passes to a model loader, without training. Returns the recorded arguments."""
    given: dict[str, object] = {}

    def capture(*args: object, **kwargs: object) -> None:
        given.update(kwargs)
        raise Stopped

    monkeypatch.setattr(module, name, capture)
    return given


def write_csv(path: Path, rows: Iterable[Iterable[object]], header: Iterable[str] = ("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(header))
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, records: Iterable[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def make_sentences(n: int, seed: int = 0) -> list[Sentence]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        person, city = rng.choice(PEOPLE), rng.choice(CITIES)
        pattern = rng.choice(["{p} flew to {c} today", "yesterday {p} moved to {c}", "{p} smith lives in {c}"])
        tokens, tags = [], []
        for word in pattern.split():
            if word == "{p}":
                tokens.append(person)
                tags.append("B-PER")
            elif word == "{c}":
                tokens.append(city)
                tags.append("B-LOC")
            else:
                tokens.append(word)
                tags.append("I-PER" if word == "smith" else "O")
        out.append(Sentence(tokens, tags))
    return out


def write_conll(path: Path, sentences: list[Sentence], columns: int = 2, docstart: bool = True) -> Path:
    lines = ["-DOCSTART- -X- -X- O", ""] if docstart else []
    for s in sentences:
        for token, tag in zip(s.tokens, s.tags, strict=True):
            middle = ["NN", "B-NP"][: columns - 2]
            lines.append("\t".join([token, *middle, tag]))
        lines.append("\t")  # a whitespace-only separator line, as WNUT-17 has
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def squad(path: Path, paragraphs: list[tuple[str, list[dict]]], version: str = "1.1") -> Path:
    data = [{"title": f"article {i}", "paragraphs": [{"context": c, "qas": q}]} for i, (c, q) in enumerate(paragraphs)]
    path.write_text(json.dumps({"version": version, "data": data}), encoding="utf-8")
    return path


def make_paragraphs(n: int, seed: int = 0, unanswerable: bool = False) -> list[tuple[str, list[dict]]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        person, city = rng.choice(PEOPLE), rng.choice(CITIES)
        context = f"yesterday {person} moved to {city} with a friend ."
        qas = [
            {
                "id": f"{i}w",
                "question": "who moved ?",
                "answers": [{"text": person, "answer_start": context.index(person)}],
            },
            {"id": f"{i}c", "question": "where to ?", "answers": [{"text": city, "answer_start": context.index(city)}]},
        ]
        if unanswerable and i % 3 == 0:
            qas.append({"id": f"{i}n", "question": "how old ?", "answers": [], "is_impossible": True})
        out.append((context, qas))
    return out


@pytest.fixture(scope="session")
def support_rows() -> list[tuple[str, str]]:
    """120 synthetic support messages, 20 per intent."""
    return make_rows(per_intent=20, seed=3)


@pytest.fixture
def support_csv(tmp_path: Path, support_rows: list[tuple[str, str]]) -> Path:
    return write_csv(tmp_path / "support.csv", support_rows)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, support_rows: list[tuple[str, str]]) -> str:
    """A 2-layer, 64-wide random BERT with a WordPiece vocabulary of the test texts' words and characters."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    torch.manual_seed(0)  # the same random weights in every run, so results do not drift between runs
    folder = tmp_path_factory.mktemp("tiny-bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # A fixed vocabulary, not a trained one: the WordPiece trainer counts in parallel and breaks ties
    # differently from run to run, which made the tiny model (and tests near a threshold) flaky.
    # Whole words of the support texts, plus single characters so any other word still splits into pieces.
    words = sorted({w for text, _ in support_rows for w in re.findall(r"\w+|[^\w\s]", text.lower())})
    chars = sorted({c for w in words for c in w} | set(string.ascii_lowercase + string.digits))
    vocab = [*specials, *words, *(c for c in chars if c not in words), *(f"##{c}" for c in chars)]
    tok = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
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


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, 64-wide random Llama with a byte-level vocabulary (every byte a token, no merges: lossless
    and the same in every run) and ChatML's two special tokens; no chat template (the default applies)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE({c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512)
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>", "additional_special_tokens": ["<|im_start|>"]})
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None, tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
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
    # The tiny model's word embeddings are random, not pretrained: they must train (freeze_embeddings False).
    tunesmith.train(
        data, registry=Registry(home), name="support", progress=False, base_model=tiny_model, epochs=25, early_stopping_patience=0,
        learning_rate=5e-3, batch_size=16, freeze_embeddings=False,
    )  # fmt: skip
    return home


def private_copy(home: Path, target: Path) -> Path:
    """A writable copy of a registry home, so a test that changes it does not affect others."""
    import shutil

    shutil.copytree(home, target, symlinks=True)
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


@pytest.fixture(scope="session")
def served_home(tmp_path_factory: pytest.TempPathFactory, trained_home: Path) -> Path:
    """A copy of `trained_home` whose model has an ONNX export (fp32 and int8)."""
    from tunesmith.api import export_artifact

    home = private_copy(trained_home, tmp_path_factory.mktemp("served") / "home")
    export_artifact(Registry(home).resolve("support").path, log=lambda _message: None)
    return home


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """`tunesmith serve` in a subprocess, as a user starts it; stderr (the JSON log) goes to a file."""

    def __init__(self, home: Path, args: Iterable[str], log_path: Path) -> None:
        import subprocess

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [sys.executable, "-m", "tunesmith.cli", "--home", str(home), "serve", *args, "--port", str(self.port)]
        self.log = log_path.open("w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, seconds: float = 90) -> RunningServer:
        import time

        import httpx

        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {seconds} s:\n{self.log_path.read_text()}")

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(encoding="utf-8").splitlines()

    def stop(self) -> int:
        import signal
        import subprocess

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode


@pytest.fixture(scope="module")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterable[Callable[..., RunningServer]]:
    """start_server(home, *serve_args) -> a ready RunningServer; all are stopped when the module ends."""
    servers: list[RunningServer] = []

    def start(home: Path, *args: str, ready: bool = True) -> RunningServer:
        server = RunningServer(home, args, tmp_path_factory.mktemp("server") / "server.log")
        servers.append(server)
        return server.wait_ready() if ready else server

    yield start
    for server in servers:
        server.stop()


def fuzz_openapi(url: str, workdir: Path, key: str | None = None, max_examples: int = 25) -> None:
    """schemathesis generates requests from the server's OpenAPI schema (valid and invalid) and checks every
    answer: no 5xx, documented status codes and content types, responses matching their schemas. With `key`,
    every request carries it (admin routes need one even with auth off)."""
    import subprocess

    headers = ["--header", f"Authorization: Bearer {key}"] if key else []
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(ROOT / "tests" / "schemathesis.toml"),
         "run", f"{url}/openapi.json", "--checks", "all", *headers,
         "--max-examples", str(max_examples), "--seed", "1", "--phases", "examples,coverage,fuzzing", "--no-color"],
        capture_output=True, text=True, cwd=workdir, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[result.stdout.find("FAILURES") :][:6000]
    assert "No issues found" in result.stdout or "passed" in result.stdout


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file and folder under `root` with its bytes' SHA-256 and mode: equal snapshots mean nothing changed.
    SQLite's -wal/-shm side files are left out: a reader may create and remove them without changing data."""
    import hashlib

    state = {}
    for path in sorted(root.rglob("*")):
        if path.name.endswith(("-wal", "-shm")):
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        state[str(path.relative_to(root))] = (digest, path.stat().st_mode)
    return state
