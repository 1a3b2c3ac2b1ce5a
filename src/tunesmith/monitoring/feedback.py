"""Feedback: the correct answer to a served prediction, stored beside the prediction log.

One SQLite file a model (`<home>/logs/<model>/feedback.sqlite`), outside the log's retention: feedback is
training data a person wrote, not traffic. Each row keeps who sent it (the API key's name), the input (from the
request or from the logged prediction it names), the answer in the task's shape, and what the model had
answered, so realised accuracy needs no join.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunesmith.monitoring.predictions import log_folder, parse_since

HELD_OUT_ONE_IN = 5  # a fifth of the feedback inputs never goes into a training file: the gate judges on it

SCHEMA = """CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL, model TEXT, version INTEGER, request_id TEXT, caller TEXT,
    input TEXT, answer TEXT, predicted TEXT, correct INTEGER)"""


def held_out(item: Any) -> bool:
    """Whether feedback on this input is held out of training files, for the regression gate. By the input's
    hash, so the same input sent twice lands on the same side and never on both."""
    digest = hashlib.sha256(json.dumps(item, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()
    return int(digest[:8], 16) % HELD_OUT_ONE_IN == 0


def _path(home: Path, model: str) -> Path:
    return log_folder(home, model) / "feedback.sqlite"


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=10)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(SCHEMA)
    return connection


def store_feedback(home: Path, model: str, *, request_id: str | None, caller: str, input: Any, answer: Any,
                   predicted: dict[str, Any] | None, version: int | None, correct: bool | None) -> int:  # fmt: skip
    """Write one feedback row; return its id."""
    connection = _connect(_path(home, model))
    try:
        with connection:
            cursor = connection.execute(
                "INSERT INTO feedback (ts, model, version, request_id, caller, input, answer, predicted, correct) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), model, version, request_id, caller, json.dumps(input, ensure_ascii=False),
                 json.dumps(answer, ensure_ascii=False), json.dumps(predicted, ensure_ascii=False) if predicted else None,
                 None if correct is None else int(correct)),
            )  # fmt: skip
        return int(cursor.lastrowid or 0)
    finally:
        connection.close()


def read_feedback(home: Path, model: str, since: str | None = None) -> Iterator[dict[str, Any]]:
    """The model's feedback, oldest first, with input, answer and predicted decoded."""
    path = _path(home, model)
    if not path.exists():
        return
    seconds = parse_since(since)
    after = time.time() - seconds if seconds is not None else 0.0
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    connection.row_factory = sqlite3.Row
    try:
        for row in connection.execute("SELECT * FROM feedback WHERE ts >= ? ORDER BY id", (after,)):
            record = dict(row)
            for key in ("input", "answer", "predicted"):
                record[key] = json.loads(record[key]) if record[key] else None
            record["correct"] = None if record["correct"] is None else bool(record["correct"])
            record["held_out"] = held_out(record["input"])
            yield record
    finally:
        connection.close()


def export_feedback(home: Path, model: str, task: Any, output: Path, since: str | None = None,
                    include_held_out: bool = False) -> int:  # fmt: skip
    """`tunesmith feedback NAME --export FILE`: a JSONL training file in the task's own format (the loaders of
    `tunesmith train` read it), without the held-out fifth unless asked; return the row count."""
    from tunesmith.errors import DataError

    if output.suffix.lower() not in (".jsonl", ".ndjson"):
        raise DataError(f"--export {output.name}: feedback is exported as JSONL (name the file .jsonl), the one "
                        "format every task's loader reads.")  # fmt: skip
    records = [r for r in read_feedback(home, model, since) if include_held_out or not r["held_out"]]
    rows = task.feedback_rows(records)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    partial.replace(output)
    return len(rows)
