"""Administration (admin scope, always): reload a served model, move and roll back aliases."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Body

from tunesmith.gating import check_promotion
from tunesmith.serving.schemas import (
    ERRORS,
    AliasName,
    AliasRequest,
    ModelInfo,
)
from tunesmith.serving.server import Server


def routes(server: Server, admin: list[Any]) -> APIRouter:
    router = APIRouter()

    admin_errors: dict[int | str, dict[str, Any]] = {k: ERRORS[k] for k in (400, 401, 403, 404, 409, 422)}

    @router.post("/v1/models/{name}/reload", tags=["admin"], response_model=ModelInfo, dependencies=admin,
              responses=admin_errors)  # fmt: skip
    async def reload(name: str) -> ModelInfo:
        """Re-resolve the served reference now and swap to what it names, if that changed."""
        slot = server.slot(name)
        await server.refresh(slot.name)
        return server.describe(slot)

    @router.put("/v1/models/{name}/aliases/{alias}", tags=["admin"], response_model=ModelInfo, dependencies=admin,
             responses=admin_errors)  # fmt: skip
    async def set_alias(name: str, alias: AliasName, body: Annotated[AliasRequest, Body()]) -> ModelInfo:
        """Point an alias at a version (as `tunesmith models promote`); a server serving it swaps at once."""
        slot = server.slot(name)

        def promote() -> None:
            check_promotion(server.registry, f"{name}@{body.version}", alias, body.force, 'send "force": true')
            server.registry.promote(f"{name}@{body.version}", alias)

        await asyncio.get_running_loop().run_in_executor(server.loader, promote)
        await server.refresh(slot.name)
        return server.describe(slot)

    @router.post("/v1/models/{name}/aliases/{alias}/rollback", tags=["admin"], response_model=ModelInfo,
              dependencies=admin, responses=admin_errors)  # fmt: skip
    async def rollback(name: str, alias: AliasName) -> ModelInfo:
        """Move an alias back to its previous version (as `tunesmith models rollback`)."""
        slot = server.slot(name)
        await asyncio.get_running_loop().run_in_executor(server.loader, server.registry.rollback, name, alias)
        await server.refresh(slot.name)
        return server.describe(slot)

    return router
