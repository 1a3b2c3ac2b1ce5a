"""The FastAPI application: routes, error handlers, and the OpenAPI schema with this server's limits."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Annotated, Any

import numpy as np
from fastapi import Body, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.errors import ConflictError, NotFoundError, TunesmithError
from tunesmith.registry import Registry
from tunesmith.serving.middleware import RequestMiddleware, configure_logging, error_body
from tunesmith.serving.schemas import (
    ERRORS,
    AliasName,
    AliasRequest,
    AnswerOut,
    AnswerRequest,
    AnswerResponse,
    ApiError,
    GeneratedText,
    HFEntity,
    HFParameters,
    HFRequest,
    LabelScore,
    ModelInfo,
    ModelList,
    PredictRequest,
    PredictResponse,
    QuestionContext,
    SeedRequest,
)
from tunesmith.serving.server import Server, fix_mmap_threshold
from tunesmith.serving.settings import ServeSettings, is_public

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
        """Each model's state ("ready", "loading", or "failed" with the error, while the last good version keeps
        serving) and the hot-swap watcher's ("ok", or "failing" with its error and count)."""
        health = server.health()
        return JSONResponse(health, 200 if health["status"] == "ready" else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics.", response_class=Response)
    async def metrics() -> Response:
        # Rendering every series takes milliseconds that would stall all other requests on the event loop.
        text = await asyncio.get_running_loop().run_in_executor(None, generate_latest, server.metrics.registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", tags=["models"], response_model=ModelList, dependencies=read,
             responses={k: ERRORS[k] for k in (401, 403)})  # fmt: skip
    async def list_models() -> ModelList:
        return ModelList(models=[server.describe(s) for s in server.slots.values()])

    @app.get("/v1/models/{name}", tags=["models"], response_model=ModelInfo, dependencies=read,
             responses={k: ERRORS[k] for k in (401, 403, 404)})  # fmt: skip
    async def show_model(name: str) -> ModelInfo:
        return server.describe(server.slot(name))

    predict_errors = {k: ERRORS[k] for k in (400, 401, 403, 404, 408, 413, 422, 429, 503, 504)}

    @app.post("/v1/models/{name}/predict", tags=["predict"], response_model=PredictResponse, dependencies=read,
              responses=predict_errors)  # fmt: skip
    async def predict(name: str, body: PredictRequest) -> JSONResponse:
        """Classify one text (`text`) or several (`texts`); answers keep the order of the texts."""
        texts = [body.text] if body.text is not None else list(body.texts or [])
        loaded, logits = await server.infer(name, texts)
        out: list[dict[str, Any]] = []
        if loaded.task == "token-classification":
            out = [{"entities": [e.to_dict() for e in entities]} for entities in logits]
            return JSONResponse({"model": loaded.version.name, "version": loaded.version.version,
                                 "backend": loaded.predictor.backend, "predictions": out})  # fmt: skip
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
        if server.slots[server.default].current and server.slots[server.default].current.task != "text-classification":
            raise ApiError(404, "wrong_task", f"/predict answers with a label; the default model {server.default!r} "
                           f"finds entities. Use /v1/models/{server.default}/predict.")  # fmt: skip
        loaded, logits = await server.infer(server.default, [body.text])
        p = loaded.predictor.decide(loaded.predictor.activate(logits))[0]
        label = p.label if isinstance(p.label, str) else ",".join(p.label)
        return JSONResponse({"label": label, "score": p.score})

    @app.post("/models/{name}", tags=["predict"], dependencies=read, responses=predict_errors,
              response_model=list[list[LabelScore]] | list[HFEntity] | list[list[HFEntity]] | AnswerOut | list[AnswerOut]
              | list[GeneratedText])  # fmt: skip
    async def predict_hf(name: str, body: HFRequest, request: Request) -> JSONResponse:
        """Hugging Face Inference API compatible: text classification answers one list of {label, score} per
        input, most probable first; token classification answers {entity_group, score, word, start, end} per
        entity (a flat list for one input); text generation answers [{generated_text}] as
        text-generation-inference does. `huggingface_hub.InferenceClient` works unchanged."""
        slot = server.slot(name)
        if slot.current is not None and slot.current.task == "text-generation":
            from tunesmith.serving.generation import hf_text_generation

            return await hf_text_generation(server.generations, name, body, request)
        if isinstance(body.inputs, QuestionContext):
            params = body.parameters or HFParameters()
            loaded, answers = await server.answer(name, body.inputs.question, body.inputs.context)
            found = [{"answer": a.text, "score": a.score, "start": a.start, "end": a.end} for a in answers]
            return JSONResponse(found[: params.top_k] if params.top_k else found[0])
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        loaded, logits = await server.infer(name, texts)
        if loaded.task == "token-classification":
            groups = [
                [
                    {"entity_group": e.label, "score": e.score, "word": e.text, "start": e.start, "end": e.end}
                    for e in entities
                ]
                for entities in logits
            ]
            return JSONResponse(groups[0] if isinstance(body.inputs, str) else groups)
        params = body.parameters or HFParameters()
        probs = loaded.predictor.activate(logits, params.function_to_apply)
        labels = loaded.predictor.label_names
        k = min(params.top_k or len(labels), len(labels))
        out = []
        for row in probs:
            best = np.argsort(-row, kind="stable")[:k]
            out.append([{"label": labels[i], "score": float(row[i])} for i in best])
        return JSONResponse(out)

    @app.post("/v1/models/{name}/answer", tags=["predict"], response_model=AnswerResponse, dependencies=read,
              responses=predict_errors)  # fmt: skip
    async def answer(name: str, body: AnswerRequest) -> JSONResponse:
        """Extractive question answering: the best `top_k` spans of `context` that answer `question`."""
        loaded, answers = await server.answer(name, body.question, body.context)
        return JSONResponse({"model": loaded.version.name, "version": loaded.version.version,
                             "backend": loaded.predictor.backend,
                             "answers": [a.to_dict() for a in answers[: body.top_k]]})  # fmt: skip

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

    if "text-generation" in server.tasks.values():  # OpenAI-compatible routes only where they can answer
        from tunesmith.serving import generation

        app.include_router(generation.routes(server, read))
    generating = [name for name, task in server.tasks.items() if task == "text-generation"]
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
