"""The served models: list them, show one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from tunesmith.serving.schemas import (
    ERRORS,
    ModelInfo,
    ModelList,
)
from tunesmith.serving.server import Server


def routes(server: Server, read: list[Any]) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models", tags=["models"], response_model=ModelList, dependencies=read,
             responses={k: ERRORS[k] for k in (401, 403)})  # fmt: skip
    async def list_models() -> ModelList:
        return ModelList(models=[server.describe(s) for s in server.slots.values()])

    @router.get("/v1/models/{name}", tags=["models"], response_model=ModelInfo, dependencies=read,
             responses={k: ERRORS[k] for k in (401, 403, 404)})  # fmt: skip
    async def show_model(name: str) -> ModelInfo:
        return server.describe(server.slot(name))

    return router
