"""The FastAPI application: routes, error handlers, and the OpenAPI schema with this server's limits."""

from __future__ import annotations

import json
import logging
import sys
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.errors import ConflictError, NotFoundError, TunesmithError
from tunesmith.registry import Registry
from tunesmith.serving import generation
from tunesmith.serving.middleware import RequestMiddleware, configure_logging, error_body
from tunesmith.serving.routes import admin as admin_routes
from tunesmith.serving.routes import feedback, models, operations, predict
from tunesmith.serving.schemas import (
    ApiError,
)
from tunesmith.serving.server import Server, fix_mmap_threshold
from tunesmith.serving.settings import ServeSettings, is_public
from tunesmith.tasks.catalog import TASKS

BEARER = HTTPBearer(auto_error=False, description="An API key from `tunesmith keys create`.")

log = logging.getLogger("tunesmith.server")


class RequireScope:
    """Route dependency: the request carries a key with this scope (when auth is on)."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    async def __call__(
        self, request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
    ) -> None:
        await request.app.state.server.check_key(credentials, self.scope)


def _error_response(status: int, code: str, message: str, request: Request | None,
                    headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:  # fmt: skip
    request_id = request.scope.get("request_id") if request is not None else None
    path = request.url.path if request is not None else ""
    return JSONResponse(error_body(status, code, message, path, request_id, **extra), status_code=status,
                        headers=headers)  # fmt: skip


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

    # Without auth the read routes carry no key check at all: nothing to resolve per request. Admin routes
    # always need an admin key: on loopback too, since any web page the user opens can post to localhost.
    read = [Depends(RequireScope("read"))] if server.auth else []
    admin = [Depends(RequireScope("admin"))]
    sending_feedback = [Depends(RequireScope("feedback"))] if server.auth else []

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

    app.include_router(operations.routes(server, read))
    app.include_router(models.routes(server, read))
    app.include_router(predict.routes(server, read))
    app.include_router(feedback.routes(server, sending_feedback))
    app.include_router(admin_routes.routes(server, admin))
    generating = [name for name, task in server.tasks.items() if TASKS[task].request == "chat"]
    if generating:  # OpenAI-compatible routes only where they can answer
        app.include_router(generation.routes(server, read))
    for task in dict.fromkeys(server.tasks.values()):  # routes a task's models answer beside the common ones
        router = TASKS[task].routes(server, read)
        if router is not None:
            app.include_router(router)
    _document_limits(app, settings, list(server.slots), generating)
    return RequestMiddleware(app, server)  # type: ignore[return-value]


def _document_limits(app: FastAPI, settings: ServeSettings, served: list[str], generating: list[str]) -> None:
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
                                  ("HFRequest", ("inputs",)), ("QuestionContext", ("question", "context")),
                                  ("AnswerRequest", ("question", "context"))):  # fmt: skip
                for name in fields:
                    limit(components.get(model, {}).get("properties", {}).get(name))
            for model in ("ChatRequest", "CompletionRequest"):  # the OpenAI routes name their model in the body
                properties = components.get(model, {}).get("properties", {})
                if "model" in properties and generating:
                    properties["model"]["enum"] = list(generating)
                for name in ("max_tokens", "max_completion_tokens"):
                    for option in properties.get(name, {}).get("anyOf", []):
                        if option.get("type") == "integer":
                            option["maximum"] = settings.max_new_tokens
            for operation in (op for path in schema.get("paths", {}).values() for op in path.values()):
                for parameter in operation.get("parameters", []):
                    if parameter.get("in") == "path" and parameter.get("name") == "name":
                        parameter["schema"]["enum"] = list(served)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def serve(settings: ServeSettings, registry: Registry | None = None, access_log_enabled: bool = True) -> None:
    """Run the server until SIGINT/SIGTERM; open requests finish before it exits."""
    import uvicorn

    configure_logging(access_log_enabled)
    fix_mmap_threshold()  # before any model is loaded
    if settings.auth == "off" and is_public(settings.host):
        warning = (f"WARNING: auth is off and the server binds {settings.host}, reachable from other machines: "
                   "anyone who can reach it can use every model. Use --auth on with API keys.")  # fmt: skip
        log.warning(json.dumps({"event": "auth_off_public", "message": warning}))
        print(warning, file=sys.stderr, flush=True)
    app = create_app(settings, registry)
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,  # our middleware writes the access log, with request ids
        timeout_graceful_shutdown=max(1, int(settings.request_timeout_s)),
        limit_concurrency=settings.max_connections,
        server_header=False,
    )
    uvicorn.Server(config).run()
