"""The server under faults and hostile clients: a broken registry or export never stops hot swaps or key
revocation; overload, slow or unauthenticated bodies and random paths cost it nothing it cannot afford."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from conftest import private_copy
from test_serving_ops import InThreadServer, add_version, bearer
from tunesmith.artifact import read_export
from tunesmith.registry import Registry

PREDICT = "/v1/models/support/predict"


@pytest.fixture
def home(served_home: Path, tmp_path: Path) -> Path:
    return private_copy(served_home, tmp_path / "home")


def wait_for(check, seconds: float = 20, what: str = "") -> object:
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_watcher_survives_a_broken_registry_and_export(home: Path, start_server) -> None:
    registry = Registry(home)
    server = start_server(home, "support", "--watch-interval", "0.2")
    ready = lambda: httpx.get(f"{server.url}/readyz").json()  # noqa: E731

    # 1. The database loses a table (not a TunesmithError: an SQLAlchemy one).
    db = sqlite3.connect(home / "registry.db")
    db.execute("ALTER TABLE versions RENAME TO versions_broken")
    db.commit()
    wait_for(lambda: ready()["watcher"]["status"] == "failing", what="the watcher to report the failure")
    health = ready()
    assert health["details"]["support"]["status"] == "failed" and "versions" in health["details"]["support"]["error"]
    assert httpx.post(f"{server.url}{PREDICT}", json={"text": "hi"}).json()["version"] == 1  # last good serves
    db.execute("ALTER TABLE versions_broken RENAME TO versions")
    db.commit()
    db.close()
    wait_for(lambda: ready()["watcher"]["status"] == "ok", what="the watcher to recover")

    # 2. The served export's record is not JSON any more.
    record_file = Path(read_export(registry.resolve("support").path)["folder"]) / "export.json"
    original = record_file.read_text()
    record_file.write_text("{not json")
    wait_for(lambda: ready()["details"]["support"]["status"] == "failed", what="the bad export to show")
    assert httpx.post(f"{server.url}{PREDICT}", json={"text": "hi"}).status_code == 200
    record_file.write_text(original)

    # 3. Repaired: hot swaps work again.
    new = add_version(registry, "support@1")
    wait_for(lambda: httpx.post(f"{server.url}{PREDICT}", json={"text": "hi"}).json()["version"] == new,
             what="the swap after repair")  # fmt: skip
    assert ready()["models"] == {"support": "ready"} and ready()["watcher"]["failures"] >= 2


def test_revocation_works_with_watch_interval_zero(home: Path, start_server) -> None:
    registry = Registry(home)
    key = registry.create_key("reader", ["read"])
    server = start_server(home, "support", "--auth", "on", "--watch-interval", "0")
    assert httpx.post(f"{server.url}{PREDICT}", json={"text": "hi"}, headers=bearer(key)).status_code == 200
    registry.revoke_key("reader")
    wait_for(lambda: httpx.post(f"{server.url}{PREDICT}", json={"text": "hi"}, headers=bearer(key)).status_code == 401,
             seconds=15, what="the revoked key to stop working")  # fmt: skip


def raw_request(port: int, head: str, body: bytes = b"", wait: float = 5.0) -> tuple[float, str]:
    """Send raw HTTP (headers, maybe part of a body) and return (seconds to the answer, the answer)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(head.encode() + b"\r\n\r\n" + body)
        data = b""
        try:
            while b"\r\n\r\n" not in data or not data.split(b"\r\n\r\n", 1)[1].strip().endswith(b"}"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            pass
    return time.perf_counter() - started, data.decode("latin-1")


def test_auth_is_checked_before_the_body_is_read(home: Path, start_server) -> None:
    Registry(home).create_key("reader", ["read"])
    server = start_server(home, "support", "--auth", "on")
    # Headers promising 900 kB that never come: answered at once, nothing buffered.
    seconds, answer = raw_request(server.port, f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                  "application/json\r\nContent-Length: 900000")  # fmt: skip
    assert answer.startswith("HTTP/1.1 401") and seconds < 1.0
    assert json.loads(answer.split("\r\n\r\n", 1)[1])["code"] == "unauthenticated"


def test_a_slow_body_gets_408_and_a_huge_declared_one_413(home: Path, start_server, tmp_path: Path) -> None:
    settings = tmp_path / "serve.yaml"
    settings.write_text("body_timeout_s: 0.5\n")
    server = start_server(home, "support", "--config", str(settings))
    seconds, answer = raw_request(server.port, f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                  "application/json\r\nContent-Length: 100", b'{"text": "hi')  # fmt: skip
    assert answer.startswith("HTTP/1.1 408") and 0.4 < seconds < 3
    _, answer = raw_request(server.port, f"POST /no/such/{'x' * 50} HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999")
    assert answer.startswith("HTTP/1.1 413")
    # Random paths and methods, answered 404/405/413: the metrics' label sets stay fixed.
    for i in range(20):
        method = ["GET", "POST", "BREW", "PUT"][i % 4]
        raw_request(server.port, f"{method} /random/{i}/{'y' * i} HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999")
    with httpx.Client(base_url=server.url) as c:
        for i in range(20):
            c.request(["GET", "POST", "DELETE", "PUT"][i % 4], f"/random/{i}/{'y' * i}")
        series = [line for line in c.get("/metrics").text.splitlines() if line.startswith("tunesmith_requests_total")]
    assert all("/random" not in line and "BREW" not in line for line in series)
    assert len(series) < 15, series


def test_concurrency_cap_and_rate_limit_answer_429(home: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    server = InThreadServer(home, max_concurrent_requests=2, rate_limit_per_s=0.2, rate_limit_burst=6)
    server.slow_down(0.5)
    with httpx.Client(base_url=server.url, timeout=30) as c, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: c.post("/predict", json={"text": "hi"}), range(4)))
        codes = sorted(a.status_code for a in answers)
        assert codes.count(200) >= 1 and 429 in codes, codes
        assert {a.json()["code"] for a in answers if a.status_code == 429} == {"overloaded"}
        assert c.get("/readyz").status_code == 200  # probes pass even when the server is full
        # Refused requests cost no tokens; admitted ones do: the burst of 6 runs out, then the rate applies.
        server.slow_down(0)
        later = [c.post("/predict", json={"text": "hi"}) for _ in range(6)]
        limited = [a for a in later if a.status_code == 429]
        assert limited and all(a.json()["code"] == "rate_limited" for a in limited)
        assert all(int(a.headers["retry-after"]) >= 1 for a in limited)
        assert later[0].status_code == 200
    server.server.should_exit = True
    server.thread.join(30)


