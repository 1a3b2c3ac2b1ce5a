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


def call(url: str, body: dict | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
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
        for path, body in examples:
            print(f"\n$ curl -s {url}{path} -H 'Content-Type: application/json' -d '{json.dumps(body)}'")
            print(json.dumps(call(f"{url}{path}", body)))
        print(f"\nServed {args.model} at {url} (OpenAPI docs at /docs). Keep a server running with `make serve`.")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


if __name__ == "__main__":
    main()
