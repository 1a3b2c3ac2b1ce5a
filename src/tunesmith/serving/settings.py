"""Server settings: what `tunesmith serve` takes as flags or from a YAML file."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunesmith.errors import ConfigError


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
        4096, ge=1, description="Texts waiting for the model beyond which requests are refused with 429."
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
    max_concurrent_generations: int = Field(
        1, ge=1, le=64, description="text-generation: generations running at once (1: each answer at full speed; "
        "more: more tokens/s in total, each stream slower)."
    )
    max_queued_generations: int = Field(32, ge=0, description="text-generation: requests waiting beyond which 429.")
    max_new_tokens: int = Field(1024, ge=1, description="text-generation: largest max_tokens a request may ask.")
    default_max_tokens: int = Field(256, ge=1, description="text-generation: max_tokens when a request gives none.")
    max_prompt_tokens: int = Field(4096, ge=1, description="text-generation: longest prompt accepted, in tokens.")
    watch_interval_s: float = Field(
        5.0, ge=0, description="How often aliases and exports are re-checked for hot swaps (0: never; API keys are "
        "still re-read every few seconds, so a revoked key stops working)."
    )
    max_concurrent_requests: int = Field(
        512, ge=1, description="Requests in progress at once beyond which new ones get 429 at once (not queued)."
    )
    max_connections: int = Field(
        2048, ge=1, description="Open connections beyond which the server refuses new ones (uvicorn's limit)."
    )
    body_timeout_s: float = Field(
        10.0, gt=0, description="A request body not fully received within this time gets 408 (slow clients)."
    )
    rate_limit_per_s: float | None = Field(
        None, gt=0, description="Requests per second allowed per API key (per client address with auth off); "
        "beyond it 429 with Retry-After. None: no limit."
    )
    rate_limit_burst: int = Field(20, ge=1, description="Requests a key may send at once before the rate applies.")
    protect_ops: bool = Field(
        False, description="Require a key (read scope) for /metrics, /docs and /openapi.json too; needs auth on."
    )
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Host header values accepted on admin routes when auth is off, besides "
        "localhost, 127.0.0.1, [::1] and the bind address (a check against DNS rebinding)."
    )
    max_prompt_chars: int = Field(
        50_000, ge=1, description="text-generation: most characters in a prompt (all messages), checked before "
        "the template is rendered or anything tokenized."
    )
    log_predictions: bool = Field(
        True, description="Record every prediction in the prediction log (<home>/logs/NAME/, SQLite segments an hour "
        "each), off the request path: `tunesmith logs` exports it, `tunesmith monitor` reads it."
    )
    log_inputs: Literal["masked", "text", "hash"] = Field(
        "masked", description="How the log keeps inputs: with personal data masked ([EMAIL], [PHONE], ...), as "
        "sent, or as a SHA-256 hash only (then drift on the texts cannot be measured, only on the answers)."
    )
    log_queue: int = Field(
        10_000, ge=1, description="Predictions waiting to be written beyond which new ones are dropped (and "
        "counted in tunesmith_prediction_log_dropped): logging never slows or fails a request."
    )
    log_retention_days: float = Field(30.0, gt=0, description="Log segments older than this are deleted.")
    log_max_mb: float = Field(
        1024.0, gt=0, description="A model's log beyond this size loses its oldest segments (the current one stays)."
    )
    canary_min_requests: int = Field(
        50, ge=1, description="Requests a canary (or shadow) answers before the automatic rollback judges it."
    )
    canary_max_error_rate: float = Field(
        0.05, ge=0, le=1, description="A canary failing more of its requests is rolled back (its failed requests are "
        "answered by production, so none fails for the user)."
    )
    canary_max_latency_ratio: float = Field(
        2.0, gt=0, description="A canary whose mean latency is more than this times production's is rolled back."
    )
    canary_max_disagreement: float = Field(
        0.2, ge=0, le=1, description="A shadow disagreeing with production on more of its answers is rolled back."
    )
    canary_min_feedback: int = Field(
        20, ge=1, description="Feedback answers on the canary's answers, and on production's, before the two are "
        "compared; a canary judged right less often beyond noise (one-sided Fisher exact test, p < 0.01) is rolled back."
    )
    max_stop_chars: int = Field(200, ge=1, description="text-generation: longest stop string accepted.")
    generation_timeout_s: float = Field(
        300.0, gt=0, description="text-generation: a whole (non-streamed) answer not ready by then is stopped: 504."
    )


def is_public(host: str) -> bool:
    """Whether binding `host` makes the server reachable from other machines."""
    host = host.strip("[]")
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a host name other than localhost: assume it is reachable from elsewhere


def auth_enabled(settings: ServeSettings) -> bool:
    if settings.auth != "auto":
        return settings.auth == "on"
    return is_public(settings.host)


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
