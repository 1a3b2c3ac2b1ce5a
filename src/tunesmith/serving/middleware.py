"""Per-request work outside the routes: request ids, the body-size limit, metrics, JSON logs."""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI

from tunesmith.serving.server import Server

access_log = logging.getLogger("tunesmith.access")


class RequestMiddleware:
    """Request ids, the body-size limit, metrics and one JSON access-log line per request (pure ASGI: cheap)."""

    def __init__(self, app: FastAPI, server: Server) -> None:
        self.app, self.server = app, server
        self.state = app.state  # lets callers reach `app.state.server` through the wrapper

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        scope["request_id"] = request_id
        status = [500]

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode("latin-1")))
            await send(message)

        limit = self.server.settings.max_body_bytes
        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            await self._too_large(send_with_id, request_id, limit)
        else:
            body, too_large = await _read_body(receive, limit)
            if too_large:
                await self._too_large(send_with_id, request_id, limit)
            else:
                await self.app(scope, _replay(body, receive), send_with_id)
        route = scope.get("route")
        path = getattr(route, "path", None) or ("unmatched" if status[0] == 404 else scope["path"])
        seconds = time.perf_counter() - started
        metrics = self.server.metrics
        metrics.requests.labels(path, scope["method"], str(status[0])).inc()
        metrics.latency.labels(path).observe(seconds)
        if status[0] >= 400:
            metrics.errors.labels(str(status[0])).inc()
        if access_log.isEnabledFor(logging.INFO):
            client = scope.get("client")
            access_log.info(json.dumps({
                "event": "request", "request_id": request_id, "method": scope["method"], "path": scope["path"],
                "route": path, "status": status[0], "ms": round(seconds * 1000, 2),
                "client": client[0] if client else None,
            }))  # fmt: skip

    async def _too_large(self, send: Any, request_id: str, limit: int) -> None:
        body = json.dumps({"error": f"The request body is larger than {limit} bytes; send fewer or shorter texts.",
                           "code": "body_too_large", "request_id": request_id}).encode()  # fmt: skip
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Any, limit: int) -> tuple[bytes, bool]:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replay(body: bytes, receive: Any) -> Callable[[], Awaitable[dict[str, Any]]]:
    sent = [False]

    async def replay() -> dict[str, Any]:
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server would report it

    return replay


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        try:
            fields = json.loads(message)
            if not isinstance(fields, dict):
                raise ValueError
        except ValueError:
            fields = {"message": message}
        entry = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname.lower(),
                 "logger": record.name, **fields}  # fmt: skip
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(access: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("tunesmith.server", "tunesmith.access", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
    if not access:
        access_log.setLevel(logging.WARNING)
