"""The prediction server: FastAPI + uvicorn over registered models, with micro-batching and hot swaps.

Request path: an ASGI middleware gives every request an id, enforces the body-size limit, times it,
counts it for Prometheus and writes one JSON access-log line. A prediction route validates the texts
against the limits and hands them to the model's `MicroBatcher`, which groups concurrent requests into
one forward pass (sorted by token length, so a long text never pads a batch of short ones) on a single
inference thread: ONNX Runtime uses the cores itself, and the event loop keeps serving HTTP meanwhile.

Hot swap: a watcher re-resolves each served reference (e.g. `support@production`) every few seconds.
When it names another version, or the version gets a new export, the new model is loaded and warmed in
the background and then replaces the old one in a single assignment. A batch already running keeps the
predictor object it started with, so requests in flight finish on the old version and none fail.
"""

from typing import Any

from tunesmith.serving.settings import BatchSettings, ServeSettings, auth_enabled, load_settings


def __getattr__(name: str) -> Any:
    # The app pulls in FastAPI and ONNX Runtime; the CLI only needs the settings to build its flags.
    if name in ("create_app", "serve"):
        from tunesmith.serving import app

        return getattr(app, name)
    raise AttributeError(f"module 'tunesmith.serving' has no attribute {name!r}")


__all__ = ["BatchSettings", "ServeSettings", "auth_enabled", "create_app", "load_settings", "serve"]
