"""Operations: liveness, readiness with each model's state, Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tunesmith.serving.server import Server


def routes(server: Server, read: list[Any]) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", tags=["operations"], summary="Liveness: the process answers.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", tags=["operations"], summary="Readiness: every served model is loaded.",
             responses={503: {"description": "Still loading."}})  # fmt: skip
    async def readyz() -> JSONResponse:
        """Each model's state ("ready", "loading", or "failed" with the error, while the last good version keeps
        serving) and the hot-swap watcher's ("ok", or "failing" with its error and count)."""
        health = server.health()
        return JSONResponse(health, 200 if health["status"] == "ready" else 503)

    @router.get("/metrics", tags=["operations"], summary="Prometheus metrics.", response_class=Response)
    async def metrics() -> Response:
        # Rendering every series takes milliseconds that would stall all other requests on the event loop.
        text = await asyncio.get_running_loop().run_in_executor(None, generate_latest, server.metrics.registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    return router
