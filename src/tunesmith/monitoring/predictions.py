"""The prediction log: every served prediction, written off the request path into SQLite segments.

Why SQLite: a segment is one file that pandas (`read_sql`), DuckDB (`sqlite_scan`) and the `sqlite3` shell read
as it is, appends are crash-safe (WAL), and a reader never sees half a row — a Parquet file is only readable once
closed, so a server would have to buffer or cut many small files. One segment a UTC hour, named by its hour
(`predictions-2026120401.sqlite`), so retention deletes whole files by name and size, never rows.

The request path only puts a row on a bounded queue (`put_nowait`); a full queue drops the row and counts it, so
logging can never slow or fail a request. The writer thread masks personal data (the default), hashes or keeps
the inputs, and inserts in batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tunesmith.errors import DataError
from tunesmith.paths import check_name, confine

log = logging.getLogger("tunesmith.server")

InputPolicy = Literal["masked", "text", "hash"]
SEGMENT = "predictions-%Y%m%d%H.sqlite"
BATCH = 512  # rows a writer transaction takes at most
GATHER_S = 0.2  # the writer collects rows this long before a transaction: few commits, little time on the GIL
RETENTION_EVERY_S = 60.0

COLUMNS = ("request_id", "ts", "model", "version", "variant", "task", "latency_ms", "input", "input_hash",
           "input_chars", "label", "confidence", "output", "caller")  # fmt: skip
SCHEMA = """CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT, ts REAL, model TEXT, version INTEGER, variant TEXT, task TEXT, latency_ms REAL,
    input TEXT, input_hash TEXT, input_chars INTEGER, label TEXT, confidence REAL, output TEXT, caller TEXT)"""


@dataclass
class Prediction:
    """One served answer to one input, as the route saw it (the writer thread does the rest)."""

    request_id: str
    model: str
    version: int
    variant: str
    task: str
    latency_ms: float
    input: Any  # a text, or a task's structured input ({"question", "context"}, messages)
    output: dict[str, Any]  # the task's `log_outputs` item: label, confidence, and what else the task keeps
    caller: str = ""  # the API key's name ("" with auth off)
    ts: float = field(default_factory=time.time)


@dataclass
class Answers:
    """One request's answers as the route left them: the task describes them (`log_outputs`) in the writer
    thread, so a request pays for one queue entry and nothing else."""

    request: Prediction  # what the request's rows share (input and output are filled in per row)
    inputs: list[Any]
    describe: Callable[[], list[dict[str, Any]]]  # -> one `log_outputs` item per input

    def rows(self) -> list[Prediction]:
        outputs = self.describe()
        return [replace(self.request, input=item, output=output) for item, output in zip(self.inputs, outputs,
                                                                                       strict=True)]  # fmt: skip


def log_folder(home: Path, model: str) -> Path:
    """Where a model's prediction log and feedback live: `<home>/logs/<model>/`, confined to the home."""
    check_name(model, "model name")
    return confine(home / "logs", home / "logs" / model)


def segment_time(path: Path) -> datetime | None:
    try:
        return datetime.strptime(path.name, SEGMENT).replace(tzinfo=UTC)
    except ValueError:
        return None


def segments(folder: Path) -> list[Path]:
    """The folder's segments, oldest first (files that are not segments are left alone)."""
    if not folder.is_dir():
        return []
    found = [(t, p) for p in folder.glob("predictions-*.sqlite") if (t := segment_time(p)) is not None]
    return [p for _, p in sorted(found)]


