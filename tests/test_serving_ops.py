"""The server in operation: API keys and scopes, hot swaps under load, timeouts and graceful shutdown."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import free_port, private_copy
from tunesmith.registry import Registry
from tunesmith.serving import ServeSettings, auth_enabled, create_app

PREDICT = "/v1/models/support/predict"


@pytest.fixture
def home(served_home: Path, tmp_path: Path) -> Path:
    return private_copy(served_home, tmp_path / "home")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", False),
        ("::1", False),
        ("localhost", False),
        ("0.0.0.0", True),
        ("10.1.2.3", True),
        ("api.example", True),
    ],
)
def test_auth_turns_on_off_loopback(host: str, expected: bool) -> None:
    assert auth_enabled(ServeSettings(models=["x"], host=host)) is expected
    assert auth_enabled(ServeSettings(models=["x"], host=host, auth="off")) is False


def test_public_bind_without_keys_refuses_to_start(home: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "--home", str(home), "serve", "support", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "no API keys exist" in result.stderr and "tunesmith keys create" in result.stderr
    assert "Traceback" not in result.stderr


def test_api_keys_and_scopes(home: Path, start_server) -> None:
    registry = Registry(home)
    reader, admin = registry.create_key("reader", ["read"]), registry.create_key("ops", ["admin"])
    assert reader.encode() not in (home / "registry.db").read_bytes()  # only hashes are stored
    server = start_server(home, "support", "--auth", "on", "--watch-interval", "0.3")
    with httpx.Client(base_url=server.url, timeout=30) as c:
        missing = c.post(PREDICT, json={"text": "hi"})
        assert missing.status_code == 401 and missing.json()["code"] == "unauthenticated"
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = c.post(PREDICT, json={"text": "hi"}, headers=bearer("tsk_not-a-key"))
        assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_key"
        assert c.post(PREDICT, json={"text": "hi"}, headers={"Authorization": f"Basic {reader}"}).status_code == 401
        assert c.post(PREDICT, json={"text": "hi"}, headers=bearer(reader)).status_code == 200
        assert c.post("/predict", json={"text": "hi"}, headers=bearer(reader)).status_code == 200
        assert c.get("/v1/models", headers=bearer(reader)).status_code == 200
        under = c.post("/v1/models/support/reload", headers=bearer(reader))
        assert under.status_code == 403 and "admin" in under.json()["error"]
        assert (
            c.put("/v1/models/support/aliases/staging", json={"version": 1}, headers=bearer(reader)).status_code == 403
        )
        assert c.post("/v1/models/support/reload", headers=bearer(admin)).status_code == 200
        assert c.post(PREDICT, json={"text": "hi"}, headers=bearer(admin)).status_code == 200  # admin includes read
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert c.get(open_path).status_code == 200

        late = registry.create_key("late", ["read"])  # keys made after start work within about a second
        wait_for(lambda: c.post(PREDICT, json={"text": "hi"}, headers=bearer(late)).status_code == 200)
        registry.revoke_key("reader")
        wait_for(lambda: c.post(PREDICT, json={"text": "hi"}, headers=bearer(reader)).status_code == 401)
    # SIGTERM: uvicorn shuts down cleanly, then re-raises the signal so the exit status still says SIGTERM.
    assert server.stop() in (0, -15)
    assert any('"Application shutdown complete."' in line for line in server.log_lines())


def wait_for(condition: object, seconds: float = 5) -> None:
    deadline = time.time() + seconds
    while not condition():  # type: ignore[operator]
        assert time.time() < deadline, "the server did not pick up the key change"
        time.sleep(0.1)


def add_version(registry: Registry, source: str) -> int:
    """Register a copy of an existing version (export included) as the next version."""
    with registry.staging() as staged:
        shutil.copytree(registry.resolve(source).path, staged, dirs_exist_ok=True)
        return registry.register("support", staged, "text-classification").version


def test_hot_swap_under_load_fails_no_request(home: Path, start_server) -> None:
    registry = Registry(home)
    registry.promote("support@1", "production")
    server = start_server(home, "support@production", "--watch-interval", "0.2")
    new = add_version(registry, "support@1")
    results: list[tuple[int, int | None]] = []
    stop = threading.Event()

    def hammer(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while not stop.is_set():
                r = c.post(PREDICT, json={"texts": [f"where is my parcel {i}", "refund please"]})
                results.append((r.status_code, r.json().get("version")))

    with ThreadPoolExecutor(6) as pool:
        for i in range(6):
            pool.submit(hammer, i)
        time.sleep(1.0)
        registry.promote(f"support@{new}", "production")  # as `tunesmith models promote` would, from outside
        deadline = time.time() + 15
        while not any(v == new for _, v in results[-5:]) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        stop.set()
    statuses = {s for s, _ in results}
    versions = [v for _, v in results]
    assert statuses == {200}, f"failed requests during the swap: {statuses}"
    assert 1 in versions and new in versions
    assert versions[-1] == new
    assert 'tunesmith_model_swaps_total{model="support"} 1.0' in httpx.get(f"{server.url}/metrics").text

    # Rolling back and moving aliases through the admin API swap at once. Auth is off on loopback, but admin
    # routes still need an admin key: any web page the user opens could post to localhost.
    refused = httpx.post(f"{server.url}/v1/models/support/aliases/production/rollback")
    assert refused.status_code == 401 and "admin key" in refused.json()["error"]
    assert httpx.post(f"{server.url}{PREDICT}", json={"text": "hi"}).json()["version"] == new
    admin = bearer(registry.create_key("ops", ["admin"]))
    time.sleep(1.1)  # a key created after start works within a second
    back = httpx.post(f"{server.url}/v1/models/support/aliases/production/rollback", headers=admin).json()
    assert back["version"] == 1
    assert httpx.post(f"{server.url}{PREDICT}", json={"text": "hi"}).json()["version"] == 1
    ungated = httpx.put(f"{server.url}/v1/models/support/aliases/production", json={"version": new}, headers=admin)
    assert ungated.status_code == 409 and "regression gate" in ungated.json()["error"]
    moved = httpx.put(f"{server.url}/v1/models/support/aliases/production", json={"version": new, "force": True},
                      headers=admin)  # fmt: skip
    assert moved.status_code == 200 and moved.json()["version"] == new
    assert httpx.put(f"{server.url}/v1/models/support/aliases/production", json={"version": 99},
                     headers=admin).status_code == 404  # fmt: skip
    assert httpx.put(f"{server.url}/v1/models/support/aliases/latest", json={"version": 1},
                     headers=admin).status_code == 409  # fmt: skip


class InThreadServer:
    """uvicorn in a thread of this process, so a test can slow the loaded model down."""

    def __init__(self, home: Path, **settings: object) -> None:
        import uvicorn

        self.port = free_port()
        self.settings = ServeSettings(models=["support"], port=self.port, auth="off", watch_interval_s=0, **settings)
        self.app = create_app(self.settings, Registry(home))
        config = uvicorn.Config(
            self.app, port=self.port, log_config=None, access_log=False, timeout_graceful_shutdown=10
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def slow_down(self, seconds: float) -> None:
        predictor = self.app.state.server.slots["support"].current.predictor
        original = predictor.predict_logits

        def slow(texts: list[str], batch_size: int = 64) -> object:
            time.sleep(seconds)
            return original(texts, batch_size)

        predictor.predict_logits = slow


def test_full_queue_answers_429_at_once(home: Path) -> None:
    from tunesmith.serving import BatchSettings

    server = InThreadServer(home, batching=BatchSettings(max_batch_size=1, max_queue=2))
    client = httpx.Client(base_url=server.url, timeout=30, limits=httpx.Limits(max_keepalive_connections=8))
    for _ in range(2):
        client.get("/healthz")  # connections made before timing: a client's set-up is not the server's answer
    server.slow_down(0.5)

    def timed(_: int) -> tuple[httpx.Response, float]:
        started = time.perf_counter()
        answer = client.post("/predict", json={"text": "hi"})
        return answer, time.perf_counter() - started

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(timed, range(6)))
    client.close()
    refused = [(a, s) for a, s in answers if a.status_code == 429]
    assert refused and all(a.json()["code"] == "overloaded" and a.headers["retry-after"] == "1" for a, _ in refused)
    assert min(s for _, s in refused) < 0.1  # refused at once, not after waiting for the model
    assert any(a.status_code == 200 for a, _ in answers)
    server.server.should_exit = True
    server.thread.join(30)


def test_request_timeout_and_graceful_shutdown(home: Path) -> None:
    server = InThreadServer(home, request_timeout_s=0.3)
    server.slow_down(0.6)
    late = httpx.post(f"{server.url}/predict", json={"text": "hi"}, timeout=30)
    assert late.status_code == 504 and late.json()["code"] == "timeout"

    server.settings.request_timeout_s = 30
    server.slow_down(0.5)
    answers: list[int] = []
    request = threading.Thread(
        target=lambda: answers.append(httpx.post(f"{server.url}/predict", json={"text": "hi"}, timeout=30).status_code)
    )
    time.sleep(1.0)  # let the timed-out batch finish first
    request.start()
    time.sleep(0.2)
    server.server.should_exit = True  # what SIGTERM does: stop accepting, finish what is open
    request.join(30)
    server.thread.join(30)
    assert answers == [200]
    assert not server.thread.is_alive()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["support", "--backend", "onnx-int4"], "'onnx-int4' is not one of 'auto', 'onnx', 'onnx-fp32'"),
        (["nope"], "No model named 'nope'"),
        ([], "Nothing to serve"),
        (["support", "support@1"], "named twice"),
        (["support", "--default-model", "other"], "not among the served models"),
        (["support", "--config", "missing.yaml"], "does not exist"),
        (["support", "--max-batch-size", "0"], "max_batch_size"),
    ],
)
def test_serve_cli_errors_are_one_line(
    served_home: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    from test_cli import run

    code, _, err = run(capsys, "--home", str(served_home), "serve", *args)
    assert code == (2 if "is not one of" in message else 1)  # a value outside the flag's choices is a usage error
    assert message in err and "Traceback" not in err


def test_settings_file_with_per_model_batching(tmp_path: Path) -> None:
    from tunesmith.serving import load_settings

    file = tmp_path / "serve.yaml"
    file.write_text("models: [support@production]\nport: 9000\nbatching: {max_batch_size: 16}\n"
                    "per_model:\n  support: {max_batch_size: 4, max_wait_ms: 5}\n")  # fmt: skip
    settings = load_settings(file, {"port": 9100, "max_wait_ms": 1.0, "host": None})
    assert settings.port == 9100 and settings.host == "127.0.0.1"  # flags win; unset flags leave the file
    assert settings.batching.max_batch_size == 16 and settings.batching.max_wait_ms == 1.0
    assert settings.per_model["support"].max_batch_size == 4


def test_the_live_reference_is_computed_between_requests(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loaded model answers its validation rows in the background (the gauges' reference); that must not hold
    the requests. It went in chunks of 32 items: an embedding model's (a query and 10 paragraphs each) held
    every request 12 s. Here each item costs 150 ms: a request may wait for one item, not for a chunk."""
    from tunesmith.serving.batching import Loaded

    original = Loaded.compute

    def slow(self: Loaded, items: list, batch_size: int) -> object:
        time.sleep(0.15 * len(items))
        return original(self, items, batch_size)

    monkeypatch.setattr(Loaded, "compute", slow)
    server = InThreadServer(home)
    window = server.app.state.server.live.windows["support"]
    latencies: list[float] = []
    deadline = time.time() + 120
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.get("/healthz")
        while window.profile is None and time.time() < deadline:
            started = time.perf_counter()
            assert client.post("/predict", json={"text": "hi"}).status_code == 200
            latencies.append(time.perf_counter() - started)
    server.server.should_exit = True
    server.thread.join(30)
    assert window.profile is not None, "the reference never completed"
    assert max(latencies) < 0.8, latencies
    assert len(latencies) >= 5, latencies  # the requests did arrive while the reference was being computed
