"""The running server's state: served slots, loading and hot swaps, API keys, request checks."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from fastapi.security import HTTPAuthorizationCredentials

from tunesmith.artifact import read_export
from tunesmith.data import join_parts, joined_from, trained_text_column
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.export import timed
from tunesmith.monitoring.live import LiveMonitor
from tunesmith.monitoring.predictions import Answers, Prediction, PredictionLog
from tunesmith.monitoring.statistics import outputs_profile
from tunesmith.registry import SCOPES, ModelVersion, Registry, key_digest
from tunesmith.serving.batching import Loaded, Metrics, MicroBatcher, Slot, still_loading
from tunesmith.serving.schemas import ApiError, ModelInfo, TextInput
from tunesmith.serving.settings import ServeSettings, auth_enabled
from tunesmith.tasks.catalog import TASKS

log = logging.getLogger("tunesmith.server")
REFERENCE_ROWS = 500  # validation rows a loaded model answers for its live reference (in the background)
# The reference is computed in slices between requests: a request waits behind at most one slice. An embedding
# model's reference item (a query and 10 paragraphs) took 0.4 s, and 32 of them held requests 12 s (measured).
REFERENCE_SLICE_S = 0.05
REFERENCE_IDLE_S = 0.02  # a slice starts once no request has been queued or computing for this long, or,
REFERENCE_SHARE = 0.1  # under constant load, after a wait that keeps the reference to this share of the thread
KEYS_EVERY_S = 5.0  # API keys are re-read at least this often, whatever the watch interval: revocation works
MAX_BACKOFF_S = 60.0


def revision_of(version: ModelVersion) -> tuple[int, str, str | None]:
    """What identifies a loaded model: its number, its folder (unique per registration, so a new version is
    never taken for a deleted one) and its export."""
    export = read_export(version.path)
    return version.version, version.path.name, export["created_at"] if export else None


def _glibc() -> Any:
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): its allocator behaves otherwise; nothing to tune
        return None


def fix_mmap_threshold() -> None:
    """Keep glibc's mmap threshold at its 128 KiB default. glibc raises it each time a large mmapped block is
    freed, after which the big buffers of the next model and its batches come from the heap and are kept
    there when freed: in bench/soak.py each hot swap under load then left 12-19 MB behind (+19% RSS over
    10 minutes); with the threshold fixed, RSS stayed flat at the same throughput."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD; setting it turns the dynamic adjustment off


def release_memory() -> None:
    """After a swap: collect the old model and hand freed heap memory back to the OS."""
    import gc

    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@dataclass
class RequestInfo:
    """Who is asking and since when: set by the middleware, read where a prediction is logged."""

    request_id: str
    started: float  # time.perf_counter() when the request arrived
    caller: str = ""  # the API key's name ("" with auth off)
    sticky: str = ""  # who the traffic split keeps on one variant: X-Tunesmith-User, else the key, else the address
    variant: str | None = None  # which variant answered (the response's X-Tunesmith-Variant)


@dataclass
class Variant:
    """A second version a served name answers with: a canary share of its traffic, or a shadow copy."""

    config: dict[str, Any]  # the registry's canary row: alias, share, mode
    slot: Slot
    batcher: MicroBatcher
    # What the automatic rollback judges, since the split started: the variant's answers and failures, its
    # time and production's over the same period, and (shadow) agreement with what was returned.
    answered: int = 0
    failed: int = 0
    seconds: float = 0.0
    primary_answered: int = 0
    primary_seconds: float = 0.0
    agree: int = 0
    disagree: int = 0
    # Users' feedback on the answers each side gave ([right, judged]): what the canary is rolled back on when its
    # answers are wrong more often than production's, though they come fast and without errors.
    feedback: list[int] = field(default_factory=lambda: [0, 0])
    primary_feedback: list[int] = field(default_factory=lambda: [0, 0])

    @property
    def label(self) -> str:
        return str(self.config["alias"])


