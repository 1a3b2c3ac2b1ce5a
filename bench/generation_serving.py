"""Serving a text-generation model: tokens/s and time to first token at 1 and 4 concurrent streams, against
plain `model.generate` in a loop (the naive baseline) in the same run.

    python bench/generation_serving.py [--model NAME] [--home DIR] [--requests 8] [--max-tokens 64]

Without --model, a SmolLM2-135M-Instruct registered as-is (no training) is served. Every request asks the
same kind of chat question with greedy decoding and `max_tokens`; the server streams (SSE) and the client
notes when the first and the last piece arrive. Writes bench/results/generation_serving.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tunesmith
from _common import save

PROMPTS = [f"Write one sentence about order {n} for a desk lamp that arrived late." for n in range(10000, 10040)]


def naive(model: str, home: Path, n: int, max_tokens: int) -> dict[str, float]:
    """The loop a notebook would run: tokenize, `model.generate`, decode, one request after another."""
    generator = tunesmith.load_model(model, registry=tunesmith.Registry(home))
    tokens, started = 0, time.perf_counter()
    first = []
    for prompt in PROMPTS[:n]:
        t0 = time.perf_counter()
        result = generator.chat([{"role": "user", "content": prompt}], max_tokens=max_tokens)
        elapsed = time.perf_counter() - t0
        first.append(elapsed)  # no streaming: the first token arrives with the last
        tokens += result.completion_tokens
    seconds = time.perf_counter() - started
    return {"tokens_per_second": tokens / seconds, "ttft_p50_s": statistics.median(first), "tokens": tokens}


async def streamed(url: str, model: str, n: int, concurrency: int, max_tokens: int) -> dict[str, float]:
    import httpx

    firsts: list[float] = []
    tokens = 0
    queue = list(PROMPTS[:n])

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens
        while queue:
            prompt = queue.pop()
            t0 = time.perf_counter()
            first = None
            body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                    "temperature": 0, "stream": True}  # fmt: skip
            async with http.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if first is None and chunk["choices"][0]["delta"].get("content"):
                        first = time.perf_counter() - t0
                    if chunk.get("usage"):
                        tokens += chunk["usage"]["completion_tokens"]
            firsts.append(first or time.perf_counter() - t0)

    started = time.perf_counter()
    async with httpx.AsyncClient() as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    return {"tokens_per_second": tokens / seconds, "ttft_p50_s": statistics.median(firsts), "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        home, model = args.home, args.model
        if model is None:
            home = Path(work) / "home"
            data = Path(work) / "one.jsonl"
            data.write_text("".join(json.dumps({"instruction": p, "output": "ok"}) + "\n" for p in PROMPTS))
            # max_steps=1 at a vanishing learning rate: the base model, registered like any tuned one
            tunesmith.train(data, task="text-generation", name="smollm2", registry=tunesmith.Registry(home),
                            progress=False, max_steps=1, learning_rate=1e-9)  # fmt: skip
            model = "smollm2"
        rows = {"naive generate loop": naive(model, home, args.requests, args.max_tokens)}
        env = {**os.environ, "TUNESMITH_HOME": str(home)}
        settings = Path(work) / "serve.yaml"
        settings.write_text("max_concurrent_generations: 4\n")
        server = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "serve", model, "--port", str(args.port),
                                   "--no-access-log", "--config", str(settings)], env=env)  # fmt: skip
        try:
            import httpx

            url = f"http://127.0.0.1:{args.port}"
            for _ in range(300):
                try:
                    if httpx.get(f"{url}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            for concurrency in (1, 4):
                rows[f"server, {concurrency} stream(s)"] = asyncio.run(
                    streamed(url, model, args.requests, concurrency, args.max_tokens)
                )  # fmt: skip
        finally:
            server.terminate()
            server.wait(30)
    base = rows["naive generate loop"]["tokens_per_second"]
    save("generation_serving", {"requests": args.requests, "max_tokens": args.max_tokens, "rows": rows})
    print("\n| set-up | tokens/s | vs naive | time to first token (p50) |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['tokens_per_second']:.1f} | {r['tokens_per_second'] / base:.2f}x | "
              f"{r['ttft_p50_s'] * 1000:.0f} ms |")  # fmt: skip


if __name__ == "__main__":
    main()
