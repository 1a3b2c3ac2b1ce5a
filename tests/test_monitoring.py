"""After release: the prediction log, feedback, live gauges, drift reports and alerting rules, against a real
server over HTTP and a real promtool."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from conftest import ROOT, make_rows, private_copy, write_csv
from tunesmith.monitoring.predictions import Prediction, PredictionLog, find_prediction, read_predictions, segments
from tunesmith.registry import Registry

PROMTOOL = shutil.which("promtool")
RULES = ROOT / "deploy" / "prometheus"


def _rows(home: Path, model: str, request_id: str, n: int) -> list[dict[str, Any]]:
    deadline = time.time() + 10
    while len(rows := find_prediction(home, model, request_id)) < n and time.time() < deadline:
        time.sleep(0.1)
    return rows


def _metric(text: str, name: str, **labels: str) -> float | None:
    """One sample's value from a /metrics scrape (None: not there)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{{re.escape(wanted)}\}})? (\S+)$" if wanted else
                         rf"^{re.escape(name)} (\S+)$", re.M)  # fmt: skip
    found = pattern.search(text)
    return float(found.group(1)) if found else None


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunesmith.cli", "--home", str(home), *args], capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_every_prediction_is_logged_with_personal_data_masked_and_exported(
    served_home: Path, start_server, tmp_path: Path
) -> None:  # fmt: skip
    home = private_copy(served_home, tmp_path / "home")
    server = start_server(home, "support")
    texts = ["I want a refund, write to jane.doe@example.com or call +44 20 7946 0958", "where is my parcel"]
    response = httpx.post(f"{server.url}/v1/models/support/predict", json={"texts": texts},
                          headers={"X-Request-ID": "req-1"})  # fmt: skip
    assert response.status_code == 200
    rows = _rows(home, "support", "req-1", 2)
    assert [r["request_id"] for r in rows] == ["req-1", "req-1"]
    first = rows[0]
    assert "[EMAIL]" in first["input"] and "[PHONE]" in first["input"] and "example.com" not in first["input"]
    assert first["input_hash"] == hashlib.sha256(texts[0].encode()).hexdigest()[:32]  # the same text: the same hash
    predicted = response.json()["predictions"]
    assert [r["label"] for r in rows] == [p["label"] for p in predicted]
    assert first["confidence"] == pytest.approx(predicted[0]["score"], abs=1e-4)
    assert first["version"] == 1 and first["variant"] == "latest" and first["latency_ms"] > 0
    assert len(first["output"]["scores"]) == 6 and first["input_chars"] == len(texts[0])
    # A request id sent again (a retry) names the latest request: feedback grades the answer the client saw last.
    httpx.post(f"{server.url}/v1/models/support/predict", json={"texts": ["cancel my plan"]},
               headers={"X-Request-ID": "req-1"})  # fmt: skip
    deadline = time.time() + 10
    while len(find_prediction(home, "support", "req-1")) != 1 and time.time() < deadline:
        time.sleep(0.1)
    assert [r["input"] for r in find_prediction(home, "support", "req-1")] == ["cancel my plan"]
    # Every route that answers is logged: the Hugging Face shape and the original /predict too.
    httpx.post(f"{server.url}/models/support", json={"inputs": "cancel my plan"}, headers={"X-Request-ID": "req-2"})
    httpx.post(f"{server.url}/predict", json={"text": "my lamp is broken"}, headers={"X-Request-ID": "req-3"})
    assert len(_rows(home, "support", "req-2", 1)) == 1 and len(_rows(home, "support", "req-3", 1)) == 1

    exported = _cli(home, "logs", "support", "--since", "1h", "--output", str(tmp_path / "log.csv"))
    assert exported.returncode == 0 and "Wrote 5 logged predictions" in exported.stderr, exported.stderr
    import pandas as pd

    frame = pd.read_csv(tmp_path / "log.csv")
    assert len(frame) == 5 and set(frame["request_id"]) == {"req-1", "req-2", "req-3"}
    bad = _cli(home, "logs", "support", "--since", "yesterday", "--output", str(tmp_path / "x.csv"))
    assert bad.returncode == 1 and "is not a duration" in bad.stderr


