"""OpenAI-compatible text generation: `POST /v1/chat/completions` and `POST /v1/completions`, whole or streamed
as server-sent events, so the official `openai` client works by pointing its `base_url` at this server.

Generation does not micro-batch: each request runs `generate` (with its KV cache) in a thread of its own,
at most `max_concurrent_generations` at a time; requests beyond that wait in line, and beyond
`max_queued_generations` waiting they are refused with 429. Limits (prompt characters, stop strings,
then prompt tokens and answer length) are checked before anything costly runs (422); the chat template
and the tokenizer run off the event loop. A whole answer stops when its client goes away or at
`generation_timeout_s` (504); a streamed one when its client goes away.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel, ConfigDict, Field

from tunesmith.serving.schemas import ERRORS, MAX_SEED, ApiError
from tunesmith.serving.server import valid_unicode
from tunesmith.tasks.catalog import TASKS


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients may send name, tool fields, ...
    role: Literal["system", "user", "assistant"]
    content: str


class _Sampling(BaseModel):
    # Strict types: a seed of `false` or a stream of `0` is a client bug to report, not to guess around.
    model_config = ConfigDict(extra="allow", strict=True)  # unknown OpenAI parameters (logprobs, user, ...) are ignored
    model: str = Field(description="Name of a served text-generation model.")
    max_tokens: Annotated[int, Field(ge=1)] | None = Field(None, description="Most tokens to generate.")
    temperature: Annotated[float, Field(ge=0, le=2)] = Field(1.0, description="0: greedy; higher: more random.")
    top_p: Annotated[float, Field(gt=0, le=1)] = Field(1.0, description="Nucleus sampling mass.")
    stop: str | Annotated[list[str], Field(max_length=4)] | None = Field(None, description="Up to 4 stop strings.")
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = Field(
        None, description="Seed for sampling (0 to 2^53-1): the same seed gives the same answer."
    )
    stream: bool = Field(False, strict=True, description="Send the answer as server-sent events while it is generated.")
    n: Annotated[int, Field(ge=1, le=1)] = Field(1, description="Only 1 answer per request is generated.")


class ChatRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = Field(None, description="Alias of max_tokens.")


class CompletionRequest(_Sampling):
    prompt: str = Field(description="Text to continue (no chat template).")


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """Errors on the OpenAI routes come in OpenAI's shape: its clients show `error.message` to the user."""

    error: OpenAIErrorDetail
    request_id: str | None = None


class GenerationMetrics:
    def __init__(self, registry: Any) -> None:
        self.tokens = Counter("tunesmith_generated_tokens", "Tokens generated.", ["model"], registry=registry)
        self.first_token = Histogram(
            "tunesmith_time_to_first_token_seconds", "Time from request to the first generated token.", ["model"],
            registry=registry, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self.speed = Histogram(
            "tunesmith_generation_tokens_per_second", "Tokens per second of each generation.", ["model"],
            registry=registry, buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000),
        )  # fmt: skip
        self.waiting = Gauge("tunesmith_generation_queue", "Generations waiting for a free slot.", ["model"],
                             registry=registry)  # fmt: skip
        self.cancelled = Counter("tunesmith_generations_cancelled", "Generations stopped because the client went "
                                 "away.", ["model"], registry=registry)  # fmt: skip