def rollback_reason(variant: Variant, limits: Any) -> tuple[str, str] | None:
    """(criterion, why) when a variant has crossed one of the rollback limits (`ServeSettings.canary_*`)."""
    tried = variant.answered + variant.failed
    compared = variant.agree + variant.disagree
    if tried >= limits.canary_min_requests and variant.failed / tried > limits.canary_max_error_rate:
        return "error_rate", f"{variant.failed} of {tried} requests failed (limit {limits.canary_max_error_rate:.0%})"
    if variant.answered >= limits.canary_min_requests and variant.primary_answered:
        ratio = (variant.seconds / variant.answered) / max(variant.primary_seconds / variant.primary_answered, 1e-9)
        if ratio > limits.canary_max_latency_ratio:
            return "latency", f"{ratio:.1f}x production's mean latency (limit {limits.canary_max_latency_ratio:g}x)"
    if compared >= limits.canary_min_requests and variant.disagree / compared > limits.canary_max_disagreement:
        return "disagreement", (f"disagrees with production on {variant.disagree} of {compared} answers "
                                f"(limit {limits.canary_max_disagreement:.0%})")  # fmt: skip
    worse = feedback_worse(variant.feedback, variant.primary_feedback, limits.canary_min_feedback)
    return ("feedback_accuracy", worse) if worse else None


def feedback_worse(canary: list[int], primary: list[int], minimum: int, alpha: float = 0.01) -> str | None:
    """Why the canary's answers are judged wrong more often than production's by users' feedback ([right,
    judged] each; one-sided Fisher exact test at `alpha`), or None: too little feedback, or within noise."""
    if canary[1] < minimum or primary[1] < minimum:
        return None
    from scipy.stats import fisher_exact

    table = [[canary[0], canary[1] - canary[0]], [primary[0], primary[1] - primary[0]]]
    p = float(fisher_exact(table, alternative="less")[1])
    if p >= alpha:
        return None
    return (f"feedback found {canary[0]} of {canary[1]} of its answers right against production's {primary[0]} of "
            f"{primary[1]} (Fisher p={p:.2g} < {alpha:g})")  # fmt: skip


def bucket(name: str, sticky: str) -> float:
    """A caller's fixed place in [0, 1) for one model: the same caller always lands on the same variant."""
    import hashlib

    return int(hashlib.sha256(f"{name}\0{sticky}".encode()).hexdigest()[:8], 16) / 2**32


current_request: ContextVar[RequestInfo | None] = ContextVar("tunesmith_request", default=None)


