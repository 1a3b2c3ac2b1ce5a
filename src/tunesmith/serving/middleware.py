"""Per-request work outside the routes: request ids, limits, the key check, metrics, JSON logs."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials

from tunesmith.serving.schemas import ApiError
from tunesmith.serving.server import RequestInfo, Server, current_request

access_log = logging.getLogger("tunesmith.access")


OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # probes: never behind a key, a rate or the concurrency cap
OPS_PATHS = frozenset({"/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
OPENAI_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def error_body(status: int, code: str, message: str, path: str, request_id: str | None, **extra: Any) -> dict[str, Any]:
    """The JSON of every error answer: ours, or OpenAI's shape on OpenAI's routes (its clients show
    error.message to the user)."""
    if path in OPENAI_ROUTES:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": code}, "request_id": request_id}
    return {"error": message, "code": code, "request_id": request_id, **extra}


def _leaves(routes: list[Any]) -> Iterator[Any]:
    """The routes themselves: FastAPI keeps an included router as one entry (`original_router` holds its routes);
    the key check must see each route's path and tags before routing, so it looks inside."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _leaves(inner.routes)
        else:
            yield route


class RequestMiddleware:
    """Everything decided before a route runs, cheapest first (pure ASGI): request ids, the concurrency cap,
    the API key (checked before a body is read, so an unauthenticated client cannot make the server buffer
    anything), the rate limit, the body's size and time limits; then metrics and one JSON access-log line."""

    def __init__(self, app: FastAPI, server: Server) -> None:
        self.app, self.server = app, server
        self.routes = list(_leaves(app.router.routes))
        self.state = app.state  # lets callers reach `app.state.server` through the wrapper
        self.in_flight = 0

    def _route(self, scope: dict[str, Any]) -> tuple[str, str | None]:
        """(the route's path template, for a metrics label that stays bounded; the key scope it needs, if any)"""
        from starlette.routing import Match

        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.NONE:
                continue
            path = getattr(route, "path", "unmatched")
            if path in OPEN_PATHS:
                return path, None
            if path in OPS_PATHS:
                return path, "read" if self.server.settings.protect_ops else None
            tags = getattr(route, "tags", None) or []
            if "admin" in tags:
                return path, "admin"
            if "feedback" in tags:
                return path, "feedback" if self.server.auth else None
            return path, "read" if self.server.auth else None
        return "unmatched", None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        scope["request_id"] = request_id
        status = [500]
        info: list[RequestInfo] = []

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode("latin-1")))
                if info and info[0].variant:  # which version answered, when a traffic split is in force
                    message["headers"].append((b"x-tunesmith-variant", info[0].variant.encode("latin-1")))
            await send(message)

        route, needs = self._route(scope)
        self.in_flight += 1
        try:
            refusal = await self._admit(scope, headers, route, needs)
            if refusal is None:
                refusal, body = await self._read_body(receive)
            if refusal is not None:
                http, code, message, extra = refusal
                body_json = error_body(http, code, message, scope["path"], request_id)
                response = JSONResponse(body_json, status_code=http, headers=extra)
                await response(scope, receive, send_with_id)
            else:
                caller = scope.get("tunesmith_caller", "")
                client = scope.get("client")
                # A split keeps one user on one variant: the user the client names, else its key, else its address.
                sticky = headers.get(b"x-tunesmith-user", b"").decode("latin-1")[:128] or caller or \
                    (f"addr:{client[0]}" if client else "")
                info.append(RequestInfo(request_id, started, caller, sticky))
                token = current_request.set(info[0])
                try:
                    await self.app(scope, _replay(body, receive), send_with_id)
                finally:
                    current_request.reset(token)
        finally:
            self.in_flight -= 1
            self._account(scope, route, status[0], time.perf_counter() - started, request_id)

    async def _admit(self, scope: dict[str, Any], headers: dict[bytes, bytes], route: str,
                     needs: str | None) -> tuple[int, str, str, dict[str, str] | None] | None:  # fmt: skip
        """Why this request is refused before its body is read (status, code, message, headers), or None."""
        server, settings = self.server, self.server.settings
        if route not in OPEN_PATHS and route != "/metrics" and self.in_flight > settings.max_concurrent_requests:
            return 429, "overloaded", f"More than {settings.max_concurrent_requests} requests are in progress; " \
                "retry shortly.", {"Retry-After": "1"}
        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        identity = ""
        if needs is not None:
            raw = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = raw.partition(" ")
            credentials = HTTPAuthorizationCredentials(scheme=scheme, credentials=token.strip()) if token else None
            try:
                identity = await server.check_key(credentials, needs)
                scope["tunesmith_caller"] = identity
            except ApiError as exc:
                return exc.status, exc.code, exc.message, exc.headers
        if declared > settings.max_body_bytes:
            return 413, "body_too_large", _too_large(settings.max_body_bytes), None
        if route not in OPEN_PATHS:
            client = scope.get("client")
            try:
                server.check_rate(identity or f"addr:{client[0] if client else '?'}")
            except ApiError as exc:
                return exc.status, exc.code, exc.message, exc.headers
        return None

    async def _read_body(self, receive: Any) -> tuple[tuple[int, str, str, None] | None, bytes]:
        settings = self.server.settings
        try:
            body, too_large = await asyncio.wait_for(_read_body(receive, settings.max_body_bytes), settings.body_timeout_s)
        except TimeoutError:
            return (408, "body_timeout", f"The request body did not arrive within {settings.body_timeout_s:g} s.", None), b""
        if too_large:
            return (413, "body_too_large", _too_large(settings.max_body_bytes), None), b""
        return None, body

    def _account(self, scope: dict[str, Any], route: str, status: int, seconds: float, request_id: str) -> None:
        metrics = self.server.metrics
        method = scope["method"] if scope["method"] in METHODS else "other"  # labels stay a fixed, small set
        metrics.requests.labels(route, method, str(status)).inc()
        metrics.latency.labels(route).observe(seconds)
        if status >= 400:
            metrics.errors.labels(str(status)).inc()
        if access_log.isEnabledFor(logging.INFO):
            client = scope.get("client")
            access_log.info(json.dumps({
                "event": "request", "request_id": request_id, "method": scope["method"], "path": scope["path"],
                "route": route, "status": status, "ms": round(seconds * 1000, 2),
                "client": client[0] if client else None,
            }))  # fmt: skip


def _too_large(limit: int) -> str:
    return f"The request body is larger than {limit} bytes; send fewer or shorter texts."


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
