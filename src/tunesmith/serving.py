"""The prediction server: FastAPI + uvicorn over registered models, with micro-batching and hot swaps.

Request path: an ASGI middleware gives every request an id, enforces the body-size limit, times it,
counts it for Prometheus and writes one JSON access-log line. A prediction route validates the texts
against the limits and hands them to the model's `MicroBatcher`, which groups concurrent requests into
one forward pass (sorted by token length, so a long text never pads a batch of short ones) on a single
inference thread: ONNX Runtime uses the cores itself, and the event loop keeps serving HTTP meanwhile.

Hot swap: a watcher re-resolves each served reference (e.g. `support@production`) every few seconds.
When it names another version, or the version gets a new export, the new model is loaded and warmed in
the background and then replaces the old one in a single assignment. A batch already running keeps the
predictor object it started with, so requests in flight finish on the old version and none fail.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Body, Depends, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.errors import ConfigError, ConflictError, NotFoundError, TunesmithError
from tunesmith.inference import BaseClassifier, load_predictor, read_export
from tunesmith.registry import ModelVersion, Registry, key_digest

log = logging.getLogger("tunesmith.server")
access_log = logging.getLogger("tunesmith.access")


# -- settings ----------------------------------------------------------------------------------


class BatchSettings(BaseModel):
    """Micro-batching of one model (each served model may have its own)."""

    model_config = ConfigDict(extra="forbid")
    max_batch_size: int = Field(32, ge=1, le=1024, description="Most texts in one forward pass.")
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="How long a batch waits for more requests once the first arrived. 0 (measured best on CPU): "
        "no waiting; requests that arrive while the model is busy form the next batch.",
    )
    max_queue: int = Field(
        4096, ge=1, description="Texts waiting for the model beyond which requests are refused with 503."
    )


class ServeSettings(BaseModel):
    """Everything `tunesmith serve` can be told; a YAML file with these keys is accepted by --config."""

    model_config = ConfigDict(extra="forbid")
    models: list[str] = Field(default_factory=list, description="References to serve: NAME, NAME@ALIAS, NAME@N.")
    default_model: str | None = Field(None, description="Model answering /predict (default: the first).")
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind (0: any free port).")
    auth: Literal["auto", "on", "off"] = Field(
        "auto", description="API-key auth; 'auto' turns it on when binding a non-loopback address."
    )
    backend: Literal["auto", "onnx", "onnx-fp32", "onnx-int8", "pytorch"] = Field(
        "auto", description="auto (the checked ONNX export if any, else PyTorch), onnx, onnx-fp32, onnx-int8, pytorch."
    )
    threads: int | None = Field(None, ge=1, description="ONNX Runtime threads per model (default: all cores).")
    batching: BatchSettings = Field(default_factory=BatchSettings, description="Batching for every model.")
    per_model: dict[str, BatchSettings] = Field(default_factory=dict, description="Batching for named models.")
    max_texts_per_request: int = Field(64, ge=1, description="Most texts in one request.")
    max_text_chars: int = Field(10_000, ge=1, description="Longest text accepted, in characters.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body accepted.")
    request_timeout_s: float = Field(30.0, gt=0, description="A request waiting longer for the model gets 504.")
    watch_interval_s: float = Field(
        5.0, ge=0, description="How often aliases and exports are re-checked for hot swaps (0: never)."
    )


def auth_enabled(settings: ServeSettings) -> bool:
    if settings.auth != "auto":
        return settings.auth == "on"
    host = settings.host.strip("[]")
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a host name other than localhost: assume it is reachable from elsewhere


# -- API schemas -------------------------------------------------------------------------------


class PredictRequest(BaseModel):
    """Exactly one of `text` and `texts` (the schema says so with oneOf, so generated clients know)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"oneOf": [{"required": ["text"]}, {"required": ["texts"]}]}
    )
    text: str | SkipJsonSchema[None] = Field(None, description="One text to classify.")
    texts: Annotated[list[str], Field(min_length=1)] | SkipJsonSchema[None] = Field(
        None, description="Several texts to classify, answered in the same order."
    )
    all_scores: StrictBool = Field(False, description="Also return every label's score.")

    @field_validator("text", "texts", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:  # only values actually sent reach this; leave a field out instead of sending null
            raise ValueError("must not be null; leave the field out instead")
        return value

    @model_validator(mode="after")
    def _one_input(self) -> PredictRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError('give exactly one of "text" (a string) or "texts" (a list of strings)')
        return self


class LabelScore(BaseModel):
    label: str
    score: float


class PredictionOut(BaseModel):
    label: str | list[str] = Field(description="The predicted label (a list of labels for multi-label models).")
    score: float
    scores: dict[str, float] | None = None


class PredictResponse(BaseModel):
    model: str
    version: int
    backend: str
    predictions: list[PredictionOut]


class SeedRequest(BaseModel):
    text: str = Field(description="The text to classify.")


class HFParameters(BaseModel):
    top_k: int | None = Field(None, ge=1, description="Return only the k most probable labels.")

    @field_validator("top_k", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        if isinstance(value, bool | str):  # lax validation would read true as 1 and "3" as 3
            raise ValueError("must be an integer")
        return value

    function_to_apply: Literal["sigmoid", "softmax", "none"] | None = None


class HFRequest(BaseModel):
    """The Hugging Face Inference API's text-classification request."""

    inputs: str | Annotated[list[str], Field(min_length=1)] = Field(description="A text or a list of texts.")
    parameters: HFParameters | None = None
    options: dict[str, Any] | None = None


class ModelInfo(BaseModel):
    name: str
    ref: str
    version: int | None
    backend: str | None
    status: Literal["loading", "ready", "failed"]
    task: str
    labels: list[str]
    multi_label: bool
    aliases: list[str]
    default: bool


class ModelList(BaseModel):
    models: list[ModelInfo]


class AliasRequest(BaseModel):
    version: int = Field(ge=1, description="Version the alias should point at.")


AliasName = Annotated[str, PathParam(pattern=r"^[A-Za-z][A-Za-z0-9._-]{0,63}$", description="e.g. production")]


class ErrorBody(BaseModel):
    error: str = Field(description="What was wrong and how to fix it.")
    code: str
    request_id: str | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "The body is not valid JSON.",
        401: "Missing or unknown API key.",
        403: "The key lacks the scope this route needs.",
        404: "No such model is served (or no such version).",
        409: "Conflicts with the registry's state: nothing to roll back, a reserved alias name.",
        413: "The body is larger than the server accepts.",
        422: "The body is not what this route takes, or breaks a limit (texts per request, characters per text).",
        503: "The model is still loading or the queue is full; retry.",
        504: "The model did not answer within the request timeout.",
    }.items()
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


# -- metrics -----------------------------------------------------------------------------------


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tunesmith_requests", "HTTP requests.", ["route", "method", "status"], registry=r)
        self.latency = Histogram(
            "tunesmith_request_seconds", "Request latency.", ["route"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self.batch_size = Histogram(
            "tunesmith_batch_texts", "Texts per forward pass.", ["model"], registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )  # fmt: skip
        self.predictions = Counter("tunesmith_predictions", "Predicted labels.", ["model", "label"], registry=r)
        self.errors = Counter("tunesmith_errors", "Error responses by code.", ["code"], registry=r)
        self.version = Gauge("tunesmith_model_version", "Version being served.", ["model", "backend"], registry=r)
        self.swaps = Counter("tunesmith_model_swaps", "Hot swaps to another version.", ["model"], registry=r)
        self.queue = Gauge("tunesmith_queue_texts", "Texts waiting for the model.", ["model"], registry=r)


# -- models and batching -----------------------------------------------------------------------


@dataclass
class Loaded:
    """One loaded model version; replaced as a whole on a hot swap."""

    version: ModelVersion
    predictor: BaseClassifier
    revision: tuple[int, str | None]


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future[tuple[Loaded, np.ndarray]]


@dataclass
class Slot:
    """A served model name: what it resolves to, what is loaded, and its request queue."""

    name: str
    ref: str
    batching: BatchSettings
    current: Loaded | None = None
    status: Literal["loading", "ready", "failed"] = "loading"
    queue: asyncio.Queue[_Pending] = field(default_factory=asyncio.Queue)
    queued_texts: int = 0
    worker: asyncio.Task[None] | None = None


class MicroBatcher:
    """Groups concurrent requests of one model into forward passes on the shared inference thread."""

    def __init__(self, slot: Slot, executor: ThreadPoolExecutor, metrics: Metrics) -> None:
        self.slot, self.executor, self.metrics = slot, executor, metrics

    async def submit(self, texts: list[str], timeout: float) -> tuple[Loaded, np.ndarray]:
        slot = self.slot
        if slot.current is None:
            raise ApiError(503, "model_loading", f"Model {slot.name!r} is still loading; retry shortly.",
                           {"Retry-After": "1"})  # fmt: skip
        if slot.queued_texts + len(texts) > slot.batching.max_queue:
            raise ApiError(503, "overloaded", f"{slot.queued_texts} texts are already waiting for {slot.name!r}; "
                           "retry shortly.", {"Retry-After": "1"})  # fmt: skip
        future: asyncio.Future[tuple[Loaded, np.ndarray]] = asyncio.get_running_loop().create_future()
        slot.queued_texts += len(texts)
        self.metrics.queue.labels(slot.name).set(slot.queued_texts)
        slot.queue.put_nowait(_Pending(texts, future))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise ApiError(504, "timeout", f"No answer from {slot.name!r} within {timeout:g} s; the server is "
                           "overloaded. Retry later or raise --request-timeout.") from None  # fmt: skip

    async def run(self) -> None:
        slot, loop = self.slot, asyncio.get_running_loop()
        while True:
            batch = [await slot.queue.get()]
            size = len(batch[0].texts)
            deadline = loop.time() + slot.batching.max_wait_ms / 1000
            while size < slot.batching.max_batch_size:
                try:
                    item = slot.queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(slot.queue.get(), remaining)
                    except TimeoutError:
                        break
                batch.append(item)
                size += len(item.texts)
            slot.queued_texts -= size
            self.metrics.queue.labels(slot.name).set(slot.queued_texts)
            live = [p for p in batch if not p.future.done()]  # timed-out requests are not computed
            if not live:
                continue
            loaded = slot.current  # one version for the whole batch, even if a swap lands meanwhile
            assert loaded is not None
            texts = [t for p in live for t in p.texts]
            self.metrics.batch_size.labels(slot.name).observe(len(texts))
            try:
                logits = await loop.run_in_executor(
                    self.executor, loaded.predictor.predict_logits, texts, slot.batching.max_batch_size
                )
            except Exception as exc:  # a model failure answers its own requests, never stops the worker
                log.exception("prediction failed")
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(ApiError(500, "model_error", f"The model failed: {exc}"))
                continue
            start = 0
            for p in live:
                if not p.future.done():
                    p.future.set_result((loaded, logits[start : start + len(p.texts)]))
                start += len(p.texts)


# -- the application ---------------------------------------------------------------------------


class Server:
    """State of one running server: settings, registry, served slots, keys and metrics."""

    def __init__(self, settings: ServeSettings, registry: Registry) -> None:
        if not settings.models:
            raise ConfigError("Nothing to serve: name at least one model, e.g. `tunesmith serve support`.")
        self.settings, self.registry = settings, registry
        self.metrics = Metrics()
        self.auth = auth_enabled(settings)
        self.slots: dict[str, Slot] = {}
        for ref in settings.models:
            version = registry.resolve(ref)  # unknown names fail here, before the port is bound
            if version.name in self.slots:
                raise ConfigError(f"{version.name!r} is named twice; serve one reference per model name.")
            if version.task != "text-classification":
                raise ConfigError(f"{ref!r} is a {version.task} model; this server handles text-classification.")
            self.slots[version.name] = Slot(version.name, ref, settings.per_model.get(version.name, settings.batching))
        unknown = set(settings.per_model) - set(self.slots)
        if unknown:
            raise ConfigError(f"per_model names models that are not served: {', '.join(sorted(unknown))}.")
        default = settings.default_model or next(iter(self.slots))
        self.default = default.partition("@")[0]
        if self.default not in self.slots:
            raise ConfigError(f"default_model {default!r} is not among the served models ({', '.join(self.slots)}).")
        self.keys: dict[str, tuple[str, frozenset[str]]] = {}
        self.keys_checked = 0.0
        if self.auth:
            self.keys = registry.key_table()
            if not self.keys:
                raise ConfigError(
                    f"Auth is on (binding {settings.host}) but no API keys exist. Create one with "
                    "`tunesmith keys create NAME --scope read`, or pass --auth off for a trusted network."
                )
        self.inference = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.loader = ThreadPoolExecutor(1, thread_name_prefix="loader")
        self.batchers = {name: MicroBatcher(slot, self.inference, self.metrics) for name, slot in self.slots.items()}
        self._tasks: list[asyncio.Task[Any]] = []
        self._swap_lock = asyncio.Lock()

    # Loading and swapping run in the loader thread: serving goes on while a model loads.

    def _revision(self, version: ModelVersion) -> tuple[int, str | None]:
        export = read_export(version.path)
        return version.version, export["created_at"] if export else None

    def _load(self, version: ModelVersion) -> Loaded:
        revision = self._revision(version)
        predictor = load_predictor(version.path, self.settings.backend, self.settings.threads)
        predictor.predict_proba(["warm-up"])  # the first run allocates; do it before taking traffic
        return Loaded(version, predictor, revision)

    async def refresh(self, name: str | None = None) -> None:
        """Load whatever each served reference names now, if it is not what is loaded."""
        loop = asyncio.get_running_loop()
        async with self._swap_lock:
            for slot in [self.slots[name]] if name else list(self.slots.values()):
                try:
                    version = await loop.run_in_executor(self.loader, self.registry.resolve, slot.ref)
                    revision = await loop.run_in_executor(self.loader, self._revision, version)
                    if slot.current is not None and slot.current.revision == revision:
                        continue
                    loaded = await loop.run_in_executor(self.loader, self._load, version)
                except (TunesmithError, OSError) as exc:
                    log.error(json.dumps({"event": "load_failed", "model": slot.name, "error": str(exc)}))
                    if slot.current is None:
                        slot.status = "failed"
                    continue
                previous, slot.current, slot.status = slot.current, loaded, "ready"
                if previous is not None:
                    self.metrics.version.remove(slot.name, previous.predictor.backend)
                    self.metrics.swaps.labels(slot.name).inc()
                self.metrics.version.labels(slot.name, loaded.predictor.backend).set(version.version)
                log.info(json.dumps({
                    "event": "model_loaded", "model": slot.name, "version": version.version,
                    "backend": loaded.predictor.backend, "previous": previous.version.version if previous else None,
                }))  # fmt: skip

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.watch_interval_s)
            await self.refresh()
            if self.auth:
                await self._reload_keys()

    async def _reload_keys(self) -> None:
        self.keys_checked = time.monotonic()
        self.keys = await asyncio.get_running_loop().run_in_executor(self.loader, self.registry.key_table)

    async def start(self) -> None:
        for batcher in self.batchers.values():
            batcher.slot.worker = asyncio.create_task(batcher.run())
        self._tasks.append(asyncio.create_task(self.refresh()))
        if self.settings.watch_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._watch()))

    async def stop(self) -> None:
        # uvicorn has already waited for open requests; nothing is queued any more.
        for task in self._tasks + [s.worker for s in self.slots.values() if s.worker]:
            task.cancel()
        self.inference.shutdown(wait=True)
        self.loader.shutdown(wait=False, cancel_futures=True)

    def ready(self) -> bool:
        return all(s.current is not None for s in self.slots.values())

    async def check_key(self, credentials: HTTPAuthorizationCredentials | None, scope: str) -> None:
        if not self.auth:
            return
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise ApiError(401, "unauthenticated", "Send an API key: 'Authorization: Bearer <key>'.",
                           {"WWW-Authenticate": "Bearer"})  # fmt: skip
        digest = key_digest(credentials.credentials)
        if digest not in self.keys and time.monotonic() - self.keys_checked > 1.0:
            await self._reload_keys()  # a key created after start works within a second (re-read at most once a second)
        entry = self.keys.get(digest)
        if entry is None:
            raise ApiError(401, "invalid_key", "Unknown API key. Create one with `tunesmith keys create`.",
                           {"WWW-Authenticate": "Bearer"})  # fmt: skip
        if scope not in entry[1] and "admin" not in entry[1]:
            raise ApiError(403, "forbidden", f"The key {entry[0]!r} lacks the {scope!r} scope this route needs.")

    def slot(self, name: str) -> Slot:
        slot = self.slots.get(name)
        if slot is None:
            raise ApiError(404, "unknown_model", f"No model {name!r} is served here. Served: {', '.join(self.slots)}.")
        return slot

    def check_texts(self, texts: list[str]) -> list[str]:
        """The texts if they are within the limits, with lone surrogates (invalid in UTF-8) replaced."""
        limits = self.settings
        if not texts:
            raise ApiError(422, "no_texts", "The list of texts is empty; send at least one.")
        if len(texts) > limits.max_texts_per_request:
            raise ApiError(422, "too_many_texts", f"{len(texts)} texts in one request; at most "
                           f"{limits.max_texts_per_request} are accepted. Split the request.")  # fmt: skip
        for i, text in enumerate(texts):
            if len(text) > limits.max_text_chars:
                raise ApiError(422, "text_too_long", f"Text {i} has {len(text)} characters; at most "
                               f"{limits.max_text_chars} are accepted.")  # fmt: skip
        return [_valid_unicode(t) for t in texts]

    async def classify(self, name: str, texts: list[str]) -> tuple[Loaded, np.ndarray]:
        slot = self.slot(name)
        texts = self.check_texts(texts)
        loaded, logits = await self.batchers[slot.name].submit(texts, self.settings.request_timeout_s)
        labels = loaded.predictor.label_names
        counter = self.metrics.predictions
        if not loaded.predictor.multi_label:
            for i in logits.argmax(axis=1):
                counter.labels(slot.name, labels[int(i)]).inc()
        return loaded, logits

    def describe(self, slot: Slot) -> ModelInfo:
        loaded = slot.current
        meta = loaded.predictor.meta if loaded else {}
        return ModelInfo(
            name=slot.name,
            ref=slot.ref,
            version=loaded.version.version if loaded else None,
            backend=loaded.predictor.backend if loaded else None,
            status=slot.status,
            task=meta.get("task", "text-classification"),
            labels=meta.get("label_names", []),
            multi_label=bool(meta.get("multi_label", False)),
            aliases=loaded.version.aliases if loaded else [],
            default=slot.name == self.default,
        )