def test_a_full_log_queue_drops_rows_never_requests_and_the_alert_fires_on_the_scrape(
    served_home: Path, start_server, tmp_path: Path
) -> None:  # fmt: skip
    home = private_copy(served_home, tmp_path / "home")
    settings = tmp_path / "serve.yaml"
    settings.write_text(json.dumps({"models": ["support"], "log_queue": 1, "log_inputs": "hash",
                                    "max_texts_per_request": 64}))  # fmt: skip
    server = start_server(home, "--config", str(settings))
    before = httpx.get(f"{server.url}/metrics").text
    texts = [f"where is my parcel number {i}" for i in range(64)]

    def ask(i: int) -> int:
        return httpx.post(f"{server.url}/v1/models/support/predict", json={"texts": texts},
                          headers={"X-Request-ID": f"full-{i}"}, timeout=60).status_code  # fmt: skip

    with ThreadPoolExecutor(16) as pool:  # 2,048 rows at a queue of one request: none of the requests failed
        assert list(pool.map(ask, range(32))) == [200] * 32
    after = httpx.get(f"{server.url}/metrics").text
    dropped = _metric(after, "tunesmith_prediction_log_dropped_total")
    assert dropped is not None and dropped >= 64 and dropped % 64 == 0, dropped  # whole requests are dropped
    assert _metric(before, "tunesmith_prediction_log_dropped_total") == 0
    deadline = time.time() + 20
    while len(kept := list(read_predictions(home, "support"))) < 2048 - dropped and time.time() < deadline:
        time.sleep(0.2)  # the writer may still be at it
    assert 0 < len(kept) == 2048 - dropped
    assert all(r["input"] is None and len(r["input_hash"]) == 32 for r in kept)  # log_inputs: hash

    # `make test` installs promtool (Debian's prometheus package): without it the rules are unchecked, a failure.
    assert PROMTOOL is not None, "promtool is not on PATH: run `make test`, or apt-get install prometheus"
    # The recorded scrapes as a series, one a minute: the dropping alert must fire after its 5 minutes.
    values = " ".join([str(int(_metric(before, "tunesmith_prediction_log_dropped_total") or 0))] +
                      [str(int(dropped) * k) for k in range(1, 12)])  # fmt: skip
    scrape_test = {"rule_files": [str(RULES / "alerts.yml")], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": [{"series": "tunesmith_prediction_log_dropped_total", "values": values}],
        "alert_rule_test": [{"eval_time": "8m", "alertname": "TunesmithPredictionLogDropping", "exp_alerts": [{
            "exp_labels": {"severity": "warning"},
            "exp_annotations": {"summary": "The prediction log drops rows: its writer cannot keep up",
                                "runbook": _runbook("TunesmithPredictionLogDropping")}}]}]}]}  # fmt: skip
    path = tmp_path / "scrape_test.yml"
    path.write_text(json.dumps(scrape_test))
    result = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _runbook(alert: str) -> str:
    import yaml

    rules = yaml.safe_load((RULES / "alerts.yml").read_text())["groups"][0]["rules"]
    return next(r["annotations"]["runbook"] for r in rules if r["alert"] == alert)


def test_retention_deletes_segments_by_age_then_by_size(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, retention_days=7, max_bytes=1 << 30)
    log.start()
    now = time.time()
    for days in (10, 3, 0):  # three hourly segments: 10 days old, 3 days old, current
        for i in range(50):
            log.record(Prediction(f"r{days}-{i}", "m", 1, "latest", "text-classification", 1.0, f"text {i}",
                                  {"label": "a", "confidence": 0.9}, ts=now - days * 86400))  # fmt: skip
        assert log.flush()
    folder = tmp_path / "logs" / "m"
    assert len(segments(folder)) == 3
    oldest = segments(folder)[0]
    assert log.apply_retention() == [oldest]
    assert len(segments(folder)) == 2 and not any(r["request_id"].startswith("r10-") for r in read_predictions(tmp_path, "m"))
    log.max_bytes = 1  # now the size limit: the oldest go, the segment being written stays
    log.apply_retention()
    left = segments(folder)
    assert len(left) == 1 and all(r["request_id"].startswith("r0-") for r in read_predictions(tmp_path, "m"))
    log.close()
    full = PredictionLog(tmp_path, max_queue=2)  # never started: nothing drains the queue
    assert [full.record(Prediction("x", "m", 1, "", "t", 0, "t", {})) for _ in range(4)] == [True, True, False, False]
    assert full.dropped == 2


@pytest.fixture(scope="module")
def keyed_server(served_home: Path, start_server, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, str]]:
    home = private_copy(served_home, tmp_path_factory.mktemp("keyed") / "home")
    registry = Registry(home)
    keys = {scope: registry.create_key(f"{scope}-key", [scope]) for scope in ("read", "feedback", "admin")}
    return start_server(home, "support", "--auth", "on"), keys