def test_protect_ops_puts_metrics_and_docs_behind_a_key(home: Path, start_server) -> None:
    key = Registry(home).create_key("reader", ["read"])
    server = start_server(home, "support", "--auth", "on", "--protect-ops")
    for path in ("/metrics", "/docs", "/openapi.json"):
        assert httpx.get(f"{server.url}{path}").status_code == 401, path
        assert httpx.get(f"{server.url}{path}", headers=bearer(key)).status_code == 200, path
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_auth_off_on_a_public_bind_warns(home: Path, start_server) -> None:
    server = start_server(home, "support", "--auth", "off", "--host", "0.0.0.0")
    assert any("WARNING: auth is off" in line for line in server.log_lines())


def test_a_server_notices_a_deleted_version_and_numbers_are_not_reused(home: Path, start_server) -> None:
    registry = Registry(home)
    second = add_version(registry, "support@1")
    server = start_server(home, "support", "--watch-interval", "0.2")  # no alias: the latest version
    answer = lambda: httpx.post(f"{server.url}{PREDICT}", json={"text": "hi"}).json()["version"]  # noqa: E731
    assert answer() == second
    registry.delete(f"support@{second}")
    wait_for(lambda: answer() == 1, what="the server to leave the deleted version")
    third = add_version(registry, "support@1")
    assert third == second + 1  # never the deleted number again
    wait_for(lambda: answer() == third, what="the server to take the new version")


def test_hostile_alias_names_over_http_are_a_4xx(home: Path, start_server) -> None:
    registry = Registry(home)
    admin = bearer(registry.create_key("ops", ["admin"]))
    server = start_server(home, "support")
    for alias in ("con", "a" * 65, "a.", "latest"):
        answer = httpx.put(f"{server.url}/v1/models/support/aliases/{alias}", json={"version": 1}, headers=admin)
        assert 400 <= answer.status_code < 500, (alias, answer.status_code)
    assert [v.aliases for v in registry.versions("support")] == [[]]
