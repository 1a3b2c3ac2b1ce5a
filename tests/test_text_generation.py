"""Instruction tuning (`--task text-generation`): data rules, prompt masking on token ids, a tiny model that
trains and changes its answers, and the embedded model's GGUF conversion."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import tunesmith
from conftest import write_jsonl
from make_instruction_data import make_pairs
from tunesmith.tasks import get_task
from tunesmith.tasks.text_generation import conversations as conv
from tunesmith.tasks.text_generation import generator as gen
from tunesmith.tasks.text_generation import metrics as scoring


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"messages": [{"role": "user"}]}, "needs both 'role' and 'content'"),
        ({"messages": [{"role": "human", "content": "hi"}]}, "roles are system, user, assistant"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "has no 'assistant' message"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                       {"role": "user", "content": "and?"}]}, "ends with a 'user' message"),
        ({"messages": [{"role": "assistant", "content": "yo"}]}, "has no 'user' message"),
        ({"messages": "hello"}, "must be a non-empty list"),
        ({"question": "q"}, "expected {\"instruction\", \"output\"}"),
        ({"instruction": " ", "output": "x"}, "the instruction is empty"),
        ({"text": "a", "label": "b"}, "found the keys ['label', 'text']"),
    ],
)
def test_each_validation_rule_has_its_message(record: dict, message: str, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "ok", "output": "fine"}, record])
    with pytest.raises(tunesmith.DataError, match="line 2") as error:
        conv.read_conversations(path)
    assert message in str(error.value)


def test_empty_answers_are_dropped_with_a_warning_and_bad_json_is_named(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": " "},
                                              {"messages": [{"role": "user", "content": "x"},
                                                            {"role": "assistant", "content": ""}]}])  # fmt: skip
    issues: list = []
    conversations = conv.read_conversations(path, issues)
    assert len(conversations) == 1 and issues[0].code == "empty_output" and "lines 2, 3" in issues[0].message
    (tmp_path / "broken.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    with pytest.raises(tunesmith.DataError, match="line 2 is not valid JSON"):
        conv.read_conversations(tmp_path / "broken.jsonl")


def test_loss_is_on_the_answers_only(tiny_llm: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    assert conv.prepare_tokenizer(tokenizer)  # no template of its own: ChatML
    conversation = conv.Conversation([
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Order 123?"},
        {"role": "assistant", "content": "order=123"},
    ], row=1)  # fmt: skip
    row, cut = conv.encode(tokenizer, conversation, 10_000)
    assert not cut and len(row["input_ids"]) == len(row["labels"])
    full = tokenizer(conv.render(tokenizer, conversation.messages, False), add_special_tokens=False)["input_ids"]
    assert row["input_ids"] == full  # the pieces add up to the whole rendered conversation
    trained = [i for i, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    assert tokenizer.decode(trained) == "Hello!<|im_end|>\norder=123<|im_end|>\n"
    masked = [i for i, label in zip(row["input_ids"], row["labels"], strict=True) if label == -100]
    assert "Order 123?" in tokenizer.decode(masked) and "Hello!" not in tokenizer.decode(masked)
    short, cut = conv.encode(tokenizer, conversation, 20)
    assert cut and len(short["input_ids"]) == 20 and set(short["labels"]) == {-100}


def test_over_length_conversations_are_counted_truncated_or_dropped(tiny_llm: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    conv.prepare_tokenizer(tokenizer)
    long = conv.Conversation([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y" * 200}], 1)
    short = conv.Conversation([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], 2)
    issues: list = []
    rows = conv.encode_all(tokenizer, [long, short], 64, "truncate", "training", issues)
    assert len(rows) == 2 and "1 truncated, 0 dropped" in issues[0].message
    issues = []
    assert len(conv.encode_all(tokenizer, [long, short], 64, "drop", "training", issues)) == 1
    assert "0 truncated, 1 dropped" in issues[0].message


def test_metrics() -> None:
    assert scoring.token_f1("order=1; product=lamp", "order=1; product=desk lamp") == pytest.approx(2 * 1 * 0.8 / 1.8)
    assert scoring.rouge_l("a b c d", "a c d") == pytest.approx(2 * 0.75 * 1 / 1.75)
    assert scoring.score(["x", "y "], ["x", "z"])["exact_match"] == 0.5


@pytest.fixture(scope="module")
def trained(tiny_llm: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[tunesmith.Registry, object]:
    folder = tmp_path_factory.mktemp("generation")
    data = write_jsonl(folder / "pairs.jsonl", make_pairs(60, seed=1))
    registry = tunesmith.Registry(folder / "home")
    result = tunesmith.train(data, task="text-generation", name="extract", registry=registry, progress=False,
                             base_model=tiny_llm, epochs=3, learning_rate=5e-3, batch_size=8)  # fmt: skip
    return registry, result


def test_tiny_model_trains_registers_and_changes_its_answers(trained: tuple) -> None:
    registry, result = trained
    version = registry.resolve("extract@1")
    meta = json.loads((version.path / "tunesmith.json").read_text())
    assert version.task == "text-generation" and meta["method"] == "lora" and (version.path / "adapter").is_dir()
    assert meta["parameters"]["trainable"] < meta["parameters"]["total"] / 10
    evaluation = json.loads((version.path / "metrics.json").read_text())
    samples = evaluation["samples"]
    assert samples and any(s["before"] != s["after"] for s in samples)  # training changed what it says
    assert {"exact_match", "token_f1", "rouge_l", "perplexity"} <= set(result.metrics)
    assert "| rouge_l |" in (version.path / "report.md").read_text()
    generator = tunesmith.load_model("extract", registry=registry)  # adapter merged into the base
    answer = generator.chat([{"role": "user", "content": samples[0]["prompt"]}], max_tokens=24)
    assert answer.text == samples[0]["after"][: len(answer.text)] and answer.completion_tokens <= 24
    record = tunesmith.export_model("extract", registry=registry)  # the adapter merged into one plain folder
    from transformers import AutoModelForCausalLM

    merged = gen.Generator(AutoModelForCausalLM.from_pretrained(record["path"]), generator.tokenizer)
    assert record["format"] == "merged" and not (Path(record["path"]) / "adapter_config.json").exists()
    prompt = [{"role": "user", "content": samples[0]["prompt"]}]
    assert merged.chat(prompt, max_tokens=24).text == answer.text


def test_stop_strings_are_cut_and_streaming_matches(tiny_llm: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    conv.prepare_tokenizer(tokenizer)
    generator = gen.Generator(AutoModelForCausalLM.from_pretrained(tiny_llm), tokenizer)
    ids = generator.prompt_ids([{"role": "user", "content": "say something"}])
    whole = generator.generate(ids, max_tokens=20)
    assert whole.finish_reason in ("stop", "length") and whole.completion_tokens <= 20
    pieces = list(generator.stream(ids, max_tokens=20))
    assert "".join(p for p in pieces if isinstance(p, str)) == whole.text == pieces[-1].text
    if len(whole.text) > 3:
        stop = whole.text[2:4]
        cut = generator.generate(ids, max_tokens=20, stop=[stop])
        assert cut.text == whole.text[: whole.text.find(stop)] and cut.finish_reason == "stop"
        streamed = [p for p in generator.stream(ids, max_tokens=20, stop=[stop]) if isinstance(p, str)]
        assert "".join(streamed) == cut.text


def test_openai_client_against_the_real_server(trained: tuple, start_server) -> None:
    import httpx
    import openai

    registry, _ = trained
    server = start_server(registry.home, "extract")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused-on-loopback", max_retries=0)
    messages = [{"role": "user", "content": "Extract: order 12345 for the kettle never arrived."}]
    whole = client.chat.completions.create(model="extract", messages=messages, max_tokens=12, temperature=0)
    text = whole.choices[0].message.content
    assert whole.object == "chat.completion" and whole.usage.completion_tokens <= 12
    assert whole.choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(model="extract", messages=messages, max_tokens=12, temperature=0,
                                                 stream=True))  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text  # greedy: streamed == whole
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason

    sampled = [client.completions.create(model="extract", prompt="order=", max_tokens=8, temperature=1.0, seed=7)
               for _ in range(2)]  # fmt: skip
    assert sampled[0].choices[0].text == sampled[1].choices[0].text  # the same seed, the same answer
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="extract", prompt="order=", max_tokens=8, temperature=1.0, seed=7, stream=True))  # fmt: skip
    assert streamed == sampled[0].choices[0].text

    with pytest.raises(openai.UnprocessableEntityError, match="max_tokens 5000 is over"):
        client.chat.completions.create(model="extract", messages=messages, max_tokens=5000)
    with pytest.raises(openai.NotFoundError, match="No model 'nope'"):
        client.chat.completions.create(model="nope", messages=messages)
    bad = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "extract", "messages": []})
    assert bad.status_code == 422 and bad.json()["error"]["type"] == "invalid_request_error"

    # The Hugging Face Inference API shape (text-generation-inference's) on /models/NAME
    from huggingface_hub import InferenceClient

    hf = InferenceClient(model=f"{server.url}/models/extract")
    assert hf.text_generation("order=", max_new_tokens=8) == client.completions.create(
        model="extract", prompt="order=", max_tokens=8, temperature=0).choices[0].text  # fmt: skip
    detailed = hf.text_generation("order=", max_new_tokens=8, details=True, return_full_text=True)
    assert detailed.generated_text.startswith("order=") and detailed.details.generated_tokens <= 8
    several = httpx.post(f"{server.url}/models/extract", json={"inputs": ["a", "b"], "parameters": {"max_new_tokens": 3}})
    assert several.status_code == 200 and len(several.json()) == 2  # one answer per prompt, as the pipeline does
    pair = httpx.post(f"{server.url}/models/extract", json={"inputs": {"question": "q", "context": "c"}})
    assert pair.status_code == 404 and pair.json()["code"] == "wrong_task"
    assert httpx.post(f"{server.url}/models/extract", json={"inputs": "a", "stream": True}).status_code == 422

    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'tunesmith_generated_tokens_total{model="extract"}' in metrics
    assert "tunesmith_time_to_first_token_seconds_bucket" in metrics


def test_a_canary_split_routes_generations_sticky_per_user(trained: tuple, start_server, tmp_path: Path) -> None:
    """The OpenAI routes follow a traffic split as the other routes do: one user always reaches one version,
    every answer names its variant, and the log row of each answer names it too."""
    import httpx

    from conftest import private_copy
    from tunesmith.monitoring.predictions import read_predictions

    registry, _ = trained
    home = private_copy(registry.home, tmp_path / "home")
    mine = tunesmith.Registry(home)
    mine.promote("extract@1", "production")
    mine.promote(mine.register_folder(mine.resolve("extract@1").path).ref, "candidate")
    server = start_server(home, "extract@production", "--watch-interval", "0.3")
    mine.start_canary("extract", "candidate", 0.5)

    def ask(user: str, stream: bool = False) -> str:
        response = httpx.post(f"{server.url}/v1/completions", headers={"X-Tunesmith-User": user}, timeout=30,
                              json={"model": "extract", "prompt": "order=", "max_tokens": 2, "stream": stream})  # fmt: skip
        assert response.status_code == 200, response.text
        return response.headers["x-tunesmith-variant"]

    deadline = time.time() + 20
    while "candidate" not in {ask(f"probe-{i}") for i in range(10)}:
        assert time.time() < deadline, "the server did not pick the split up"
    seen = {f"u{i}": {ask(f"u{i}") for _ in range(3)} | {ask(f"u{i}", stream=True)} for i in range(16)}
    assert all(len(variants) == 1 for variants in seen.values()), seen  # sticky, streamed or not
    assert {v for variants in seen.values() for v in variants} == {"candidate", "production"}, seen
    deadline = time.time() + 20
    while not (rows := [r for r in read_predictions(home, "extract") if r["variant"] == "candidate"]):
        assert time.time() < deadline, "no logged answer names the canary"
        time.sleep(0.2)
    assert {r["version"] for r in rows} == {2}
    assert 'tunesmith_variant_requests_total{model="extract",variant="candidate"}' in httpx.get(
        f"{server.url}/metrics").text  # fmt: skip


def test_cli_trains_and_predicts_a_generation_model(
    tiny_llm: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_cli import run

    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(30, seed=3))
    home = str(tmp_path / "home")
    code, out, err = run(capsys, "--home", home, "train", str(data), "--task", "text-generation", "--model", tiny_llm,
                         "--epochs", "1", "--name", "gen", "--no-progress")  # fmt: skip
    assert code == 0, err
    assert "before training" in out and "rouge_l" in out and "loss on the assistant turns only" in err
    code, out, err = run(capsys, "--home", home, "predict", "gen", "order 123 for a kettle", "--max-tokens", "5")
    assert code == 0, err
    generator = tunesmith.load_model("gen", registry=tunesmith.Registry(home))
    expected = generator.chat([{"role": "user", "content": "order 123 for a kettle"}], max_tokens=5)
    assert out == expected.text + "\n" and expected.completion_tokens <= 5


def write_tiny_gguf(path: Path, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 4, kv: int = 2,
                    inter: int = 64) -> Path:  # fmt: skip
    """A random 2-layer Llama as a GGUF file, with a byte-level (gpt2-type) vocabulary, written by `gguf`."""
    import gguf
    import numpy as np
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    rng = np.random.default_rng(seed)
    alphabet = sorted(bytes_to_unicode().values())
    tokens = [*alphabet, "Ġt", "<|im_start|>", "<|im_end|>"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(alphabet) + 1) + [3, 3])  # 3: control tokens
    writer.add_token_merges(["Ġ t"])
    writer.add_bos_token_id(len(tokens) - 2)
    writer.add_eos_token_id(len(tokens) - 1)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(len(tokens), hidden))
    head = hidden // heads
    for i in range(layers):
        for name, shape in (("attn_q", (hidden, hidden)), ("attn_k", (kv * head, hidden)), ("attn_v", (kv * head, hidden)),
                            ("attn_output", (hidden, hidden)), ("ffn_gate", (inter, hidden)), ("ffn_up", (inter, hidden)),
                            ("ffn_down", (hidden, inter))):  # fmt: skip
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(*shape))
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.add_tensor("output.weight", weight(len(tokens), hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_is_converted_once_checksummed_and_matches_transformers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.conversion import SOURCE
    from tunesmith.gguf import hf_folder
    from tunesmith.models import resolve_model

    source = write_tiny_gguf(tmp_path / "tiny.gguf")
    cache = tmp_path / "cache"
    folder = hf_folder(source, cache)
    assert folder.name.endswith(json.loads((folder / SOURCE).read_text())["sha256"][:16])
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no partial folder left behind
    converted = AutoModelForCausalLM.from_pretrained(folder)
    direct = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    ids = AutoTokenizer.from_pretrained(folder)("hello there", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(converted(**ids).logits, direct(**ids).logits)
    converted.save_pretrained(tmp_path / "resaved")  # the quantizer is gone: it saves like any model

    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert hf_folder(source, cache) == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp
    write_tiny_gguf(source, seed=1)  # other bytes under the same name: converted anew, into another folder
    other = hf_folder(source, cache)
    assert other != folder and json.loads((other / SOURCE).read_text())["sha256"] != json.loads(
        (folder / SOURCE).read_text())["sha256"]  # fmt: skip
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "root"))
    resolved = Path(resolve_model(str(source)))  # a .gguf path works wherever a model name does
    assert resolved.parent == tmp_path / "root" / "gguf" and (resolved / "config.json").is_file()
    with pytest.raises(tunesmith.ModelError, match="does not exist"):
        hf_folder(tmp_path / "missing.gguf", cache)


def test_tune_searches_a_generation_model_by_validation_loss(tiny_llm: str, tmp_path: Path) -> None:
    from tunesmith.tuning import Param

    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(30, seed=4))
    registry = tunesmith.Registry(tmp_path / "home")
    space = {"learning_rate": Param("categorical", choices=[5e-3, 1e-7])}
    result = tunesmith.tune(data, trials=2, registry=registry, name="g", task="text-generation", base_model=tiny_llm,
                            space=space, epochs=1, batch_size=8, log=lambda _m: None)  # fmt: skip
    values = {t["params"]["learning_rate"]: t["value"] for t in result.trials if t["value"] is not None}
    assert len(result.trials) == 2 and all(v < 0 for v in values.values())  # minus the validation loss
    assert result.version is not None and result.version.task == "text-generation"
    assert json.loads((result.version.path / "tunesmith.json").read_text())["method"] == "lora"


def test_a_cancelled_stream_stops_generating(tiny_llm: str) -> None:
    import threading

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    conv.prepare_tokenizer(tokenizer)
    generator = gen.Generator(AutoModelForCausalLM.from_pretrained(tiny_llm), tokenizer)
    ids = generator.prompt_ids(prompt="once upon a time")
    whole = generator.generate(ids, max_tokens=300)
    assert whole.completion_tokens == 300  # the random model never says its end-of-text token here
    cancel = threading.Event()
    pieces = []
    for piece in generator.stream(ids, max_tokens=300, cancel=cancel):
        pieces.append(piece)
        cancel.set()  # as the server does when the client has gone away
    assert pieces[-1].completion_tokens < whole.completion_tokens / 4


def test_the_server_stops_a_stream_whose_client_left(tiny_llm: str, tmp_path: Path, start_server) -> None:
    import httpx

    data = write_jsonl(tmp_path / "one.jsonl", make_pairs(20, seed=2))
    home = tmp_path / "home"
    # one step at a vanishing learning rate: the random base model, which talks on to max_tokens
    tunesmith.train(data, task="text-generation", name="raw", registry=tunesmith.Registry(home), progress=False,
                    base_model=tiny_llm, max_steps=1, learning_rate=1e-12)  # fmt: skip
    server = start_server(home, "raw")
    body = {"model": "raw", "prompt": "once upon a time", "max_tokens": 480, "temperature": 0, "stream": True}
    with httpx.Client(timeout=30) as client, client.stream("POST", f"{server.url}/v1/completions", json=body) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # the first piece has arrived; now the client hangs up
    deadline, metrics = time.time() + 20, ""
    while time.time() < deadline and 'tunesmith_generations_cancelled_total{model="raw"} 1.0' not in metrics:
        time.sleep(0.2)
        metrics = httpx.get(f"{server.url}/metrics").text
    assert 'tunesmith_generations_cancelled_total{model="raw"} 1.0' in metrics
    generated = float(metrics.split('tunesmith_generated_tokens_total{model="raw"} ')[1].split()[0])
    assert generated < 480 / 2  # stopped soon after the client left, not run on to max_tokens
    after = httpx.post(f"{server.url}/v1/completions", json={**body, "stream": False, "max_tokens": 5}, timeout=30)
    assert after.status_code == 200 and after.json()["usage"]["completion_tokens"] == 5  # the slot is free again


def test_a_killed_generation_run_resumes(tiny_llm: str, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(40, seed=3))
    home = tmp_path / "home"
    settings = {"train.epochs": 8, "train.learning_rate": 5e-3, "train.batch_size": 8,
                "train.early_stopping_patience": 0}  # fmt: skip
    command = [sys.executable, "-m", "tunesmith.cli", "--home", str(home), "train", str(data), "--task",
               "text-generation", "--name", "gen", "--model", tiny_llm, "--no-progress",
               *[f"--set={k}={v}" for k, v in settings.items()]]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = home / "runs" / "gen" / "checkpoints"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not any(checkpoints.glob("checkpoint-*/trainer_state.json")):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert any(checkpoints.glob("checkpoint-*/trainer_state.json")), "killed before the first checkpoint"
    assert tunesmith.Registry(home).names() == []

    logs: list[str] = []
    config = tunesmith.load_config(None, {"data.train": str(data), "task": "text-generation", "name": "gen",
                                          "train.base_model": tiny_llm, **settings})  # fmt: skip
    result = get_task("text-generation").train(config, registry=tunesmith.Registry(home), resume=True, progress=False, log=logs.append)
    assert any("Resuming from" in line and "checkpoint-" in line for line in logs), logs
    assert result.version.version == 1 and not (home / "runs" / "gen").exists()


def test_a_given_test_file_is_scored_whole(tiny_llm: str, tmp_path: Path) -> None:
    """The held-out cut is capped (generation is slow) and says so; a test file the user gives is never cut."""
    train = write_jsonl(tmp_path / "train.jsonl", make_pairs(20, seed=4))
    test = write_jsonl(tmp_path / "test.jsonl", make_pairs(70, seed=5))
    result = tunesmith.train(train, task="text-generation", name="whole", registry=tunesmith.Registry(tmp_path / "h"),
                             progress=False, base_model=tiny_llm, max_steps=1, test=str(test))  # fmt: skip
    assert result.metrics["n"] == 70 == result.metrics["test_rows"] and result.baseline["n"] == 70
    assert "Test split: 70 conversations, greedy" in (result.version.path / "report.md").read_text()
