"""Soak: `tunesmith serve` at saturation for 10 minutes, with two hot swaps and a rollback inside the run.

    python bench/soak.py                         # support@production from `make demo` (./.tunesmith)
    python bench/soak.py --minutes 2 --clients 16

The registry home is copied to bench/.soak-home, and two more versions of the model are registered there
(copies of it, ONNX export included). A load generator (asyncio, keep-alive connections, its own process,
on the same cores as the server, as a proxy would be) keeps --clients requests in flight on
POST /v1/models/NAME/predict for the whole run. At 30% of the run `production` moves to the second
version, at 60% to the third, at 80% it is rolled back (as `tunesmith models promote/rollback` would,
from outside; the server's watcher picks each move up). Per minute: requests, p50/p99 latency, 5xx,
429, connection errors, the server's resident memory, the versions that answered. Pass criteria: zero
5xx, zero connection errors, RSS growth under 10% from the end of the first minute to the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, save
from serve import free_port, stop, wait_ready


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Window:
    """What one minute of load saw."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[int] = Counter()
        self.connection_errors = 0


async def client(port: int, path: bytes, bodies: list[bytes], stop: float, windows: list[Window], start: float,
                 seed: int) -> None:  # fmt: skip
    rng = random.Random(seed)
    connection = None
    while time.perf_counter() < stop:
        window = windows[min(len(windows) - 1, int((time.perf_counter() - start) // 60))]
        body = bodies[rng.randrange(len(bodies))]
        request = (b"POST " + path + b" HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
        started = time.perf_counter()
        try:
            if connection is None:
                connection = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = connection
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                          if line.startswith(b"content-length:"))  # fmt: skip
            payload = await asyncio.wait_for(reader.readexactly(length), 60)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, StopIteration):
            window.connection_errors += 1
            connection = None
            await asyncio.sleep(0.05)
            continue
        window.latencies.append(time.perf_counter() - started)
        status = int(head.split(b" ", 2)[1])
        window.statuses[status] += 1
        if status == 200:
            window.versions[json.loads(payload)["version"]] += 1
    if connection is not None:
        connection[1].close()


async def soak(args: argparse.Namespace, home: Path, pid: int, port: int, bodies: list[bytes]) -> dict[str, object]:
    from tunesmith.registry import Registry

    registry = Registry(home)
    seconds = args.minutes * 60
    windows = [Window() for _ in range(args.minutes)]
    rss: list[tuple[float, float]] = []
    events: list[dict[str, object]] = []
    start = time.perf_counter()
    stop = start + seconds
    path = f"/v1/models/{args.name}/predict".encode()

    async def operate() -> None:
        plan = [(0.3, "promote", 2), (0.6, "promote", 3), (0.8, "rollback", None)]
        for fraction, action, version in plan:
            await asyncio.sleep(max(0.0, start + fraction * seconds - time.perf_counter()))
            if action == "promote":
                moved = await asyncio.to_thread(registry.promote, f"{args.name}@{version}", "production")
            else:
                moved = await asyncio.to_thread(registry.rollback, args.name, "production")
            events.append({"at_s": round(time.perf_counter() - start, 1), "action": action, "to": moved.version})
            print(f"  {events[-1]['at_s']:>6} s: {action} -> production = version {moved.version}", flush=True)

    async def sample() -> None:
        while time.perf_counter() < stop:
            rss.append((time.perf_counter() - start, rss_mb(pid)))
            await asyncio.sleep(5)

    await asyncio.gather(
        operate(), sample(),
        *[client(port, path, bodies, stop, windows, start, seed) for seed in range(args.clients)],
    )  # fmt: skip
    rss.append((time.perf_counter() - start, rss_mb(pid)))
    rows = []
    for minute, w in enumerate(windows, 1):
        ms = np.array(w.latencies) * 1000 if w.latencies else np.array([float("nan")])
        in_minute = [m for t, m in rss if minute - 1 <= t / 60 < minute] or [rss[-1][1]]
        rows.append({
            "minute": minute, "requests": len(w.latencies), "rps": len(w.latencies) / 60,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "5xx": sum(n for s, n in w.statuses.items() if s >= 500), "429": w.statuses.get(429, 0),
            "other_4xx": sum(n for s, n in w.statuses.items() if 400 <= s < 500 and s != 429),
            "connection_errors": w.connection_errors, "rss_mb": in_minute[-1],
            "versions": dict(sorted(w.versions.items())),
        })  # fmt: skip
    return {"rows": rows, "events": events, "rss": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="support", help="registered model name")
    parser.add_argument("--home", default=str(ROOT / ".tunesmith"), help="registry home (make demo fills ./.tunesmith)")
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--clients", type=int, default=32, help="requests kept in flight")
    args = parser.parse_args()

    from tunesmith.api import export_artifact
    from tunesmith.artifact import read_export
    from tunesmith.registry import Registry

    home = ROOT / "bench" / ".soak-home"
    if home.exists():
        for sub in [home, *home.rglob("*")]:
            if not sub.is_symlink():
                sub.chmod(0o755 if sub.is_dir() else 0o644)
        shutil.rmtree(home)
    source = Registry(args.home).resolve(f"{args.name}@production")
    if read_export(source.path) is None:
        export_artifact(source.path)
    registry = Registry(home)
    for _ in range(3):  # versions 1-3: the same model, export included, so every swap loads a real ONNX model
        with registry.staging() as staged:
            shutil.copytree(source.path, staged, symlinks=True, dirs_exist_ok=True)
            for sub in [staged, *staged.rglob("*")]:
                if not sub.is_symlink():
                    sub.chmod(0o755 if sub.is_dir() else 0o644)
            registry.register(args.name, staged, source.task)
    registry.promote(f"{args.name}@1", "production")
    texts = [json.loads(line)["text"] for line in (source.path / "data" / "test.jsonl").read_text().splitlines()]
    bodies = [json.dumps({"text": t}).encode() for t in texts]

    port = free_port()
    command = [sys.executable, "-m", "tunesmith.cli", "--home", str(home), "serve", f"{args.name}@production",
               "--port", str(port), "--no-access-log", "--watch-interval", "2"]  # fmt: skip
    log_file = (home / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_ready(port, "/readyz")
        print(f"soak: {args.minutes} min, {args.clients} clients, {source.ref} served as {args.name}@production",
              flush=True)  # fmt: skip
        result = asyncio.run(soak(args, home, server.pid, port, bodies))
    finally:
        stop(server)
        log_file.close()
    rows = result["rows"]
    print("\n| minute | requests | req/s | p50 ms | p99 ms | 5xx | 429 | conn. errors | RSS MB | versions answering |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:  # type: ignore[union-attr]
        versions = ", ".join(f"v{v}: {n}" for v, n in r["versions"].items())
        print(f"| {r['minute']} | {r['requests']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['5xx']} | {r['429']} | {r['connection_errors']} | {r['rss_mb']:.0f} | {versions} |")  # fmt: skip
    baseline, last = rows[0]["rss_mb"], rows[-1]["rss_mb"]  # type: ignore[index]
    growth = (last - baseline) / baseline
    errors = sum(r["5xx"] + r["connection_errors"] for r in rows)  # type: ignore[union-attr]
    passed = errors == 0 and growth < 0.10
    print(f"\nRSS after minute 1: {baseline:.0f} MB, at the end: {last:.0f} MB ({growth:+.1%}); "
          f"5xx + connection errors: {errors}; {'PASS' if passed else 'FAIL'}")  # fmt: skip
    path = save("soak", {"model": source.ref, "minutes": args.minutes, "clients": args.clients,
                         "rss_growth": growth, "passed": passed, **result})  # fmt: skip
    print(f"wrote {path}")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
