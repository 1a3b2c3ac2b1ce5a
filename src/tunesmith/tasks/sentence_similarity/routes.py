"""The HTTP routes only embedding models answer, added to the server when it serves one:

- `POST /v1/embeddings`: OpenAI's embeddings API (`openai.embeddings.create` works unchanged, `encoding_format`
  float or base64); `dimensions` is accepted only when it is the model's own size: these models were not trained
  to be cut shorter (Matryoshka), so a shortened vector would be a worse one without saying so;
- `POST /embed`: text-embeddings-inference's shape, on the server's default model (or its only embedding model);
- `POST /v1/models/{name}/search`: the best matches of a query in the model's index (`tunesmith index`),
  re-embedded first when the served version is not the one that embedded it.

Every route embeds through the server's micro-batcher (`Server.infer`): batching by length, limits, the
prediction log, metrics, canary routing and auth are those of every other prediction route.
"""

from __future__ import annotations

import asyncio
import base64
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tunesmith.errors import DataError, NotFoundError
from tunesmith.tasks.sentence_similarity.encoder import TASK

if TYPE_CHECKING:  # the server imports every task; a task's routes know it only as the object they are given
    from tunesmith.serving.server import Server

MAX_TOP_K = 100


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str | Annotated[list[str], Field(min_length=1)] | list[int] | list[list[int]] = Field(
        description="A text or a list of texts (token-id input is refused: send the text).")
    model: str = Field(description="The served model's name.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="Only the model's own size is accepted.")
    user: str | None = None


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: str | Annotated[list[str], Field(min_length=1)]
    normalize: bool = True
    truncate: bool = True  # texts past the model's limit are always truncated
    truncation_direction: Literal["right", "Right"] = "right"
    prompt_name: None = None


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [{"required": ["query"]},
                                                                           {"required": ["queries"]}]})  # fmt: skip
    query: str | None = None
    queries: Annotated[list[str], Field(min_length=1)] | None = None
    top_k: Annotated[int, Field(ge=1, le=MAX_TOP_K)] = 10


def _embedding_model(server: Server, name: str) -> None:
    slot = server.slot(name)
    task = slot.current.task if slot.current else server.tasks.get(name)
    if task != TASK:
        raise NotFoundError(f"{name!r} is a {task} model; embeddings come from {TASK} models "
                       f"({', '.join(n for n, t in server.tasks.items() if t == TASK) or 'none served here'}).")  # fmt: skip


def _default_embedder(server: Server) -> str:
    embedders = [n for n, t in server.tasks.items() if t == TASK]
    if server.default in embedders:
        return server.default
    if len(embedders) == 1:
        return embedders[0]
    raise DataError(f"Several embedding models are served ({', '.join(embedders)}) and the default "
                   "is none of them: ask one by name at /v1/embeddings.")  # fmt: skip


def routes(server: Server, read: list[Any]) -> APIRouter:
    router = APIRouter()
    errors: dict[int | str, dict[str, Any]] = {
        404: {"description": "No such model served here, or it does not embed texts (or has no index to search)."},
        422: {"description": "The request is not valid; the body says why."},
        429: {"description": "Overloaded or over the rate limit: retry after Retry-After seconds."},
    }
    indexes: dict[str, Any] = {}
    building: dict[str, asyncio.Lock] = {}

    @router.post("/v1/embeddings", tags=["embeddings"], dependencies=read, responses=errors)
    async def embeddings(body: EmbeddingsRequest) -> JSONResponse:
        """OpenAI-compatible embeddings of one text or several, in order."""
        if isinstance(body.input, list) and body.input and not isinstance(body.input[0], str):
            raise DataError("Token-id input is not accepted: send the text itself.")
        _embedding_model(server, body.model)
        texts = [body.input] if isinstance(body.input, str) else list(body.input)  # type: ignore[arg-type]
        loaded, outputs = await server.infer(body.model, texts)
        dimension = len(outputs[0].vector)
        if body.dimensions is not None and body.dimensions != dimension:
            raise DataError(f"{body.model} makes {dimension}-dimension embeddings and "
                           "was not trained to be shortened; leave `dimensions` out (or send its own size).")  # fmt: skip
        data = [{"object": "embedding", "index": i, "embedding": _encoded(o.vector, body.encoding_format)}
                for i, o in enumerate(outputs)]  # fmt: skip
        tokens = sum(o.tokens for o in outputs)
        return JSONResponse({"object": "list", "data": data, "model": loaded.version.name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})  # fmt: skip

    @router.post("/embed", tags=["embeddings"], dependencies=read, responses=errors,
                 response_model=list[list[float]])  # fmt: skip
    async def embed(body: EmbedRequest) -> JSONResponse:
        """text-embeddings-inference compatible: one vector per input, on the default embedding model."""
        if not body.normalize:
            raise DataError("This server's embeddings are always L2-normalised (its "
                           "ONNX graph ends with the normalisation); leave `normalize` out or send true.")  # fmt: skip
        texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
        _, outputs = await server.infer(_default_embedder(server), texts)
        return JSONResponse([np.asarray(o.vector, dtype=np.float32).tolist() for o in outputs])

    @router.post("/v1/models/{name}/search", tags=["embeddings"], dependencies=read, responses=errors)
    async def search(name: str, body: SearchRequest) -> JSONResponse:
        """The `top_k` texts of the model's index most similar to the query (or to each of `queries`)."""
        if (body.query is None) == (body.queries is None):
            raise DataError("Send exactly one of `query` (a text) and `queries` (a list).")
        _embedding_model(server, name)
        texts = [body.query] if body.query is not None else list(body.queries or [])
        loaded, outputs = await server.infer(name, texts)
        index = await _index(name, loaded)
        hits = index.search(np.vstack([o.vector for o in outputs]), body.top_k)
        found = [[h.to_dict() for h in row] for row in hits]
        answer = {"model": loaded.version.name, "version": loaded.version.version,
                  "index": {"size": len(index), "kind": index.meta["kind"], "version": index.version}}  # fmt: skip
        answer |= {"hits": found[0]} if body.query is not None else {"results": found}
        return JSONResponse(answer)

    async def _index(name: str, loaded: Any) -> Any:
        from tunesmith.tasks.sentence_similarity.index import current

        cached = indexes.get(name)
        if cached is not None and cached.version == loaded.version.version:
            return cached
        async with building.setdefault(name, asyncio.Lock()):
            cached = indexes.get(name)
            if cached is None or cached.version != loaded.version.version:
                cached = await asyncio.to_thread(current, server.registry.home, name, loaded.version.version,
                                                 loaded.predictor.embed)  # fmt: skip
                indexes[name] = cached
        return cached

    return router


def _encoded(vector: np.ndarray, encoding: str) -> Any:
    if encoding == "base64":  # what the openai client asks for by default: little-endian float32 bytes
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return np.asarray(vector, dtype=np.float32).tolist()
