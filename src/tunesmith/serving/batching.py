"""Metrics, the loaded-model slots, and the micro-batcher that groups concurrent requests."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tunesmith.registry import ModelVersion
from tunesmith.serving.schemas import ApiError
from tunesmith.serving.settings import BatchSettings
from tunesmith.tasks.base import Predictor
from tunesmith.tasks.catalog import TASKS

log = logging.getLogger("tunesmith.server")


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
        self.variant_requests = Counter("tunesmith_variant_requests", "Requests answered, by model and variant.",
                                        ["model", "variant"], registry=r)  # fmt: skip
        self.variant_errors = Counter("tunesmith_variant_errors", "Requests a variant failed.", ["model", "variant"],
                                      registry=r)  # fmt: skip
        self.canary_rollbacks = Counter("tunesmith_canary_rollbacks", "Traffic splits ended by the automatic rollback, "
                                        "by the criterion crossed.", ["model", "criterion"], registry=r)  # fmt: skip
        self.shadow_agreement = Counter("tunesmith_shadow_agreement", "Shadow answers that agree with the returned "
                                        "ones (or not).", ["model", "outcome"], registry=r)  # fmt: skip
        self.log_queue = Gauge("tunesmith_prediction_log_queue", "Predictions waiting to be written to the log.",
                               registry=r)  # fmt: skip
        self.log_dropped = Counter("tunesmith_prediction_log_dropped", "Predictions not logged: the log's queue was "
                                   "full.", registry=r)  # fmt: skip


@dataclass
class Loaded:
    """One loaded model version; replaced as a whole on a hot swap."""

    version: ModelVersion
    predictor: Predictor  # what its task's `load` returned
    revision: tuple[int, str, str | None]  # `server.revision_of`: what a hot swap compares

    @property
    def task(self) -> str:
        return self.version.task

    def compute(self, texts: list[str], batch_size: int) -> Any:
        """One forward pass over `texts` by the model's task: logits, entity lists, answers, generations; indexable
        per item either way, so the batcher can hand each request its slice."""
        return TASKS[self.task].serve_compute(self.predictor, texts, batch_size)


def still_loading(slot: Slot) -> ApiError:
    """The 503 for a request that reaches a model before it has loaded."""
    return ApiError(503, "model_loading", f"Model {slot.name!r} is still loading; retry shortly.", {"Retry-After": "1"})


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
    error: str | None = None  # why the last load failed (the last good model, if any, keeps serving)
    queue: asyncio.Queue[_Pending] = field(default_factory=asyncio.Queue)
    queued_texts: int = 0
    computing: int = 0  # batches on the inference thread or waiting for it
    worker: asyncio.Task[None] | None = None


class MicroBatcher:
    """Groups concurrent requests of one model into forward passes on the shared inference thread."""

    def __init__(self, slot: Slot, executor: ThreadPoolExecutor, metrics: Metrics) -> None:
        self.slot, self.executor, self.metrics = slot, executor, metrics

    async def submit(self, texts: list[str], timeout: float) -> tuple[Loaded, np.ndarray]:
        slot = self.slot
        if slot.current is None:
            raise still_loading(slot)
        if slot.queued_texts + len(texts) > slot.batching.max_queue:
            raise ApiError(429, "overloaded", f"{slot.queued_texts} texts are already waiting for {slot.name!r}; "
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
            slot.computing += 1
            try:
                logits = await loop.run_in_executor(self.executor, loaded.compute, texts, slot.batching.max_batch_size)
            except Exception as exc:  # a model failure answers its own requests, never stops the worker
                log.exception("prediction failed")
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(ApiError(500, "model_error", f"The model failed: {exc}"))
                continue
            finally:
                slot.computing -= 1
            start = 0
            for p in live:
                if not p.future.done():
                    p.future.set_result((loaded, logits[start : start + len(p.texts)]))
                start += len(p.texts)
