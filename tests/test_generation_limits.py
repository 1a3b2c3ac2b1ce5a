"""Generation limits: cheap checks before costly work, a deadline and disconnect detection for whole answers,
seeds of each request's own, and hostile prompts that get a 4xx, never a 500."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

import tunesmith
from conftest import write_jsonl
from test_text_generation import make_pairs
from tunesmith.tasks.text_generation import generator as gen


@pytest.fixture(scope="module")
def raw_home(tiny_llm: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random base model (one step at a vanishing rate): it talks on to max_tokens."""
    folder = tmp_path_factory.mktemp("limits")
    data = write_jsonl(folder / "one.jsonl", make_pairs(20, seed=2))
    home = folder / "home"
    tunesmith.train(data, task="text-generation", name="raw", registry=tunesmith.Registry(home), progress=False,
                    base_model=tiny_llm, max_steps=1, learning_rate=1e-12)  # fmt: skip
    return home


def server_with(start_server, home: Path, tmp_path: Path, settings: str):
    config = tmp_path / "serve.yaml"
    config.write_text(settings)
    return start_server(home, "raw", "--config", str(config))


def test_partial_stop_matching_is_bounded() -> None:
    started = time.perf_counter()
    for _ in range(50):
        gen.partial_stop("a" * 500, ["b" * 1_000_000] * 4)
    assert time.perf_counter() - started < 1.0  # was ~17 s per piece for four 1 MB stop strings
    assert gen.partial_stop("hello wor", ["world"]) == 3 and gen.partial_stop("hello", ["xyz"]) == 0


def test_limits_are_checked_first_and_hostile_input_is_a_4xx(raw_home: Path, start_server, tmp_path: Path) -> None:
    server = server_with(start_server, raw_home, tmp_path, "max_prompt_chars: 1000\nmax_stop_chars: 20\n"
                         "max_concurrent_generations: 2\n")  # fmt: skip
    url = f"{server.url}/v1/completions"
    base = {"model": "raw", "prompt": "once upon a time", "max_tokens": 4}
    with httpx.Client(timeout=30) as c:
        long_stop = c.post(url, json={**base, "stop": ["x" * 100] * 4})
        assert long_stop.status_code == 422 and long_stop.json()["error"]["code"] == "stop_too_long"
        long_prompt = c.post(url, json={**base, "prompt": "y" * 1001})
        assert long_prompt.status_code == 422 and long_prompt.json()["error"]["code"] == "prompt_too_long"
        chat = c.post(f"{server.url}/v1/chat/completions", json={"model": "raw", "max_tokens": 4,
                      "messages": [{"role": "user", "content": "z" * 600}, {"role": "user", "content": "z" * 600}]})  # fmt: skip
        assert chat.status_code == 422 and chat.json()["error"]["code"] == "prompt_too_long"
        for seed in (-1, 2**53, 1.5):
            assert c.post(url, json={**base, "seed": seed, "temperature": 1}).status_code == 422, seed
        hf = c.post(f"{server.url}/models/raw", json={"inputs": "hi", "parameters": {"seed": -5}})
        assert hf.status_code == 422
        surrogate = c.post(url, content=b'{"model": "raw", "prompt": "a \\ud800 b", "max_tokens": 3}',
                           headers={"Content-Type": "application/json"})  # fmt: skip
        assert surrogate.status_code == 200, surrogate.text
        chat_surrogate = c.post(f"{server.url}/v1/chat/completions", content=b'{"model": "raw", "max_tokens": 3, '
                                b'"messages": [{"role": "user", "content": "\\udfff"}]}',
                                headers={"Content-Type": "application/json"})  # fmt: skip
        assert chat_surrogate.status_code == 200, chat_surrogate.text

        # Seeds belong to their request: two sampled answers at once equal the same request alone.
        sampled = {**base, "max_tokens": 24, "temperature": 1.0, "seed": 1234}
        alone = c.post(url, json=sampled).json()["choices"][0]["text"]
        with ThreadPoolExecutor(2) as pool:
            together = list(pool.map(lambda s: c.post(url, json={**sampled, "seed": s}).json(), [1234, 99]))
        assert together[0]["choices"][0]["text"] == alone
        other = c.post(url, json={**sampled, "seed": 99}).json()["choices"][0]["text"]
        assert together[1]["choices"][0]["text"] == other


def test_a_whole_answer_has_a_deadline(raw_home: Path, start_server, tmp_path: Path) -> None:
    server = server_with(start_server, raw_home, tmp_path, "generation_timeout_s: 0.05\n")
    body = {"model": "raw", "prompt": "once upon a time", "max_tokens": 480, "temperature": 0}
    started = time.perf_counter()
    late = httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)
    assert late.status_code == 504 and late.json()["error"]["code"] == "timeout"
    assert time.perf_counter() - started < 5
    metrics = httpx.get(f"{server.url}/metrics").text
    assert float(metrics.split('tunesmith_generated_tokens_total{model="raw"} ')[1].split()[0]) < 480


def test_a_whole_answer_stops_when_its_client_leaves(raw_home: Path, start_server, tmp_path: Path) -> None:
    server = server_with(start_server, raw_home, tmp_path, "generation_timeout_s: 300\n")
    body = {"model": "raw", "prompt": "once upon a time", "max_tokens": 480, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=httpx.Timeout(30, read=0.1))
    deadline, metrics = time.time() + 20, ""
    while time.time() < deadline and 'tunesmith_generations_cancelled_total{model="raw"} 1.0' not in metrics:
        time.sleep(0.2)
        metrics = httpx.get(f"{server.url}/metrics").text
    assert 'tunesmith_generations_cancelled_total{model="raw"} 1.0' in metrics
    assert float(metrics.split('tunesmith_generated_tokens_total{model="raw"} ')[1].split()[0]) < 480


@pytest.mark.parametrize("auth", ["off", "on"])
def test_fuzz_every_route_generation_included(
    auth: str, served_home: Path, raw_home: Path, start_server, tmp_path: Path
) -> None:
    from conftest import fuzz_openapi, private_copy

    home = private_copy(served_home, tmp_path / "home")
    registry = tunesmith.Registry(home)
    registry.register_folder(tunesmith.Registry(raw_home).resolve("raw").path, "raw")
    key = registry.create_key("fuzzer", ["admin"])
    config = tmp_path / "serve.yaml"
    config.write_text("max_new_tokens: 64\ndefault_max_tokens: 16\n")  # the fuzzer's answers stay short
    server = start_server(home, "support", "raw", "--auth", auth, "--config", str(config))
    fuzz_openapi(server.url, tmp_path, key=key, max_examples=15)