class RateLimiter:
    """A token bucket per client identity (API key name, or address with auth off); the least recently seen
    are forgotten beyond `capacity` identities, so memory stays bounded whoever calls."""

    def __init__(self, per_second: float, burst: int, capacity: int = 10_000) -> None:
        self.rate, self.burst, self.capacity = per_second, burst, capacity
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def retry_after(self, identity: str) -> float:
        """0 if the request may go now (and counts it), else seconds until one token is back."""
        now = time.monotonic()
        tokens, last = self.buckets.pop(identity, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self.buckets[identity] = (tokens - 1 if wait == 0 else tokens, now)
        if len(self.buckets) > self.capacity:
            self.buckets.popitem(last=False)
        return wait


class Server:
    """State of one running server: settings, registry, served slots, keys and metrics."""

    def __init__(self, settings: ServeSettings, registry: Registry) -> None:
        if not settings.models:
            raise ConfigError("Nothing to serve: name at least one model, e.g. `tunesmith serve support`.")
        self.settings, self.registry = settings, registry
        self.metrics = Metrics()
        self.auth = auth_enabled(settings)
        self.slots: dict[str, Slot] = {}
        self.tasks: dict[str, str] = {}  # task of each served name, as resolved at start
        self.generations: Any = None  # `serving.generation.Generations`, when a text-generation model is served
        for ref in settings.models:
            version = registry.resolve(ref)  # unknown names fail here, before the port is bound
            if version.name in self.slots:
                raise ConfigError(f"{version.name!r} is named twice; serve one reference per model name.")
            if version.task not in TASKS:
                raise ConfigError(f"{ref!r} is a {version.task} model; this server handles {', '.join(TASKS)}.")
            self.tasks[version.name] = version.task
            self.slots[version.name] = Slot(version.name, ref, settings.per_model.get(version.name, settings.batching))
        unknown = set(settings.per_model) - set(self.slots)
        if unknown:
            raise ConfigError(f"per_model names models that are not served: {', '.join(sorted(unknown))}.")
        default = settings.default_model or next(iter(self.slots))
        self.default = default.partition("@")[0]
        if self.default not in self.slots:
            raise ConfigError(f"default_model {default!r} is not among the served models ({', '.join(self.slots)}).")
        if settings.protect_ops and not self.auth:
            raise ConfigError("protect_ops needs auth: serve with --auth on (and a key), or leave protect_ops off.")
        # Keys are read with auth off too: admin routes always need an admin key (loopback is no trust
        # boundary: any web page the user opens can send requests to it).
        self.keys: dict[str, tuple[str, frozenset[str]]] = registry.key_table()
        self.keys_checked = time.monotonic()
        self.limiter = (
            RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst) if settings.rate_limit_per_s else None
        )
        self.watcher = {"status": "starting", "failures": 0, "error": None, "last_ok": None}
        if self.auth and not self.keys:
            raise ConfigError(
                f"Auth is on (binding {settings.host}) but no API keys exist. Create one with "
                "`tunesmith keys create NAME --scope read`, or pass --auth off for a trusted network."
            )
        self.live = LiveMonitor(self.metrics.registry)
        self.predictions: PredictionLog | None = None
        if settings.log_predictions:
            self.predictions = PredictionLog(registry.home, inputs=settings.log_inputs, max_queue=settings.log_queue,
                                             retention_days=settings.log_retention_days,
                                             max_bytes=int(settings.log_max_mb * 1024 * 1024))  # fmt: skip
            self.predictions.on_drop = self.metrics.log_dropped.inc
            self.predictions.on_rows = self.live.observe
            self.metrics.log_queue.set_function(self.predictions.queue.qsize)
        for name in self.slots:
            self.live.watch(name)
        self.inference = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.loader = ThreadPoolExecutor(1, thread_name_prefix="loader")
        self.batchers = {name: MicroBatcher(slot, self.inference, self.metrics) for name, slot in self.slots.items()}
        self._tasks: list[asyncio.Task[Any]] = []
        self._profiling: set[asyncio.Task[Any]] = set()
        self.variants: dict[str, Variant] = {}  # served name -> its canary or shadow, while a split is in force
        self._retired: list[Variant] = []
        self._shadows: set[asyncio.Task[Any]] = set()
        self._swap_lock = asyncio.Lock()

    # Loading and swapping run in the loader thread: serving goes on while a model loads.

    def _load(self, version: ModelVersion) -> Loaded:
        revision = revision_of(version)
        task = TASKS[version.task]
        loaded = Loaded(version, task.load(version.path, self.settings.backend, self.settings.threads), revision)
        loaded.compute([task.warm_up], 1)  # the first run allocates; do it before taking traffic
        return loaded

    async def refresh(self, name: str | None = None) -> None:
        """Load whatever each served reference names now, if it is not what is loaded."""
        loop = asyncio.get_running_loop()
        async with self._swap_lock:
            for slot in [self.slots[name]] if name else list(self.slots.values()):
                try:
                    version = await loop.run_in_executor(self.loader, self.registry.resolve, slot.ref)
                    revision = await loop.run_in_executor(self.loader, revision_of, version)
                    if slot.current is not None and slot.current.revision == revision:
                        slot.status, slot.error = "ready", None
                        continue
                    loaded = await loop.run_in_executor(self.loader, self._load, version)
                except Exception as exc:
                    # Whatever broke (the database, a damaged export, the model itself), the last good model
                    # keeps serving and the slot says what is wrong; the next look tries again.
                    known = isinstance(exc, TunesmithError | OSError)
                    log.error(json.dumps({"event": "load_failed", "model": slot.name, "error": str(exc),
                                          "kind": type(exc).__name__}), exc_info=not known)  # fmt: skip
                    slot.status, slot.error = "failed", f"{type(exc).__name__}: {exc}"[:500]
                    continue
                previous, slot.current, slot.status, slot.error = slot.current, loaded, "ready", None
                before = previous.version.version if previous else None
                if previous is not None:
                    self.metrics.version.remove(slot.name, previous.predictor.backend)
                    self.metrics.swaps.labels(slot.name).inc()
                    del previous  # the old model goes once its last batch has finished with it
                    await loop.run_in_executor(self.loader, release_memory)
                self.metrics.version.labels(slot.name, loaded.predictor.backend).set(version.version)
                profiling = asyncio.create_task(self._profile(slot.name, loaded))
                self._profiling.add(profiling)  # a reference to the task until it ends (asyncio keeps weak ones)
                profiling.add_done_callback(self._profiling.discard)
                log.info(json.dumps({
                    "event": "model_loaded", "model": slot.name, "version": version.version,
                    "backend": loaded.predictor.backend, "previous": before,
                }))  # fmt: skip

    async def _watch(self) -> None:
        """Re-check served references and API keys, forever: every failure is caught, logged and retried with
        backoff, so hot swaps and key revocations never stop for the life of the process."""
        interval = self.settings.watch_interval_s
        every = min(interval, KEYS_EVERY_S) if interval > 0 else KEYS_EVERY_S
        delay = every
        while True:
            await asyncio.sleep(delay)
            try:
                if interval > 0:
                    await self.refresh()
                    await self.refresh_variants()
                    await self.judge_variants()
                await self._reload_keys()
                failed = [s.name for s in self.slots.values() if s.status == "failed"]
                if failed:
                    raise RuntimeError(f"loading failed for {', '.join(failed)}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.watcher.update(status="failing", failures=int(self.watcher["failures"] or 0) + 1,
                                    error=f"{type(exc).__name__}: {exc}"[:500])  # fmt: skip
                delay = min(MAX_BACKOFF_S, max(delay * 2, every))
                log.error(json.dumps({"event": "watch_failed", "error": self.watcher["error"], "retry_in_s": delay}))
                continue
            self.watcher.update(status="ok", error=None, last_ok=time.time())
            delay = every

    async def _profile(self, name: str, loaded: Loaded) -> None:
        """The live gauges' reference: the model's own answers on (a sample of) its validation split, computed
        on the inference thread between requests, after the model already serves."""
        task = TASKS[loaded.task]
        try:
            items, answers = await asyncio.get_running_loop().run_in_executor(
                self.loader, task.reference, loaded.version.path, "validation")  # fmt: skip
            items, answers = items[:REFERENCE_ROWS], answers[:REFERENCE_ROWS] if answers is not None else None
            outputs: list[dict[str, Any]] = []
            start, size, seconds = 0, 1, 0.0
            while start < len(items):
                await self._lull(seconds * (1 - REFERENCE_SHARE) / REFERENCE_SHARE)
                chunk = items[start : start + size]
                raw, seconds = await asyncio.get_running_loop().run_in_executor(
                    self.inference, timed, partial(loaded.compute, chunk, 32))  # fmt: skip
                outputs += task.log_outputs(loaded.predictor, raw)
                start += len(chunk)
                size = max(1, min(32, int(len(chunk) * REFERENCE_SLICE_S / max(seconds, 1e-6))))
            correct = [task.is_correct(o, a) for o, a in zip(outputs, answers, strict=True)] if answers else None
            if self.slots[name].current is loaded:  # not replaced meanwhile
                self.live.set_profile(name, outputs_profile(outputs, correct) if outputs else None)
        except Exception:  # the gauges go without a reference; serving is untouched
            log.exception(json.dumps({"event": "reference_failed", "model": name}))

    async def _lull(self, at_most: float) -> None:
        """Wait until no request has been queued or computing on any model for REFERENCE_IDLE_S, or `at_most`."""
        now = time.monotonic()
        deadline, quiet_since = now + max(at_most, REFERENCE_IDLE_S), now
        while (now := time.monotonic()) < deadline:
            if any(s.queued_texts or s.computing for s in self.slots.values()):
                quiet_since = now
            elif now - quiet_since >= REFERENCE_IDLE_S:
                return
            await asyncio.sleep(0.005)

    def log_answers(self, name: str, loaded: Loaded, items: list[Any], outputs: Any, variant: str | None = None) -> None:
        """Put a request's answers on the prediction log's queue (never blocks): the log's writer thread describes
        them and feeds the live window; with the log off, the window is fed here."""
        task = TASKS[loaded.task]
        if variant is not None and variant.startswith("shadow:"):
            pass  # a shadow's answers go to the log, not into the live window of what users were told
        elif self.predictions is None:
            try:
                self.live.observe(name, task.log_outputs(loaded.predictor, outputs))
            except Exception:  # monitoring must never fail a request it could not describe
                log.exception(json.dumps({"event": "log_outputs_failed", "model": name}))
            return
        info = current_request.get()
        request = Prediction(info.request_id if info else uuid.uuid4().hex, name, loaded.version.version,
                             variant or self.slots[name].ref.partition("@")[2] or "latest", loaded.task,
                             (time.perf_counter() - info.started) * 1000 if info else 0.0, None, {},
                             info.caller if info else "")  # fmt: skip
        self.predictions.record(Answers(request, list(items), partial(task.log_outputs, loaded.predictor, outputs)))

    async def _reload_keys(self) -> None:
        self.keys_checked = time.monotonic()
        self.keys = await asyncio.get_running_loop().run_in_executor(self.loader, self.registry.key_table)

    async def _first_load(self) -> None:
        await self.refresh()
        await self.refresh_variants()

    async def refresh_variants(self) -> None:
        """Start, change or end each served name's traffic split as the registry says, loading the variant's
        version beside the primary one; an ended variant finishes what it was asked, then lets its model go."""
        loop = asyncio.get_running_loop()
        table = await loop.run_in_executor(self.loader, self.registry.canary_table)
        for name, primary in self.slots.items():
            wanted = table.get(name)
            current = self.variants.get(name)
            if wanted is None:
                if current is not None:
                    self._retire(self.variants.pop(name))
                continue
            wanted = {k: wanted[k] for k in ("alias", "share", "mode")}
            variant = current if current is not None and current.config == wanted else None
            if variant is None:
                slot = Slot(name, f"{name}@{wanted['alias']}", primary.batching)
                variant = Variant(wanted, slot, MicroBatcher(slot, self.inference, self.metrics))
            try:
                version = await loop.run_in_executor(self.loader, self.registry.resolve, variant.slot.ref)
                revision = await loop.run_in_executor(self.loader, revision_of, version)
                if variant.slot.current is None or variant.slot.current.revision != revision:
                    variant.slot.current = await loop.run_in_executor(self.loader, self._load, version)
                    variant.slot.status = "ready"
            except Exception as exc:  # the split waits for a loadable variant; the primary serves everything
                log.error(json.dumps({"event": "variant_load_failed", "model": name, "ref": variant.slot.ref,
                                      "error": str(exc)}))  # fmt: skip
                continue
            if variant is not current:
                variant.slot.worker = asyncio.create_task(variant.batcher.run())
                self.variants[name] = variant
                if current is not None:
                    self._retire(current)
                log.info(json.dumps({"event": "variant_started", "model": name, **wanted,
                                     "version": variant.slot.current.version.version}))  # fmt: skip

    async def judge_variants(self) -> None:
        """Automatic rollback: a canary failing too often, too slow, or found wrong more often than production by
        users' feedback, or a shadow disagreeing too much with production, is ended — the split returns to 100 %
        production — and the event is recorded in the registry, counted on /metrics and shown by `canary status`."""
        for name, variant in list(self.variants.items()):
            reason = rollback_reason(variant, self.settings)
            if reason is None:
                continue
            detail = f"{variant.config['mode']} of @{variant.label} rolled back: {reason[1]}"
            await asyncio.get_running_loop().run_in_executor(self.loader, self.registry.stop_canary, name,
                                                             "rolled_back", detail)  # fmt: skip
            if self.variants.get(name) is variant:
                self._retire(self.variants.pop(name))
            self.metrics.canary_rollbacks.labels(name, reason[0]).inc()
            log.warning(json.dumps({"event": "canary_rolled_back", "model": name, "criterion": reason[0],
                                    "detail": detail}))  # fmt: skip

    def observe_feedback(self, name: str, version: int | None, correct: bool | None) -> None:
        """Count a feedback answer against the side of the split whose answer it judges."""
        variant = self.variants.get(name)
        if variant is None or correct is None or variant.slot.current is None:
            return
        primary = self.slots[name].current
        if version == variant.slot.current.version.version:
            counts = variant.feedback
        elif primary is not None and version == primary.version.version:
            counts = variant.primary_feedback
        else:
            return
        counts[0] += int(correct)
        counts[1] += 1

    def _retire(self, variant: Variant) -> None:
        """No new request reaches it; queued ones are answered; then its model is released."""
        self._retired.append(variant)

        async def drain() -> None:
            while not variant.slot.queue.empty() or variant.slot.queued_texts:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # a batch taken off the queue keeps its own reference to the model
            variant.slot.current = None
            await asyncio.get_running_loop().run_in_executor(self.loader, release_memory)

        task = asyncio.create_task(drain())
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)
        log.info(json.dumps({"event": "variant_ended", "model": variant.slot.name, "alias": variant.label}))

    def route(self, name: str) -> tuple[Slot, MicroBatcher, str, Variant | None]:
        """(the slot that answers, its batcher, the variant's name, a shadow to copy the request to)."""
        slot = self.slot(name)
        primary = (slot, self.batchers[slot.name], slot.ref.partition("@")[2] or "latest", None)
        variant = self.variants.get(slot.name)
        if variant is None or variant.slot.current is None:
            return primary
        if variant.config["mode"] == "shadow":
            return primary[0], primary[1], primary[2], variant
        info = current_request.get()
        if bucket(slot.name, info.sticky if info else "") < float(variant.config["share"]):
            return variant.slot, variant.batcher, variant.label, None
        return primary

    def _shadow(self, name: str, shadow: Variant, items: list[Any], answered: Loaded, outputs: Any) -> None:
        """Copy a request to the shadow variant in the background: its answers are logged and compared with the
        ones returned, never returned themselves."""
        info = current_request.get()

        async def run() -> None:
            try:
                loaded, shadowed = await shadow.batcher.submit(items, self.settings.request_timeout_s)
            except Exception:  # a shadow's trouble is its own: the request was already answered
                self.metrics.variant_errors.labels(name, "shadow").inc()
                shadow.failed += 1
                return
            task = TASKS[loaded.task]
            mine, theirs = task.log_outputs(answered.predictor, outputs), task.log_outputs(loaded.predictor, shadowed)
            same = sum(_decision(a) == _decision(b) for a, b in zip(mine, theirs, strict=True))
            shadow.agree += same
            shadow.disagree += len(mine) - same
            self.metrics.shadow_agreement.labels(name, "agree").inc(same)
            self.metrics.shadow_agreement.labels(name, "disagree").inc(len(mine) - same)
            self.log_answers(name, loaded, items, shadowed, f"shadow:{shadow.label}")

        if info is not None:
            info = RequestInfo(info.request_id, info.started, info.caller, info.sticky)

        async def with_context() -> None:
            current_request.set(info)
            await run()

        task = asyncio.create_task(with_context())
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def start(self) -> None:
        if self.predictions is not None:
            self.predictions.start()
        for batcher in self.batchers.values():
            batcher.slot.worker = asyncio.create_task(batcher.run())
        self._tasks.append(asyncio.create_task(self._first_load()))
        self._tasks.append(asyncio.create_task(self._watch()))  # always: keys are re-read even without hot swaps

    async def stop(self) -> None:
        # uvicorn has already waited for open requests; nothing is queued any more.
        variants = [v.slot.worker for v in [*self.variants.values(), *self._retired] if v.slot.worker]
        for task in self._tasks + list(self._profiling) + list(self._shadows) + variants + \
                [s.worker for s in self.slots.values() if s.worker]:
            task.cancel()
        self.inference.shutdown(wait=True)
        if self.generations is not None:
            self.generations.pool.shutdown(wait=True)
        self.loader.shutdown(wait=False, cancel_futures=True)
        if self.predictions is not None:
            self.predictions.close()

    def ready(self) -> bool:
        return all(s.current is not None for s in self.slots.values())

    def health(self) -> dict[str, Any]:
        """What /readyz shows: each model's state and the watcher's."""
        watch = self._tasks[1] if len(self._tasks) > 1 else None
        watcher = dict(self.watcher)
        if watch is not None and watch.done():
            watcher["status"] = "stopped"  # cannot happen by design; shown rather than hidden if it does
        details = {
            s.name: {"status": s.status, "version": s.current.version.version if s.current else None,
                     **({"error": s.error} if s.error else {})}
            for s in self.slots.values()
        }  # fmt: skip
        return {"status": "ready" if self.ready() else "loading", "models": {s.name: s.status for s in self.slots.values()},
                "details": details, "watcher": watcher}  # fmt: skip

    async def check_key(self, credentials: HTTPAuthorizationCredentials | None, scope: str) -> str:
        """Check the bearer key for `scope`; return who is asking (the key's name, or "" with auth off)."""
        if not self.auth and scope != "admin":
            return ""
        if credentials is None or credentials.scheme.lower() != "bearer":
            hint = "" if self.auth else " Admin routes need an admin key even with auth off: " \
                "`tunesmith keys create NAME --scope admin`."
            raise ApiError(401, "unauthenticated", f"Send an API key: 'Authorization: Bearer <key>'.{hint}",
                           {"WWW-Authenticate": "Bearer"})  # fmt: skip
        digest = key_digest(credentials.credentials)
        if digest not in self.keys and time.monotonic() - self.keys_checked > 1.0:
            await self._reload_keys()  # a key created after start works within a second (re-read at most once a second)
        entry = self.keys.get(digest)
        if entry is None:
            raise ApiError(401, "invalid_key", "Unknown API key. Create one with `tunesmith keys create`.",
                           {"WWW-Authenticate": "Bearer"})  # fmt: skip
        if max((SCOPES.index(s) for s in entry[1] if s in SCOPES), default=-1) < SCOPES.index(scope):  # each holds those below
            raise ApiError(403, "forbidden", f"The key {entry[0]!r} lacks the {scope!r} scope this route needs.")
        return entry[0]

    def check_rate(self, identity: str) -> None:
        if self.limiter is None:
            return
        wait = self.limiter.retry_after(identity)
        if wait > 0:
            raise ApiError(429, "rate_limited", f"More than {self.settings.rate_limit_per_s:g} requests per second; "
                           f"retry in {wait:.2f} s.", {"Retry-After": str(max(1, round(wait + 0.5)))})  # fmt: skip

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
        return [valid_unicode(t) for t in texts]

    def join_inputs(self, slot: Slot, inputs: Sequence[TextInput]) -> list[str]:
        """The texts as the served model reads them: an input given as parts (a list in the model's column order,
        or an object keyed by column name) joined as its training file's columns were (`data.join_parts`)."""
        if all(isinstance(item, str) for item in inputs):
            return list(inputs)  # type: ignore[arg-type]
        if slot.current is None:
            raise still_loading(slot)
        columns = text_columns(slot.current.predictor.meta)
        texts = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                texts.append(item)
                continue
            if len(columns) < 2:
                raise ApiError(422, "not_several_columns", f"Text {i} is sent in parts, but {slot.name!r} reads one "
                               "text, not several columns; send it as a string.")  # fmt: skip
            if isinstance(item, dict):
                missing = [c for c in columns if c not in item]
                unknown = [k for k in item if k not in columns]
                if missing or unknown:
                    raise ApiError(422, "wrong_columns", f"Text {i} names the columns {list(item)}; {slot.name!r} "
                                   f"reads {columns}" + (f" (missing: {missing})" if missing else "")
                                   + (f" (not read: {unknown})" if unknown else "") + ".")  # fmt: skip
                item = [item[c] for c in columns]
            if len(item) != len(columns):
                raise ApiError(422, "wrong_columns", f"Text {i} has {len(item)} parts; {slot.name!r} reads "
                               f"{len(columns)} columns, in this order: {columns}.")  # fmt: skip
            texts.append(join_parts(item))
        return texts

    def _require_request(self, slot: Slot, request: str, hint: str) -> None:
        task = slot.current.task if slot.current else None
        if task is not None and TASKS[task].request != request:
            # 404: this route of that model does not exist (the request itself may be well-formed).
            raise ApiError(404, "wrong_task", f"{slot.name!r} is a {task} model; {hint}")

    async def answer(self, name: str, question: str, context: str) -> tuple[Loaded, Any]:
        """(the version that answered, its best answers to `question` in `context`)"""
        slot, batcher, variant, shadow = self.route(name)
        self._require_request(slot, "question", f"send texts to /v1/models/{name}/predict instead.")
        question, context = self.check_texts([question, context])
        loaded, answers, variant = await self._submit(slot, batcher, variant, [(question, context)])
        self.mark_answered(slot.name, variant)
        self.log_answers(slot.name, loaded, [{"question": question, "context": context}], answers, variant)
        if shadow is not None:
            self._shadow(slot.name, shadow, [(question, context)], loaded, answers)
        return loaded, answers[0]

    async def infer(self, name: str, inputs: Sequence[TextInput]) -> tuple[Loaded, Any]:
        """(the version that answered, its output for `inputs`: logits, or entity lists for token classification);
        an input may be a text's parts (`join_inputs`)."""
        slot, batcher, variant, shadow = self.route(name)
        self._require_request(slot, "texts", f'ask it with {{"question", "context"}} at /v1/models/{name}/answer.')  # fmt: skip
        texts = self.check_texts(self.join_inputs(slot, inputs))
        loaded, outputs, variant = await self._submit(slot, batcher, variant, texts)
        self.mark_answered(slot.name, variant)
        for label in TASKS[loaded.task].counted_labels(loaded.predictor, outputs):
            self.metrics.predictions.labels(slot.name, label).inc()
        self.log_answers(slot.name, loaded, texts, outputs, variant)
        if shadow is not None:
            self._shadow(slot.name, shadow, texts, loaded, outputs)
        return loaded, outputs

    async def _submit(self, slot: Slot, batcher: MicroBatcher, variant: str, items: list[Any]) -> tuple[Loaded, Any, str]:
        """Run `items` on the routed slot; a canary that fails a request (its model errs, or it cannot answer in
        time) is counted against it and the request is answered by production, so no user sees its failure."""
        started = time.perf_counter()
        split = self.variants.get(slot.name)
        canary = split if split is not None and split.slot is slot else None
        try:
            loaded, outputs = await batcher.submit(items, self.settings.request_timeout_s)
        except ApiError as exc:
            if canary is None or exc.status < 500:
                raise
            canary.failed += 1
            self.metrics.variant_errors.labels(slot.name, variant).inc()
            primary = self.slots[slot.name]
            loaded, outputs = await self.batchers[slot.name].submit(items, self.settings.request_timeout_s)
            return loaded, outputs, primary.ref.partition("@")[2] or "latest"
        seconds = time.perf_counter() - started
        if canary is not None:
            canary.answered += 1
            canary.seconds += seconds
        elif split is not None:
            split.primary_answered += 1
            split.primary_seconds += seconds
        return loaded, outputs, variant

    def mark_answered(self, name: str, variant: str) -> None:
        """Count an answer for its variant and name the variant in the response header and the log."""
        self.metrics.variant_requests.labels(name, variant).inc()
        info = current_request.get()
        if info is not None:
            info.variant = variant

    def describe(self, slot: Slot) -> ModelInfo:
        loaded = slot.current
        meta = loaded.predictor.meta if loaded else {}
        return ModelInfo(
            name=slot.name,
            ref=slot.ref,
            version=loaded.version.version if loaded else None,
            backend=loaded.predictor.backend if loaded else None,
            status=slot.status,
            task=loaded.task if loaded else self.tasks.get(slot.name, ""),
            labels=meta.get("label_names", []),
            multi_label=bool(meta.get("multi_label", False)),
            text_columns=text_columns(meta),
            aliases=loaded.version.aliases if loaded else [],
            default=slot.name == self.default,
        )


def _decision(output: dict[str, Any]) -> Any:
    """What two answers must share to agree: the label, the answer span, or the entities."""
    if "label" in output:
        return output["label"]
    if "answer" in output:
        return output["answer"]
    return [(e["start"], e["end"], e["label"]) for e in output.get("entities", [])]


def text_columns(meta: dict[str, Any]) -> list[str]:
    """The columns of its training file a model reads as one text, in order (empty when it records none)."""
    name = trained_text_column(meta)
    return joined_from(name) if name else []


def valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # JSON may carry lone surrogates ("\\ud800"); the tokenizer cannot take them
        return text.encode("utf-8", "replace").decode("utf-8")