class Generations:
    """Admission (limits, concurrency) and execution of generation requests for one server."""

    def __init__(self, server: Any) -> None:
        self.server = server
        settings = server.settings
        self.pool = ThreadPoolExecutor(settings.max_concurrent_generations, thread_name_prefix="generate")
        self.slots = asyncio.Semaphore(settings.max_concurrent_generations)
        self.waiting = 0
        self.metrics = GenerationMetrics(server.metrics.registry)

    def generator(self, name: str) -> tuple[Any, str]:
        """(the loaded model that answers, its variant): a canary split routes generations as it routes every
        other request, sticky per user. A shadow is not given a copy: generating twice would halve what the
        cores give users, and free text has no answer to compare by; judge a generation candidate as a canary."""
        slot, _batcher, variant, _shadow = self.server.route(name)
        loaded = slot.current
        if loaded is None:
            raise ApiError(503, "loading", f"{name!r} is still loading; retry shortly.", {"Retry-After": "1"})
        if TASKS[loaded.task].request != "chat":
            raise ApiError(404, "wrong_task", f"{name!r} is a {loaded.task} model; send it texts at "
                           f"/v1/models/{name}/predict. Completions need a text-generation model.")  # fmt: skip
        self.server.mark_answered(name, variant)  # named before a stream's first byte: the header goes out then
        return loaded, variant

    def admit(self, generator: Any, ids: list[int], max_tokens: int | None) -> int:
        settings = self.server.settings
        if len(ids) > settings.max_prompt_tokens:
            raise ApiError(422, "prompt_too_long", f"The prompt has {len(ids)} tokens; at most "
                           f"{settings.max_prompt_tokens} are accepted.")  # fmt: skip
        wanted = max_tokens or settings.default_max_tokens
        if wanted > settings.max_new_tokens:
            raise ApiError(422, "max_tokens_too_large", f"max_tokens {wanted} is over this server's limit of "
                           f"{settings.max_new_tokens}.")  # fmt: skip
        context = getattr(generator.model.config, "max_position_embeddings", None)
        if context and len(ids) + wanted > context:
            raise ApiError(422, "context_exceeded", f"prompt ({len(ids)} tokens) + max_tokens ({wanted}) exceed the "
                           f"model's context of {context} tokens.")  # fmt: skip
        if self.slots.locked() and self.waiting >= settings.max_queued_generations:
            raise ApiError(429, "busy", "All generation slots are busy and the line is full; retry shortly.",
                           {"Retry-After": "1"})  # fmt: skip
        return wanted

    @asynccontextmanager
    async def _turn(self, name: str) -> AsyncIterator[None]:
        """Hold one generation slot; while waiting for it, count in the queue gauge (also if the client leaves)."""
        self.waiting += 1
        self.metrics.waiting.labels(name).set(self.waiting)
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
            self.metrics.waiting.labels(name).set(self.waiting)
        try:
            yield
        finally:
            self.slots.release()

    def check_input(self, texts: list[str], stop: list[str] | None) -> list[str]:
        """Cheap limits first, before the chat template or the tokenizer see anything: prompt characters and
        stop-string lengths. Returns the texts with lone surrogates (invalid in UTF-8) replaced."""
        settings = self.server.settings
        size = sum(len(t) for t in texts)
        if size > settings.max_prompt_chars:
            raise ApiError(422, "prompt_too_long", f"The prompt has {size} characters; at most "
                           f"{settings.max_prompt_chars} are accepted.")  # fmt: skip
        for s in stop or []:
            if len(s) > settings.max_stop_chars:
                raise ApiError(422, "stop_too_long", f"A stop string has {len(s)} characters; at most "
                               f"{settings.max_stop_chars} are accepted.")  # fmt: skip
        return [valid_unicode(t) for t in texts]

    async def prompt_ids(self, generator: Any, messages: list[dict[str, str]] | None = None,
                         prompt: str | None = None) -> list[int]:  # fmt: skip
        # Rendering a template and tokenizing 50k characters takes milliseconds the event loop cannot spare.
        ids = await asyncio.to_thread(generator.prompt_ids, messages, prompt)
        if not ids:  # an empty prompt, as OpenAI takes it: generate from the start-of-text token
            tokenizer = generator.tokenizer
            start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            ids = [start] if start is not None else []
        if not ids:
            raise ApiError(422, "empty_prompt", "The prompt is empty and the model has no start token; send some text.")
        return ids

    async def run(self, name: str, generator: Any, ids: list[int], options: dict[str, Any],
                  request: Any = None) -> Any:  # fmt: skip
        """A whole answer. It is stopped at its next token when the client goes away or the deadline passes
        (504); either way the slot is held until the model has stopped."""
        started = time.perf_counter()
        deadline = started + self.server.settings.generation_timeout_s
        cancel = threading.Event()
        late = left = False
        async with self._turn(name):
            future = asyncio.get_running_loop().run_in_executor(
                self.pool, lambda: generator.generate(ids, cancel=cancel, **options)
            )  # fmt: skip
            while not future.done():
                await asyncio.wait({future}, timeout=max(0.01, min(0.25, deadline - time.perf_counter())))
                if future.done() or cancel.is_set():
                    continue
                if time.perf_counter() > deadline:
                    late = True
                    cancel.set()
                elif request is not None and await request.is_disconnected():
                    left = True
                    cancel.set()
            with anyio.CancelScope(shield=True):
                result = await future
        self._count(name, result.completion_tokens, time.perf_counter() - started, None)
        if left:
            self.metrics.cancelled.labels(name).inc()
        if late:
            raise ApiError(504, "timeout", f"The answer was not ready within {self.server.settings.generation_timeout_s:g}"
                           " s; ask for fewer max_tokens, or stream it.")  # fmt: skip
        return result

    async def stream(self, name: str, generator: Any, ids: list[int], options: dict[str, Any]) -> AsyncIterator[Any]:
        started = time.perf_counter()
        async with self._turn(name):
            cancel = threading.Event()
            pieces = generator.stream(ids, cancel=cancel, **options)
            first: float | None = None
            done = object()
            pending: Future | None = None
            finished = False
            try:
                while True:
                    pending = self.pool.submit(next, pieces, done)
                    piece = await asyncio.wrap_future(pending)
                    pending = None
                    if piece is done:
                        finished = True
                        break
                    if first is None and isinstance(piece, str):
                        first = time.perf_counter() - started
                        self.metrics.first_token.labels(name).observe(first)
                    if not isinstance(piece, str):
                        self._count(name, piece.completion_tokens, time.perf_counter() - started, first)
                    yield piece
            finally:
                if not finished:
                    # The client left (or the route failed) mid-answer: stop the model at its next token, and
                    # hold the slot until it has stopped, so the concurrency limit stays true.
                    cancel.set()
                    with anyio.CancelScope(shield=True):
                        last = await asyncio.wrap_future(self.pool.submit(_finish, pending, pieces))
                    # Tokens before the cancellation: a scrape that sees the cancellation sees its tokens too.
                    self._count(name, last.completion_tokens if last is not None else 0,
                                time.perf_counter() - started, first)  # fmt: skip
                    self.metrics.cancelled.labels(name).inc()

    def _count(self, name: str, tokens: int, seconds: float, first: float | None) -> None:
        self.metrics.tokens.labels(name).inc(tokens)
        if seconds > 0 and tokens:
            self.metrics.speed.labels(name).observe(tokens / seconds)
        if first is None and tokens:  # a whole answer: its first token came roughly one token's time after the prompt
            self.metrics.first_token.labels(name).observe(seconds / max(1, tokens))


