"""Traffic splits in a running server: a sticky canary share, a shadow that is never returned, and starting
and ending splits under load without a failed request."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import private_copy
from tunesmith.monitoring.predictions import read_predictions
from tunesmith.registry import Registry

PREDICT = "/v1/models/support/predict"


@pytest.fixture(scope="module")
def split_server(served_home: Path, start_server, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Registry]:
    home = private_copy(served_home, tmp_path_factory.mktemp("canary") / "home")
    registry = Registry(home)
    registry.promote("support@1", "production")
    second = registry.register_folder(registry.resolve("support@1").path)  # the same model as version 2
    registry.promote(second.ref, "candidate")
    return start_server(home, "support@production", "--watch-interval", "0.3"), registry


def _ask(url: str, user: str) -> tuple[int, str, int]:
    response = httpx.post(f"{url}{PREDICT}", json={"text": "where is my parcel"}, headers={"X-Tunesmith-User": user},
                          timeout=30)  # fmt: skip
    return response.status_code, response.headers.get("x-tunesmith-variant", ""), response.json().get("version", 0)


def _until(check: Any, seconds: float = 20) -> None:
    deadline = time.time() + seconds
    while not check():
        assert time.time() < deadline, "the server did not pick the split up in time"
        time.sleep(0.2)


def test_a_canary_share_is_sticky_per_user(split_server: tuple[Any, Registry]) -> None:
    server, registry = split_server
    registry.start_canary("support", "candidate", 0.3)
    _until(lambda: any(_ask(server.url, f"probe-{i}")[1] == "candidate" for i in range(40)))
    users = [f"user-{i}" for i in range(100)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: (users[i % 100], _ask(server.url, users[i % 100])), range(1000)))
    assert all(status == 200 for _, (status, _, _) in answers)
    seen: dict[str, set[str]] = {}
    for user, (_, variant, version) in answers:
        seen.setdefault(user, set()).add(variant)
        assert (variant, version) in {("production", 1), ("candidate", 2)}
    assert all(len(variants) == 1 for variants in seen.values())  # 10 requests each, always the same variant
    on_canary = sum("candidate" in variants for variants in seen.values())
    assert 15 <= on_canary <= 45, on_canary  # a 30 % share of users
    _until(lambda: sum(r["variant"] == "candidate" for r in read_predictions(registry.home, "support"))
           >= on_canary * 10)  # fmt: skip
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'tunesmith_variant_requests_total{model="support",variant="candidate"}' in metrics
    registry.stop_canary("support")
    _until(lambda: all(_ask(server.url, f"user-{i}")[1] == "production" for i in range(100)))


def test_a_shadow_sees_every_request_and_is_never_returned(split_server: tuple[Any, Registry]) -> None:
    server, registry = split_server
    registry.start_canary("support", "candidate", 1.0, mode="shadow")

    def shadowed() -> bool:
        _ask(server.url, "shadow-probe")  # the shadow is compared only on traffic
        return "tunesmith_shadow_agreement_total{" in httpx.get(f"{server.url}/metrics").text

    _until(shadowed)
    answers = [_ask(server.url, f"s-{i}") for i in range(60)]
    assert all(a == (200, "production", 1) for a in answers)  # the shadow's answers never come back
    _until(lambda: sum(r["variant"] == "shadow:candidate" for r in read_predictions(registry.home, "support")) >= 60)
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'tunesmith_shadow_agreement_total{model="support",outcome="agree"}' in metrics  # the same model: agrees
    registry.stop_canary("support")


def test_starting_and_ending_splits_under_load_fails_no_request(split_server: tuple[Any, Registry]) -> None:
    server, registry = split_server
    stop = threading.Event()
    statuses: Counter[int] = Counter()

    def load(worker: int) -> None:
        i = 0
        while not stop.is_set():
            statuses[_ask(server.url, f"load-{worker}-{i % 50}")[0]] += 1
            i += 1

    def under_load(seconds: float = 1.5, requests: int = 30) -> None:
        # Each phase lasts until enough requests have crossed it, not a fixed time: a busy 2-core machine
        # answered only 99 in the six phases of 1.5 s.
        start, deadline = sum(statuses.values()), time.monotonic() + 60
        time.sleep(seconds)
        while sum(statuses.values()) - start < requests and time.monotonic() < deadline:
            time.sleep(0.1)

    with ThreadPoolExecutor(8) as pool:
        for worker in range(8):
            pool.submit(load, worker)
        for share in (0.5, 0.2, 1.0):
            registry.start_canary("support", "candidate", share)
            under_load()
        registry.stop_canary("support")
        under_load()
        stop.set()
    assert statuses[200] >= 120 and set(statuses) == {200}, statuses


@pytest.fixture(scope="module")
def planted_bad(split_server: tuple[Any, Registry], tiny_model: str, support_rows: list[tuple[str, str]],
                tmp_path_factory: pytest.TempPathFactory) -> str:  # fmt: skip
    """A bad candidate under the alias `bad`: the tiny model trained on shuffled labels."""
    import random

    import tunesmith
    from conftest import write_csv

    _, registry = split_server
    labels = [label for _, label in support_rows]
    random.Random(1).shuffle(labels)
    rows = [(text, label) for (text, _), label in zip(support_rows, labels, strict=True)]
    data = write_csv(tmp_path_factory.mktemp("shuffled") / "shuffled.csv", rows)
    bad = tunesmith.train(data, registry=registry, name="support", progress=False, base_model=tiny_model, epochs=10,
                          learning_rate=5e-3, batch_size=16, freeze_embeddings=False).version  # fmt: skip
    registry.promote(bad.ref, "bad")
    return bad.ref


def test_a_shadow_that_disagrees_is_rolled_back_automatically(
    split_server: tuple[Any, Registry], planted_bad: str, support_rows: list[tuple[str, str]]
) -> None:  # fmt: skip
    import json
    import subprocess
    import sys

    server, registry = split_server
    registry.start_canary("support", "bad", 1.0, mode="shadow")
    texts = [text for text, _ in support_rows]

    def rolled_back() -> bool:
        for text in texts[:20]:
            status, variant, version = _ask_text(server.url, text)
            assert (status, variant, version) == (200, "production", 1)  # users never see the bad model
        return "support" not in registry.canary_table()

    _until(rolled_back, seconds=60)
    events = registry.canary_events("support")
    assert events[0]["event"] == "rolled_back" and "disagrees with production" in events[0]["detail"], events
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'tunesmith_canary_rollbacks_total{criterion="disagreement",model="support"} 1.0' in metrics
    home = Path(server.process.args[server.process.args.index("--home") + 1])
    shown = subprocess.run([sys.executable, "-m", "tunesmith.cli", "--home", str(home), "canary", "status", "support",
                            "--json"], capture_output=True, text=True)  # fmt: skip
    assert json.loads(shown.stdout)["split"] is None and "rolled back" in json.loads(shown.stdout)["events"][0]["detail"]


def test_a_canary_users_correct_more_often_is_rolled_back_under_load(
    split_server: tuple[Any, Registry], planted_bad: str, support_rows: list[tuple[str, str]]
) -> None:  # fmt: skip
    """Fast and error-free, but wrong: only users' feedback shows it. Half the users get the planted bad model,
    8 clients at once correct every answer, and the split ends on the feedback with no request failed."""
    server, registry = split_server
    registry.start_canary("support", "bad", 0.5)
    statuses: Counter[int] = Counter()
    served: Counter[str] = Counter()

    def use(i: int) -> None:
        text, label = support_rows[i % len(support_rows)]
        response = httpx.post(f"{server.url}{PREDICT}", json={"text": text}, headers={"X-Tunesmith-User": f"u{i % 40}"},
                              timeout=30)  # fmt: skip
        statuses[response.status_code] += 1
        if response.status_code != 200:
            return
        served[response.headers["x-tunesmith-variant"]] += 1
        feedback = httpx.post(f"{server.url}/v1/models/support/feedback", timeout=30,
                              json={"request_id": response.headers["x-request-id"], "answer": label})  # fmt: skip
        statuses[feedback.status_code] += 1

    def rolled_back() -> bool:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(use, range(40)))
        return "support" not in registry.canary_table()

    _until(rolled_back, seconds=90)
    assert set(statuses) == {200, 201}, statuses
    assert served["bad"] > 0 and served["production"] > 0, served
    events = registry.canary_events("support")
    assert events[0]["event"] == "rolled_back" and "feedback found" in events[0]["detail"], events
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'tunesmith_canary_rollbacks_total{criterion="feedback_accuracy",model="support"} 1.0' in metrics
    assert all(_ask(server.url, f"after-{i}")[1] == "production" for i in range(20))


def test_a_canary_whose_model_fails_is_rolled_back_and_no_user_sees_a_failure(
    split_server: tuple[Any, Registry], tmp_path: Path
) -> None:  # fmt: skip
    """A planted failing canary: version 1's weights with a maximum length past its 64 positions, as a bad
    configuration would ship. Every long text it is given fails inside the model; under 8 clients each of
    those requests is answered by production instead, and the split ends on the error rate."""
    import json
    import shutil

    server, registry = split_server
    folder = shutil.copytree(registry.resolve("support@1").path, tmp_path / "failing")
    meta_file = folder / "tunesmith.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    meta["max_length"] = 512
    meta_file.write_text(json.dumps(meta), encoding="utf-8")
    registry.promote(registry.register_folder(folder).ref, "failing")
    registry.start_canary("support", "failing", 0.5)
    long_text = " ".join(["where is my parcel it was due on monday"] * 20)  # ~180 tokens
    statuses: Counter[int] = Counter()
    served: Counter[tuple[str, int]] = Counter()

    def use(i: int) -> None:
        response = httpx.post(f"{server.url}{PREDICT}", json={"text": f"{long_text} {i}"}, timeout=30,
                              headers={"X-Tunesmith-User": f"f{i % 40}"})  # fmt: skip
        statuses[response.status_code] += 1
        if response.status_code == 200:
            served[response.headers["x-tunesmith-variant"], response.json()["version"]] += 1

    def rolled_back() -> bool:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(use, range(40)))
        return "support" not in registry.canary_table()

    _until(rolled_back, seconds=90)
    assert set(statuses) == {200}, statuses  # no user saw the canary fail
    assert {version for _, version in served} == {1}, served  # every answer came from production's model
    events = registry.canary_events("support")
    assert events[0]["event"] == "rolled_back" and "requests failed" in events[0]["detail"], events
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'tunesmith_canary_rollbacks_total{criterion="error_rate",model="support"} 1.0' in metrics
    assert 'tunesmith_variant_errors_total{model="support",variant="failing"}' in metrics


def test_feedback_accuracy_is_compared_only_beyond_noise() -> None:
    from tunesmith.serving.server import feedback_worse

    assert feedback_worse([5, 30], [28, 30], minimum=20) is not None  # 5 of 30 right against 28 of 30
    assert feedback_worse([25, 30], [27, 30], minimum=20) is None  # within noise
    assert feedback_worse([0, 19], [30, 30], minimum=20) is None  # too little feedback on the canary yet
    assert feedback_worse([30, 30], [5, 30], minimum=20) is None  # better: never rolled back for it


def _ask_text(url: str, text: str) -> tuple[int, str, int]:
    response = httpx.post(f"{url}{PREDICT}", json={"text": text}, timeout=30)
    return response.status_code, response.headers.get("x-tunesmith-variant", ""), response.json().get("version", 0)


def test_each_rollback_limit_is_judged_only_past_its_minimum() -> None:
    from tunesmith.serving.server import Variant, rollback_reason
    from tunesmith.serving.settings import ServeSettings

    limits = ServeSettings()  # 50 requests at least; 5 % errors, 2x latency, 20 % disagreement, 20 feedback answers

    def variant(**counts: Any) -> Variant:
        return Variant({"alias": "candidate", "share": 0.1, "mode": "canary"}, None, None, **counts)  # type: ignore[arg-type]

    assert rollback_reason(variant(answered=40, failed=9), limits) is None  # 49 tried: too few to judge
    assert rollback_reason(variant(answered=47, failed=3), limits)[0] == "error_rate"  # 6 %
    assert rollback_reason(variant(answered=48, failed=2), limits) is None  # 4 %
    slow = {"answered": 60, "seconds": 60 * 0.021, "primary_answered": 500, "primary_seconds": 500 * 0.010}
    assert rollback_reason(variant(**slow), limits)[0] == "latency"  # 2.1x production's mean
    assert rollback_reason(variant(**{**slow, "seconds": 60 * 0.019}), limits) is None
    assert rollback_reason(variant(answered=60, agree=39, disagree=11), limits)[0] == "disagreement"  # 22 %
    assert rollback_reason(variant(answered=60, feedback=[5, 30], primary_feedback=[28, 30]), limits)[0] == \
        "feedback_accuracy"  # fmt: skip
