"""Start `tunesmith serve` on the demo model, send it the three request shapes it speaks, and stop it.

Run by `make demo`; `make serve` keeps a server running instead.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


def call(url: str, body: dict | None = None, request_id: str | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", **({"X-Request-ID": request_id} if request_id else {})}
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", default=".tunesmith")
    parser.add_argument("--model", default="support@production")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "tunesmith.cli", "--home", args.home, "serve", args.model, "--port", str(port),
               "--no-access-log"]  # fmt: skip
    server = subprocess.Popen(command)
    try:
        for _ in range(300):
            try:
                if call(f"{url}/readyz"):
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        name = args.model.partition("@")[0]
        examples = [
            (f"/v1/models/{name}/predict", {"texts": ["Where is my parcel?", "Please refund the double charge"]}),
            ("/predict", {"text": "I cannot sign in since I changed my password"}),
            (f"/models/{name}", {"inputs": "The lamp arrived with a cracked base", "parameters": {"top_k": 2}}),
        ]
        for i, (path, body) in enumerate(examples):
            header = f" -H 'X-Request-ID: demo-{i}'" if i == 0 else ""
            print(f"\n$ curl -s {url}{path}{header} -H 'Content-Type: application/json' -d '{json.dumps(body)}'")
            print(json.dumps(call(f"{url}{path}", body, f"demo-{i}" if i == 0 else None)))
        # Every answer above is in the prediction log; say what the right one was (auth is off on loopback).
        feedback = {"request_id": "demo-0", "index": 1, "answer": "refund_request"}
        print(f"\n$ curl -s {url}/v1/models/{name}/feedback -H 'Content-Type: application/json' -d '{json.dumps(feedback)}'")
        print(json.dumps(call(f"{url}/v1/models/{name}/feedback", feedback)))
        print(f"\nServed {args.model} at {url} (OpenAPI docs at /docs). Keep a server running with `make serve`.")
        print(f"The answers and the feedback are logged: `tunesmith --home {args.home} logs {name}`, "
              f"`tunesmith --home {args.home} monitor {name}`, `tunesmith --home {args.home} feedback {name}`.")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


if __name__ == "__main__":
    main()