async def hf_text_generation(generations: Generations, name: str, body: Any, request: Any = None) -> JSONResponse:
    """`POST /models/NAME` for a text-generation model, as text-generation-inference answers it (what
    `huggingface_hub.InferenceClient.text_generation` parses): `[{"generated_text": ...}]`, one per prompt."""
    prompts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    if not isinstance(prompts, list):  # a {question, context} pair: that route of this model does not exist
        raise ApiError(404, "wrong_task", f"{name!r} is a text-generation model; send `inputs` as a prompt string.")
    if body.stream:
        raise ApiError(422, "no_stream_here", f"Streaming is served in OpenAI's shape: POST /v1/completions with "
                       f'{{"model": "{name}", "prompt": ..., "stream": true}}.')  # fmt: skip
    loaded, variant = generations.generator(name)
    generator = loaded.predictor
    params = body.parameters
    get = (lambda key: getattr(params, key)) if params is not None else (lambda _key: None)
    prompts = generations.check_input(prompts, get("stop"))
    # As text-generation-inference: greedy unless asked to sample, and a temperature or top_p asks for it.
    sample = bool(get("do_sample")) or (get("temperature") or 0) > 0 or get("top_p") is not None
    answers = []
    for prompt in prompts:  # a list of prompts (as the transformers pipeline takes) is answered in turn
        ids = await generations.prompt_ids(generator, prompt=prompt)
        options = {"max_tokens": generations.admit(generator, ids, get("max_new_tokens")),
                   "temperature": (get("temperature") or 1.0) if sample else 0.0, "top_p": get("top_p") or 1.0,
                   "stop": get("stop"), "seed": get("seed")}  # fmt: skip
        result = await generations.run(name, generator, ids, options, request)
        generations.server.log_answers(name, loaded, [[{"role": "user", "content": prompt}]], [result], variant)
        out: dict[str, Any] = {"generated_text": (prompt if get("return_full_text") else "") + result.text}
        if get("details"):
            out["details"] = {"finish_reason": "eos_token" if result.finish_reason == "stop" else "length",
                              "generated_tokens": result.completion_tokens, "seed": get("seed")}  # fmt: skip
        answers.append(out)
    return JSONResponse(answers)


def _finish(pending: Future | None, pieces: Iterator[Any]) -> Any:
    """Wait for the piece being computed, run the (cancelled, so short) rest of the generation out, and return
    the finished `Generation` (None if the generation failed)."""
    last = None
    try:
        if pending is not None:
            wait_for([pending])
            last = pending.result()
        for piece in pieces:
            last = piece
    except Exception:  # the answer is not going anywhere; a failure was already seen or is moot
        return None
    return last if not isinstance(last, str) else None