BEARER = HTTPBearer(auto_error=False, description="An API key from `tunesmith keys create`.")


class RequireScope:
    """Route dependency: the request carries a key with this scope (when auth is on)."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    async def __call__(
        self, request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
    ) -> None:
        await request.app.state.server.check_key(credentials, self.scope)


def _valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # JSON may carry lone surrogates ("\\ud800"); the tokenizer cannot take them
        return text.encode("utf-8", "replace").decode("utf-8")


def _error_response(status: int, code: str, message: str, request: Request | None,
                    headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:  # fmt: skip
    request_id = request.scope.get("request_id") if request is not None else None
    body = {"error": message, "code": code, "request_id": request_id, **extra}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(errors: list[Any]) -> str:
    parts = []
    for e in errors[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "Invalid request: " + "; ".join(parts)


def create_app(settings: ServeSettings, registry: Registry | None = None) -> FastAPI:
    """The ASGI application; `serve` runs it with uvicorn, tests may too."""
    from contextlib import asynccontextmanager

    server = Server(settings, registry or Registry())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        await server.start()
        yield
        await server.stop()

    app = FastAPI(
        title="tunesmith prediction API",
        version="1",
        description="Predictions from registered tunesmith models. Errors are JSON: "
        '`{"error": message, "code": code, "request_id": id}`.',
        lifespan=lifespan,
    )
    app.state.server = server

    # Without auth the routes carry no key check at all: nothing to resolve per request.
    read = [Depends(RequireScope("read"))] if server.auth else []
    admin = [Depends(RequireScope("admin"))] if server.auth else []

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.code, exc.message, request, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        message = _validation_message(errors)
        if "json" not in request.headers.get("content-type", ""):
            message += " (send the body as JSON with the header 'Content-Type: application/json')"
        return _error_response(422, "invalid_request", message, request, details=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = {
            400: "The body could not be parsed: send UTF-8 JSON with 'Content-Type: application/json'.",
            404: f"No route {request.url.path}; see /docs for the API.",
        }.get(exc.status_code, str(exc.detail))
        return _error_response(exc.status_code, code, message, request, exc.headers)

    @app.exception_handler(TunesmithError)
    async def _tunesmith_error(request: Request, exc: TunesmithError) -> JSONResponse:
        if isinstance(exc, NotFoundError):
            return _error_response(404, "not_found", str(exc), request)
        if isinstance(exc, ConflictError):
            return _error_response(409, "conflict", str(exc), request)
        return _error_response(422, "invalid_request", str(exc), request)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error_response(500, "internal_error", "The server failed on this request; see its log.", request)

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process answers.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Readiness: every served model is loaded.",
             responses={503: {"description": "Still loading."}})  # fmt: skip
    async def readyz() -> JSONResponse:
        models = {s.name: s.status for s in server.slots.values()}
        ready = server.ready()
        return JSONResponse({"status": "ready" if ready else "loading", "models": models}, 200 if ready else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics.", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", tags=["models"], response_model=ModelList, dependencies=read,
             responses={k: ERRORS[k] for k in (401, 403)})  # fmt: skip
    async def list_models() -> ModelList:
        return ModelList(models=[server.describe(s) for s in server.slots.values()])

    @app.get("/v1/models/{name}", tags=["models"], response_model=ModelInfo, dependencies=read,
             responses={k: ERRORS[k] for k in (401, 403, 404)})  # fmt: skip
    async def show_model(name: str) -> ModelInfo:
        return server.describe(server.slot(name))

    predict_errors = {k: ERRORS[k] for k in (400, 401, 403, 404, 413, 422, 503, 504)}

    @app.post("/v1/models/{name}/predict", tags=["predict"], response_model=PredictResponse, dependencies=read,
              responses=predict_errors)  # fmt: skip
    async def predict(name: str, body: PredictRequest) -> JSONResponse:
        """Classify one text (`text`) or several (`texts`); answers keep the order of the texts."""
        texts = [body.text] if body.text is not None else list(body.texts or [])
        loaded, logits = await server.classify(name, texts)
        out = []
        for p in loaded.predictor.decide(loaded.predictor.activate(logits)):
            item: dict[str, Any] = {"label": p.label, "score": p.score}
            if body.all_scores:
                item["scores"] = p.scores
            out.append(item)
        return JSONResponse({"model": loaded.version.name, "version": loaded.version.version,
                             "backend": loaded.predictor.backend, "predictions": out})  # fmt: skip

    @app.post("/predict", tags=["predict"], response_model=LabelScore, dependencies=read, responses=predict_errors)
    async def predict_seed(body: SeedRequest) -> JSONResponse:
        """The default model, in the request and response shape of the original Flask service."""
        loaded, logits = await server.classify(server.default, [body.text])
        p = loaded.predictor.decide(loaded.predictor.activate(logits))[0]
        label = p.label if isinstance(p.label, str) else ",".join(p.label)
        return JSONResponse({"label": label, "score": p.score})

    @app.post("/models/{name}", tags=["predict"], response_model=list[list[LabelScore]], dependencies=read,
              responses=predict_errors)  # fmt: skip
    async def predict_hf(name: str, body: HFRequest) -> JSONResponse:
        """Hugging Face Inference API compatible text classification: one list of {label, score} per input,
        most probable first, so `huggingface_hub.InferenceClient(base_url)` works unchanged."""
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        loaded, logits = await server.classify(name, texts)
        params = body.parameters or HFParameters()
        probs = loaded.predictor.activate(logits, params.function_to_apply)
        labels = loaded.predictor.label_names
        k = min(params.top_k or len(labels), len(labels))
        out = []
        for row in probs:
            best = np.argsort(-row, kind="stable")[:k]
            out.append([{"label": labels[i], "score": float(row[i])} for i in best])
        return JSONResponse(out)

    admin_errors = {k: ERRORS[k] for k in (400, 401, 403, 404, 409, 422)}

    @app.post("/v1/models/{name}/reload", tags=["admin"], response_model=ModelInfo, dependencies=admin,
              responses=admin_errors)  # fmt: skip
    async def reload(name: str) -> ModelInfo:
        """Re-resolve the served reference now and swap to what it names, if that changed."""
        slot = server.slot(name)
        await server.refresh(slot.name)
        return server.describe(slot)

    @app.put("/v1/models/{name}/aliases/{alias}", tags=["admin"], response_model=ModelInfo, dependencies=admin,
             responses=admin_errors)  # fmt: skip
    async def set_alias(name: str, alias: AliasName, body: Annotated[AliasRequest, Body()]) -> ModelInfo:
        """Point an alias at a version (as `tunesmith models promote`); a server serving it swaps at once."""
        slot = server.slot(name)
        await asyncio.get_running_loop().run_in_executor(server.loader, server.registry.promote,
                                                         f"{name}@{body.version}", alias)  # fmt: skip
        await server.refresh(slot.name)
        return server.describe(slot)

    @app.post("/v1/models/{name}/aliases/{alias}/rollback", tags=["admin"], response_model=ModelInfo,
              dependencies=admin, responses=admin_errors)  # fmt: skip
    async def rollback(name: str, alias: AliasName) -> ModelInfo:
        """Move an alias back to its previous version (as `tunesmith models rollback`)."""
        slot = server.slot(name)
        await asyncio.get_running_loop().run_in_executor(server.loader, server.registry.rollback, name, alias)
        await server.refresh(slot.name)
        return server.describe(slot)

    _document_limits(app, settings, list(server.slots))
    return RequestMiddleware(app, server)  # type: ignore[return-value]


def _document_limits(app: FastAPI, settings: ServeSettings, served: list[str]) -> None:
    """Put this server's limits and model names into its OpenAPI schema: clients and fuzzers see what is accepted."""
    generate = app.openapi

    def limit(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "string":
                node["maxLength"] = settings.max_text_chars
            if node.get("type") == "array":
                node["maxItems"] = settings.max_texts_per_request
            for value in node.values():
                limit(value)
        elif isinstance(node, list):
            for value in node:
                limit(value)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.get("components", {}).get("schemas", {})
            for model, fields in (("PredictRequest", ("text", "texts")), ("SeedRequest", ("text",)),
                                  ("HFRequest", ("inputs",))):  # fmt: skip
                for name in fields:
                    limit(components.get(model, {}).get("properties", {}).get(name))
            for operation in (op for path in schema.get("paths", {}).values() for op in path.values()):
                for parameter in operation.get("parameters", []):
                    if parameter.get("in") == "path" and parameter.get("name") == "name":
                        parameter["schema"]["enum"] = list(served)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


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


# -- running -----------------------------------------------------------------------------------


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


def serve(settings: ServeSettings, registry: Registry | None = None, access_log_enabled: bool = True) -> None:
    """Run the server until SIGINT/SIGTERM; open requests finish before it exits."""
    import uvicorn

    configure_logging(access_log_enabled)
    app = create_app(settings, registry)
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,  # our middleware writes the access log, with request ids
        timeout_graceful_shutdown=max(1, int(settings.request_timeout_s)),
        server_header=False,
    )
    uvicorn.Server(config).run()


def load_settings(path: str | Path | None, overrides: dict[str, Any]) -> ServeSettings:
    """Settings from an optional YAML file, then non-None overrides (CLI flags) on top."""
    import yaml
    from pydantic import ValidationError

    raw: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"Server settings file {file} does not exist.")
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{file} must hold a mapping of settings (models:, port:, batching:, ...).")
    for key, value in overrides.items():
        if value is None or value == []:
            continue
        if key in BatchSettings.model_fields:
            raw.setdefault("batching", {})[key] = value
        else:
            raw[key] = value
    try:
        return ServeSettings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"Invalid server settings: {problems}") from None


__all__ = ["BatchSettings", "ServeSettings", "auth_enabled", "create_app", "load_settings", "serve"]