def _text_of(value: Any) -> str:
    """The text the log keeps of an input: a text as it is; a structured input as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def mask_input(value: Any) -> Any:
    """`value` with personal data replaced by its kind ("[EMAIL]") in every string it holds."""
    from tunesmith import pii

    if isinstance(value, str):
        return pii.mask(value)
    if isinstance(value, dict):
        return {k: mask_input(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_input(v) for v in value]
    return value


def input_hash(value: Any) -> str:
    return hashlib.sha256(_text_of(value).encode("utf-8")).hexdigest()[:32]


def _row(p: Prediction, policy: InputPolicy) -> tuple[Any, ...]:
    kept = None if policy == "hash" else _text_of(p.input if policy == "text" else mask_input(p.input))
    label = p.output.get("label")
    label = ",".join(label) if isinstance(label, list) else label
    return (p.request_id, p.ts, p.model, p.version, p.variant, p.task, round(p.latency_ms, 3), kept,
            input_hash(p.input), len(_text_of(p.input)), label, p.output.get("confidence"),
            json.dumps(p.output, ensure_ascii=False), p.caller)  # fmt: skip


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=10, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")  # a power cut may lose the last rows, never corrupt the file
    connection.execute(SCHEMA)
    return connection


class PredictionLog:
    """The server's log writer: `record` from the request path, a thread that writes, retention by age and size."""

    def __init__(self, home: Path, *, inputs: InputPolicy = "masked", max_queue: int = 10_000,
                 retention_days: float = 30.0, max_bytes: int = 1 << 30) -> None:  # fmt: skip
        self.home, self.inputs, self.retention_days, self.max_bytes = home, inputs, retention_days, max_bytes
        self.queue: queue.Queue[Prediction | Answers | None] = queue.Queue(max_queue)
        self.dropped = 0  # rows refused by a full queue
        self.written = 0
        self.on_drop: Callable[[float], None] | None = None  # called with the rows dropped (the server's counter)
        self.on_rows: Callable[[str, list[dict[str, Any]]], None] | None = None  # (model, outputs) as described
        self._open: dict[str, tuple[Path, sqlite3.Connection]] = {}
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._idle = threading.Event()
        self._idle.set()
        self._last_retention = 0.0

    def start(self) -> None:
        self._thread.start()

    def record(self, prediction: Prediction | Answers) -> bool:
        """Queue one row, or one request's answers; never blocks. False (and counted) when the queue is full."""
        try:
            self.queue.put_nowait(prediction)
        except queue.Full:
            lost = len(prediction.inputs) if isinstance(prediction, Answers) else 1
            self.dropped += lost
            if self.on_drop is not None:
                self.on_drop(lost)
            return False
        self._idle.clear()
        return True

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued row is written (feedback looks a prediction up; tests read the log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queue.empty() and self._idle.wait(0.05):
                return True
        return False

    def close(self) -> None:
        if self._thread.is_alive():
            self.queue.put(None)
            self._thread.join(timeout=10)
        for _, connection in self._open.values():
            connection.close()
        self._open.clear()

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            batch = [first]
            deadline = time.monotonic() + GATHER_S
            while batch[-1] is not None and len(batch) < BATCH:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    break
                try:
                    batch.append(self.queue.get(timeout=wait))
                except queue.Empty:
                    break
            try:
                rows = self._expand([p for p in batch if p is not None])
                if rows:
                    self._write(rows)
                if time.monotonic() - self._last_retention > RETENTION_EVERY_S:
                    self.apply_retention()
            except Exception:  # a full disk or a damaged segment loses these rows, never the server
                log.exception(json.dumps({"event": "prediction_log_failed", "rows": len(rows)}))
            if self.queue.empty():
                self._idle.set()
            if any(p is None for p in batch):
                return

    def _expand(self, entries: list[Prediction | Answers]) -> list[Prediction]:
        rows: list[Prediction] = []
        for entry in entries:
            if isinstance(entry, Answers):
                described = entry.rows()
                if self.on_rows is not None:
                    self.on_rows(entry.request.model, [p.output for p in described])
                rows += described
                time.sleep(0)  # see `_write`
            else:
                rows.append(entry)
        return rows

    def _write(self, rows: list[Prediction]) -> None:
        by_model: dict[str, list[Prediction]] = {}
        for p in rows:
            by_model.setdefault(p.model, []).append(p)
        for model, group in by_model.items():
            path = log_folder(self.home, model) / datetime.fromtimestamp(group[0].ts, UTC).strftime(SEGMENT)
            current = self._open.get(model)
            if current is None or current[0] != path or not path.exists():
                if current is not None:
                    current[1].close()
                path.parent.mkdir(parents=True, exist_ok=True)
                current = self._open[model] = (path, _connect(path))
            connection = current[1]
            values = []
            for p in group:
                values.append(_row(p, self.inputs))
                # Masking and encoding are Python work that holds the GIL; hand it back after each row, or the
                # event loop waits for a whole batch (5 ms switch interval) and serving slows by ~8 %.
                time.sleep(0)
            with connection:
                connection.executemany(f"INSERT INTO predictions VALUES ({','.join('?' * len(COLUMNS))})", values)
            self.written += len(group)

    def apply_retention(self, now: float | None = None) -> list[Path]:
        """Delete segments older than the retention, then the oldest while all of a model's pass `max_bytes`
        (the segment being written stays). Returns what was deleted."""
        self._last_retention = time.monotonic()
        now = time.time() if now is None else now
        deleted = []
        root = self.home / "logs"
        for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
            kept = segments(folder)
            writing = {path for path, _ in self._open.values()}
            for path in list(kept):
                started = segment_time(path)
                if path not in writing and started is not None and (now - started.timestamp()) / 86400 > \
                        self.retention_days + 1 / 24:  # the hour a segment covers counts as kept
                    kept.remove(path)
                    deleted.append(path)
            while len(kept) > 1 and sum(_size(p) for p in kept) > self.max_bytes and kept[0] not in writing:
                deleted.append(kept.pop(0))
            for path in deleted:
                for extra in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                    extra.unlink(missing_ok=True)
        if deleted:
            log.info(json.dumps({"event": "prediction_log_retention", "deleted": [p.name for p in deleted]}))
        return deleted


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def parse_since(since: str | None) -> float | None:
    """'24h', '30m', '7d', '90s' -> seconds (None: everything)."""
    if not since:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = since[:-1], since[-1:].lower()
    try:
        if unit not in units:
            raise ValueError
        return float(number) * units[unit]
    except ValueError:
        raise DataError(f"--since {since!r} is not a duration: write a number and a unit, e.g. 30m, 24h or 7d.") \
            from None


def read_predictions(home: Path, model: str, since: str | None = None) -> Iterator[dict[str, Any]]:
    """The model's logged predictions, oldest first, within `since` of now; `output` decoded."""
    seconds = parse_since(since)
    after = time.time() - seconds if seconds is not None else 0.0
    for path in segments(log_folder(home, model)):
        started = segment_time(path)
        if started is not None and started.timestamp() + 3600 < after:
            continue
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        connection.row_factory = sqlite3.Row
        try:
            for row in connection.execute("SELECT * FROM predictions WHERE ts >= ? ORDER BY ts", (after,)):
                record = dict(row)
                record["output"] = json.loads(record["output"]) if record["output"] else {}
                yield record
        except sqlite3.DatabaseError:
            continue  # a segment still being created has no table yet
        finally:
            connection.close()


def find_prediction(home: Path, model: str, request_id: str) -> list[dict[str, Any]]:
    """The logged rows of one request (a request may hold several texts), in the request's order. A request id
    sent again (a client's retry) names its latest request."""
    for path in reversed(segments(log_folder(home, model))):
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        connection.row_factory = sqlite3.Row
        try:
            rows = [dict(r) for r in connection.execute("SELECT * FROM predictions WHERE request_id = ? ORDER BY rowid",
                                                        (request_id,))]  # fmt: skip
        except sqlite3.DatabaseError:
            rows = []
        finally:
            connection.close()
        if rows:
            latest = max(row["ts"] for row in rows)  # the rows of one request share its time
            rows = [row for row in rows if row["ts"] == latest]
            for row in rows:
                row["output"] = json.loads(row["output"]) if row["output"] else {}
            return rows
    return []


def export_predictions(home: Path, model: str, output: Path, since: str | None = None) -> int:
    """`tunesmith logs`: write the log as .jsonl, .csv or .parquet (by the suffix); return the row count."""
    import pandas as pd

    rows = list(read_predictions(home, model, since))
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["output"] = [json.dumps(o, ensure_ascii=False) for o in frame["output"]] if rows else []
    suffix = output.suffix.lower()
    output.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        frame.to_csv(output, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(output, index=False)
    elif suffix in (".jsonl", ".ndjson"):
        frame.to_json(output, orient="records", lines=True, force_ascii=False)
    else:
        raise DataError(f"--output {output.name}: write .jsonl, .csv or .parquet.")
    return len(rows)
