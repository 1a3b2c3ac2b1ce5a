"""`tunesmith suggest`: uncertain and diverse picks, CSV + Label Studio files, and labels coming back in."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import tunesmith
from conftest import make_rows, private_copy, write_csv
from test_cli import run
from tunesmith.data import load_labeled_file
from tunesmith.tasks.text_classification.active_learning import select, uncertainty


def test_uncertainty_is_one_minus_the_margin() -> None:
    probs = np.array([[0.5, 0.5, 0.0], [0.9, 0.05, 0.05], [0.4, 0.35, 0.25]])
    assert np.allclose(uncertainty(probs, multi_label=False), [1.0, 0.15, 0.95])
    multi = np.array([[0.9, 0.1], [0.55, 0.02]])
    assert np.allclose(uncertainty(multi, multi_label=True), [0.2, 0.9])


def test_diversity_spreads_the_picks_over_distinct_texts() -> None:
    # Six near-copies of one uncertain question and 24 distinct, slightly less uncertain texts: uncertainty
    # alone takes only copies; with diversity at most two copies are taken.
    topics = ["refund", "lamp", "plan", "login", "address", "app", "colour", "invoice", "delivery", "card", "password",
              "discount", "warranty", "size", "gift", "tracking", "receipt", "battery", "screen", "charger", "manual",
              "voucher", "store", "account"]  # fmt: skip
    texts = [f"where is my parcel number {i}" for i in range(6)] + [f"a question about my {t} please" for t in topics]
    scores = np.array([0.99] * 6 + [0.9] * 24)
    assert all(i < 6 for i in select(texts, scores, 5, "uncertainty"))
    diverse = select(texts, scores, 5, "uncertainty-diversity")
    assert len(set(diverse)) == 5 and sum(i < 6 for i in diverse) <= 2


@pytest.fixture
def home(trained_home: Path, tmp_path: Path) -> Path:
    return private_copy(trained_home, tmp_path / "home")


def test_suggest_writes_csv_and_label_studio_files_and_labels_come_back(
    home: Path, tmp_path: Path, support_rows: list
) -> None:
    pool_rows = [(t,) for t, _ in make_rows(per_intent=15, seed=11)]
    pool_rows += [pool_rows[0], (support_rows[0][0],), ("",)]  # a repeat, a training text, an empty row
    pool = write_csv(tmp_path / "pool.csv", pool_rows, header=("text",))
    train = write_csv(tmp_path / "train.csv", support_rows)
    model = tunesmith.load_model("support", registry=tunesmith.Registry(home))
    result = tunesmith.suggest(model, pool, 12, output=tmp_path / "next.csv", exclude=train)
    assert len(result.suggestions) == 12
    assert result.pool_size == len({t for (t,) in pool_rows[:-3]} - {t for t, _ in support_rows})
    picked = [s.text for s in result.suggestions]
    assert len(set(picked)) == 12 and support_rows[0][0] not in picked
    probs = model.predict_proba([t for (t,) in pool_rows[:-3]])
    assert min(s.uncertainty for s in result.suggestions) >= np.median(uncertainty(probs, False))

    with result.csv.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["text"] for r in rows] == picked and all(r["label"] == "" for r in rows)
    tasks = json.loads(result.label_studio.read_text())
    assert [t["data"]["text"] for t in tasks] == picked
    assert tasks[0]["predictions"][0]["result"][0]["value"]["choices"] == [result.suggestions[0].predicted]
    assert '<Choice value="refund_request"/>' in result.label_config.read_text()

    # What Label Studio exports once the tasks are labelled: one cancelled annotation, one task unlabelled.
    export = []
    for i, task in enumerate(tasks):
        annotations = [{"was_cancelled": False, "result": [
            {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["order_status"]}}]}]
        if i == 0:
            annotations.append({"was_cancelled": True, "result": []})
        export.append({"id": i + 1, "data": task["data"], "annotations": annotations if i != 1 else []})
    exported = tmp_path / "export.json"
    exported.write_text(json.dumps(export))
    texts, labels, issues = load_labeled_file(exported)
    assert len(texts) == 11 and set(map(tuple, labels)) == {("order_status",)}
    assert any(issue.code == "missing_label" for issue in issues)


def test_cli_suggest(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pool = write_csv(tmp_path / "pool.csv", [(t,) for t, _ in make_rows(per_intent=5, seed=12)], header=("body",))
    code, out, err = run(capsys, "--home", str(home), "suggest", "support", "--pool", str(pool), "-n", "4")
    assert code == 0, err
    assert "Picked 4 of 30 texts" in out and (tmp_path / "pool.suggested.label-studio.json").is_file()
    code, _, err = run(capsys, "--home", str(home), "suggest", "support", "--pool", str(pool), "--strategy", "best")
    assert code == 2 and "'best' is not one of 'uncertainty-diversity', 'uncertainty', 'random'" in err