def _stops(body: _Sampling) -> list[str] | None:
    return [body.stop] if isinstance(body.stop, str) else body.stop


def _options(body: _Sampling, max_tokens: int) -> dict[str, Any]:
    stop = _stops(body)
    return {"max_tokens": max_tokens, "temperature": body.temperature, "top_p": body.top_p, "stop": stop,
            "seed": body.seed}  # fmt: skip


def _usage(result: Any) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}  # fmt: skip


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def routes(server: Any, dependencies: list[Any]) -> APIRouter:
    """The OpenAI-compatible routes, bound to `server` (its slots, limits and metrics)."""
    router = APIRouter(tags=["generate"], dependencies=dependencies)
    generations = Generations(server)
    server.generations = generations
    errors: dict[int | str, dict[str, Any]] = {
        k: {"model": OpenAIError, "description": ERRORS[k]["description"]}
        for k in (400, 401, 403, 404, 408, 413, 422, 429, 503, 504)
    }
    errors[200] = {"description": "The answer (JSON), or with `stream` its pieces as server-sent events.",
                   "content": {"text/event-stream": {"schema": {  # one event: `data: <a JSON chunk>` or `data: [DONE]`
                       "type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}}}}  # fmt: skip

    @router.post("/v1/chat/completions", responses=errors)
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        """OpenAI chat completions: the model's chat template renders `messages`, the answer comes back whole or,
        with `stream`, as `chat.completion.chunk` events ending with `data: [DONE]`."""
        loaded, variant = generations.generator(body.model)
        generator = loaded.predictor
        contents = generations.check_input([m.content for m in body.messages], _stops(body))
        messages = [{"role": m.role, "content": c} for m, c in zip(body.messages, contents, strict=True)]
        ids = await generations.prompt_ids(generator, messages)
        if body.max_completion_tokens and body.max_tokens:  # both given: the alias wins, the other must be valid too
            generations.admit(generator, ids, body.max_tokens)
        options = _options(body, generations.admit(generator, ids, body.max_completion_tokens or body.max_tokens))
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": ident, "created": created, "model": body.model}
        if not body.stream:
            result = await generations.run(body.model, generator, ids, options, request)
            server.log_answers(body.model, loaded, [messages], [result], variant)
            return JSONResponse({**head, "object": "chat.completion", "choices": [{
                "index": 0, "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason, "logprobs": None}], "usage": _usage(result)})  # fmt: skip

        async def events() -> AsyncIterator[str]:
            chunk = {**head, "object": "chat.completion.chunk"}
            yield _sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                              "finish_reason": None}]})  # fmt: skip
            async for piece in generations.stream(body.model, generator, ids, options):
                if isinstance(piece, str):
                    yield _sse({**chunk, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
                else:
                    server.log_answers(body.model, loaded, [messages], [piece], variant)
                    yield _sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": piece.finish_reason}],
                                "usage": _usage(piece)})  # fmt: skip
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @router.post("/v1/completions", responses=errors)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        """OpenAI (legacy) completions: `prompt` is continued as it is, without the chat template."""
        loaded, variant = generations.generator(body.model)
        generator = loaded.predictor
        (prompt,) = generations.check_input([body.prompt], _stops(body))
        ids = await generations.prompt_ids(generator, prompt=prompt)
        options = _options(body, generations.admit(generator, ids, body.max_tokens))
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": body.model,
                "object": "text_completion"}  # fmt: skip
        if not body.stream:
            result = await generations.run(body.model, generator, ids, options, request)
            server.log_answers(body.model, loaded, [[{"role": "user", "content": prompt}]], [result], variant)
            return JSONResponse({**head, "choices": [{"index": 0, "text": result.text, "logprobs": None,
                                                      "finish_reason": result.finish_reason}], "usage": _usage(result)})  # fmt: skip

        async def events() -> AsyncIterator[str]:
            async for piece in generations.stream(body.model, generator, ids, options):
                if isinstance(piece, str):
                    yield _sse({**head, "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]})
                else:
                    server.log_answers(body.model, loaded, [[{"role": "user", "content": prompt}]], [piece], variant)
                    yield _sse({**head, "choices": [{"index": 0, "text": "", "logprobs": None,
                                                     "finish_reason": piece.finish_reason}], "usage": _usage(piece)})  # fmt: skip
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return router
