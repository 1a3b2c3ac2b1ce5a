"""Serving throughput and latency: the seeds' Flask pattern against `tunesmith serve`, same model, same load.

    python bench/serve.py                       # support@production from `make demo`
    python bench/serve.py --model trec --home bench/.home --seconds 20

(a) baseline: Flask (threaded dev server), per request one tokenizer call and one PyTorch forward.
(b) tunesmith serve: ONNX Runtime (the export's default variant), micro-batching, auth off on loopback.
Each server runs alone; a load generator (asyncio, keep-alive connections, one process) drives POST /predict
with the model's test texts for a fixed time at 1, 8 and 32 concurrent clients. Both share the machine's
cores with the load generator, as they would with a proxy. Speed is reported as a ratio to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, save

CONCURRENCY = (1, 8, 32)


def flask_app(artifact: str) -> None:
    """The seeds' reference deployment, as they wrote it: no batching, PyTorch, one forward per request."""
    import torch
    from flask import Flask, jsonify, request
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    meta = json.loads((Path(artifact) / "tunesmith.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(Path(artifact) / "model")
    model = AutoModelForSequenceClassification.from_pretrained(Path(artifact) / "model").eval()
    app = Flask(__name__)

    @app.post("/predict")
    def predict() -> object:
        text = request.get_json()["text"]
        inputs = tokenizer(text, return_tensors="pt", truncation=True, max_length=meta["max_length"])
        with torch.no_grad():
            probs = torch.softmax(model(**inputs).logits, dim=-1)[0]
        best = int(probs.argmax())
        return jsonify({"label": meta["label_names"][best], "score": float(probs[best])})

    @app.get("/healthz")
    def healthz() -> object:
        return jsonify({"status": "ok"})

    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app.run(host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), threaded=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, path: str, seconds: float = 120, process: subprocess.Popen | None = None) -> None:
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            # A server that died at start-up would otherwise cost the whole wait (10 min for infinity).
            raise SystemExit(f"server on port {port} exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"server on port {port} did not become ready")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _client(port: int, bodies: list[bytes], stop: float, latencies: list[float], errors: list[int],
                  path: str = "/predict") -> None:  # fmt: skip
    rng = random.Random(len(latencies))
    connection = None
    while time.perf_counter() < stop:
        body = bodies[rng.randrange(len(bodies))]
        request = (
            b"POST " + path.encode() + b" HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        started = time.perf_counter()
        try:
            if connection is None:  # the Flask baseline closes the connection after every response
                connection = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = connection
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            length, close = 0, False
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                close = close or line.startswith(b"connection: close")
            await asyncio.wait_for(reader.readexactly(length), 60)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            errors.append(1)
            connection = None
            continue
        latencies.append(time.perf_counter() - started)
        if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
            errors.append(1)
        if close:
            writer.close()
            connection = None
    if connection is not None:
        connection[1].close()


async def drive(port: int, bodies: list[bytes], clients: int, seconds: float, path: str = "/predict") -> dict[str, float]:
    latencies: list[float] = []
    errors: list[int] = []
    # A short warm-up, then the measured window.
    await asyncio.gather(*[_client(port, bodies, time.perf_counter() + 1, [], [], path) for _ in range(clients)])
    started = time.perf_counter()
    stop = started + seconds
    await asyncio.gather(*[_client(port, bodies, stop, latencies, errors, path) for _ in range(clients)])
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "rps": len(latencies) / elapsed,
        # None when every request failed (a server that starts but cannot answer).
        **{f"p{q}_ms": float(np.percentile(ms, q)) if len(ms) else None for q in (50, 95, 99)},
    }


def run_server(cmd: list[str], port: int, ready: str, bodies: list[bytes], seconds: float, path: str = "/predict",
               ready_seconds: float = 120, cwd: Path | None = None,
               settle: Callable[[int], None] | None = None) -> dict[str, object]:  # fmt: skip
    env = {**os.environ, "BENCH_PORT": str(port)}
    # The server's log goes to a file: a pipe nobody reads fills up and blocks a chatty server (infinity's).
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        process = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            try:
                wait_ready(port, ready, ready_seconds, process)
            except SystemExit:
                print(Path(log.name).read_text()[-3000:], file=sys.stderr)
                raise
            if settle is not None:
                settle(port)
            rows = [asyncio.run(drive(port, bodies, c, seconds, path)) for c in CONCURRENCY]
            rss = peak_rss_mb(process.pid)
        finally:
            stop(process)
    return {"rows": rows, "peak_rss_mb": rss}


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (open requests finish), then SIGKILL after 30 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def exported(home: str, ref: str) -> tuple[Any, dict[str, Any]]:
    """The registered version `ref` names, and its export record (exporting it first if it has none)."""
    from tunesmith.api import export_artifact
    from tunesmith.artifact import read_export
    from tunesmith.registry import Registry

    version = Registry(home).resolve(ref)
    if read_export(version.path) is None:
        print(f"exporting {version.ref} ...", flush=True)
        export_artifact(version.path)
    export = read_export(version.path)
    assert export is not None
    return version, export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="support@production", help="registered model to serve")
    parser.add_argument("--home", default=str(ROOT / ".tunesmith"), help="registry home (make demo fills ./.tunesmith)")
    parser.add_argument("--seconds", type=float, default=15, help="measured seconds per concurrency level")
    parser.add_argument("--only", choices=["baseline", "tunesmith"], help="run one server only")
    parser.add_argument("--serve-args", default="", help="extra flags for tunesmith serve, e.g. '--threads 1'")
    args = parser.parse_args()

    version, export = exported(args.home, args.model)
    texts = [json.loads(line)["text"] for line in (version.path / "data" / "test.jsonl").read_text().splitlines()]
    bodies = [json.dumps({"text": t}).encode() for t in texts]
    exe = sys.executable
    results: dict[str, object] = {}
    if args.only in (None, "baseline"):
        print("baseline: Flask + PyTorch, one forward per request ...", flush=True)
        cmd = [exe, __file__, "--flask", str(version.path)]
        results["baseline"] = run_server(cmd, free_port(), "/healthz", bodies, args.seconds)
    if args.only in (None, "tunesmith"):
        print(f"tunesmith serve ({export['default']}) ...", flush=True)
        port = free_port()
        cmd = [exe, "-m", "tunesmith.cli", "--home", args.home, "serve", args.model, "--port", str(port),
               "--no-access-log", "--auth", "off", *args.serve_args.split()]  # fmt: skip
        results["tunesmith"] = run_server(cmd, port, "/readyz", bodies, args.seconds)

    print(f"\nmodel {version.ref}, {len(texts)} distinct test texts, {args.seconds:g} s per level\n")
    print("| server | clients | req/s | vs baseline | p50 ms | p95 ms | p99 ms | errors | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    base_rows = {r["clients"]: r for r in results.get("baseline", {}).get("rows", [])}  # type: ignore[union-attr]
    for server, data in results.items():
        for row in data["rows"]:  # type: ignore[index]
            base = base_rows.get(row["clients"])
            ratio = f"{row['rps'] / base['rps']:.1f}x" if base else "-"
            row["vs_baseline"] = row["rps"] / base["rps"] if base else None
            print(f"| {server} | {row['clients']} | {row['rps']:.0f} | {ratio} | {row['p50_ms']:.1f} | "
                  f"{row['p95_ms']:.1f} | {row['p99_ms']:.1f} | {row['errors']} | {data['peak_rss_mb']:.0f} |")  # type: ignore[index]  # fmt: skip
    int8 = export["variants"].get("int8", {})
    print(f"\nint8 ({int8.get('scheme')}): agreement with PyTorch {int8.get('agreement', float('nan')):.2%} on "
          f"{export['checked_on']['n']} validation texts, {int8.get('test_agreement', float('nan')):.2%} on "
          f"{export['checked_on']['test_n']} test texts; served variant: {export['default']}")  # fmt: skip
    path = save(f"serve_{version.name}", {
        "model": version.ref, "seconds": args.seconds, "texts": len(texts), "results": results,
        "export": {k: export[k] for k in ("default", "checked_on", "variants")},
    })  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--flask":
        flask_app(sys.argv[2])
    else:
        main()