def test_feedback_needs_its_scope_and_names_who_sent_it(keyed_server: tuple[Any, dict[str, str]]) -> None:
    server, keys = keyed_server

    def auth(scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {keys[scope]}"}

    answer = httpx.post(f"{server.url}/v1/models/support/predict", json={"text": "where is my parcel"},
                        headers={**auth("read"), "X-Request-ID": "fb-1"}).json()["predictions"][0]  # fmt: skip
    home = Path(server.process.args[server.process.args.index("--home") + 1])
    assert _rows(home, "support", "fb-1", 1)[0]["caller"] == "read-key"
    url = f"{server.url}/v1/models/support/feedback"
    body = {"request_id": "fb-1", "answer": answer["label"]}
    assert httpx.post(url, json=body).status_code == 401
    refused = httpx.post(url, json=body, headers=auth("read"))
    assert refused.status_code == 403 and "feedback" in refused.json()["error"]
    given = httpx.post(url, json=body, headers=auth("feedback"))
    assert given.status_code == 201 and given.json()["correct"] is True and given.json()["version"] == 1
    wrong = "refund_request" if answer["label"] != "refund_request" else "order_status"
    assert httpx.post(url, json={**body, "answer": wrong}, headers=auth("admin")).json()["correct"] is False
    missing = httpx.post(url, json={"request_id": "never-sent", "answer": "order_status"}, headers=auth("feedback"))
    assert missing.status_code == 404 and "Send the input instead" in missing.json()["error"]
    for bad in ({"answer": "order_status"}, {"request_id": "fb-1", "answer": ["a", "b"]}, {"request_id": "fb-1"}):
        refused = httpx.post(url, json=bad, headers=auth("feedback"))
        assert refused.status_code == 422 and refused.json()["error"], (bad, refused.text)
    by_input = httpx.post(url, json={"input": "my lamp came broken", "answer": "damaged_item"}, headers=auth("feedback"))
    assert by_input.status_code == 201 and by_input.json()["correct"] is None  # no logged prediction to grade

    shown = _cli(home, "feedback", "support", "--json")
    records = json.loads(shown.stdout)
    assert [r["caller"] for r in records] == ["feedback-key", "admin-key", "feedback-key"]
    assert [r["correct"] for r in records] == [True, False, None]
    exported = _cli(home, "feedback", "support", "--export", str(home.parent / "fb.jsonl"), "--all")
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in (home.parent / "fb.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and lines[-1] == {"text": "my lamp came broken", "label": "damaged_item"}


def test_a_fifth_of_the_feedback_inputs_is_held_out_of_training_files(tmp_path: Path) -> None:
    from tunesmith.monitoring.feedback import export_feedback, read_feedback, store_feedback
    from tunesmith.tasks.catalog import TASKS

    texts = [f"where is parcel {i}" for i in range(200)]
    for text in texts + texts[:50]:  # the same input twice: one side of the split, never both
        store_feedback(tmp_path, "m", request_id=None, caller="", input=text, answer="order_status", predicted=None,
                       version=1, correct=None)  # fmt: skip
    held = {r["input"] for r in read_feedback(tmp_path, "m") if r["held_out"]}
    assert 25 <= len(held) <= 55  # about one in five of 200 inputs
    task = TASKS["text-classification"]
    n = export_feedback(tmp_path, "m", task, tmp_path / "train.jsonl")
    exported = {json.loads(line)["text"] for line in (tmp_path / "train.jsonl").read_text().splitlines()}
    assert exported.isdisjoint(held) and exported | held == set(texts)
    assert n == 250 - sum(1 for t in texts + texts[:50] if t in held)
    assert export_feedback(tmp_path, "m", task, tmp_path / "all.jsonl", include_held_out=True) == 250


def test_live_gauges_on_metrics(keyed_server: tuple[Any, dict[str, str]]) -> None:
    server, keys = keyed_server
    headers = {"Authorization": f"Bearer {keys['feedback']}"}
    texts = [text for text, _ in make_rows(per_intent=5, seed=41)]
    for start in range(0, len(texts), 10):
        assert httpx.post(f"{server.url}/v1/models/support/predict", json={"texts": texts[start : start + 10]},
                          headers=headers).status_code == 200  # fmt: skip
    deadline = time.time() + 20
    while time.time() < deadline:  # the reference is computed in the background, the window fed by the log writer
        scrape = httpx.get(f"{server.url}/metrics").text
        reference = _metric(scrape, "tunesmith_reference_accuracy", model="support")
        if reference is not None and not math.isnan(reference) and \
                (_metric(scrape, "tunesmith_window_answers", model="support") or 0) >= len(texts):
            break
        time.sleep(0.2)
    gauges = {name: _metric(scrape, f"tunesmith_{name}", model="support") for name in (
        "window_answers", "mean_confidence", "low_confidence_share", "reference_accuracy", "label_drift_score",
        "reference_low_confidence_share")}  # fmt: skip
    assert gauges["window_answers"] is not None and gauges["window_answers"] >= len(texts), gauges
    for name in ("mean_confidence", "low_confidence_share", "reference_accuracy", "label_drift_score"):
        value = gauges[name]
        assert value is not None and 0 <= value <= 1, gauges  # NaN fails here too
    assert _metric(scrape, "tunesmith_prediction_log_queue") is not None


def test_alert_rules_pass_promtool() -> None:
    # `make test` installs promtool (Debian's prometheus package): without it the rules are unchecked, a failure.
    assert PROMTOOL is not None, "promtool is not on PATH: run `make test`, or apt-get install prometheus"
    checked = subprocess.run([PROMTOOL, "check", "rules", str(RULES / "alerts.yml")], capture_output=True, text=True)
    assert checked.returncode == 0 and "SUCCESS: 8 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], capture_output=True, text=True, cwd=RULES)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    import yaml

    for rule in yaml.safe_load((RULES / "alerts.yml").read_text())["groups"][0]["rules"]:
        assert rule.get("for") and rule["annotations"].get("runbook"), rule["alert"]


def _replay(home: Path, texts: list[str]) -> None:
    """Traffic as the server logs it: the model's real answers, through the log's writer."""
    import tunesmith
    from tunesmith.tasks.catalog import TASKS

    task = TASKS["text-classification"]
    model = tunesmith.load_model("support", registry=Registry(home))
    log = PredictionLog(home)
    log.start()
    for start in range(0, len(texts), 32):
        chunk = texts[start : start + 32]
        for text, out in zip(chunk, task.log_outputs(model, task.serve_compute(model, chunk, 32)), strict=True):
            log.record(Prediction(f"q{start}", "support", 1, "latest", task.name, 1.0, text, out))
    assert log.flush()
    log.close()


def test_drift_is_found_on_a_planted_shift_and_not_on_a_control_split(trained_home: Path, tmp_path: Path) -> None:
    from tunesmith.monitoring.report import monitor

    reference = write_csv(tmp_path / "reference.csv", make_rows(per_intent=50, seed=21))
    control = [text for text, _ in make_rows(per_intent=50, seed=22)]  # the same mix, other texts
    # A week later: one intent dominates, and texts come in another language half the time.
    shifted = [text for text, label in make_rows(per_intent=150, seed=23) if label == "refund_request"]
    shifted = [t if i % 2 else "Bonjour, je voudrais être remboursé pour ma commande, merci beaucoup"
               for i, t in enumerate(shifted)]  # fmt: skip
    reports = {}
    for name, texts in (("control", control), ("shifted", shifted)):
        home = private_copy(trained_home, tmp_path / name)
        _replay(home, texts)
        reports[name] = monitor(Registry(home), "support", since="1h", reference=str(reference))
    calm, moved = reports["control"].report, reports["shifted"].report
    assert calm["predictions"] == 300 and moved["predictions"] == 150
    assert not calm["inputs"]["domain_classifier"]["drift"] and not calm["predictions_drift"]["labels"]["drift"]
    assert calm["alerts"] == [], calm["alerts"]
    assert moved["inputs"]["domain_classifier"]["drift"] and moved["inputs"]["domain_classifier"]["roc_auc"] > 0.8
    assert moved["predictions_drift"]["labels"]["drift"] and moved["predictions_drift"]["labels"]["distance"] > 0.3
    assert any(line.startswith("Input drift") for line in moved["alerts"])
    assert any(line.startswith("Label mix changed") for line in moved["alerts"])
    page = reports["shifted"].html.read_text()
    assert "<img" in page and "Input drift" in page and json.loads(reports["shifted"].json.read_text())["alerts"]


def test_estimated_accuracy_follows_a_shift_without_labels() -> None:
    """CBPE on confidences that mean what they say: calibrated on a reference split, the estimate on traffic
    where the model is less sure tracks the accuracy realised there."""
    from tunesmith.monitoring.statistics import calibrate, calibration_error, estimated_accuracy

    rng = np.random.default_rng(0)

    def answers(n: int, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
        truth_prob = rng.uniform(low, high, n)  # the real chance each answer is right...
        shown = np.clip(truth_prob ** 0.5, 0, 1)  # ...which an overconfident model reports higher
        return shown, rng.random(n) < truth_prob

    confidence, correct = answers(5000, 0.3, 1.0)
    fitted = calibrate(confidence, correct)
    assert fitted.error_after < fitted.error_before and calibration_error(confidence, correct) > 0.1
    for low, high in ((0.3, 1.0), (0.3, 0.7)):  # the reference mix, then harder traffic (within its range)
        traffic, right = answers(3000, low, high)
        estimate = estimated_accuracy(fitted, traffic)
        assert estimate is not None and abs(estimate - right.mean()) < 0.03, (estimate, right.mean())
        assert traffic.mean() - right.mean() > 0.1  # the raw confidence would have been far off
