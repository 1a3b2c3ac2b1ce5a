"""Feedback (the `feedback` scope, between read and admin): the right answer to a served prediction."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from tunesmith.monitoring.feedback import store_feedback
from tunesmith.monitoring.predictions import find_prediction
from tunesmith.serving.schemas import ERRORS, ApiError, FeedbackRequest, FeedbackResponse, QuestionContext
from tunesmith.serving.server import Server, current_request
from tunesmith.tasks.catalog import TASKS


def _logged_input(raw: str | None, structured: bool) -> Any:
    if raw is None:
        return None
    return json.loads(raw) if structured else raw


def routes(server: Server, needs: list[Any]) -> APIRouter:
    router = APIRouter()
    errors: dict[int | str, dict[str, Any]] = {k: ERRORS[k] for k in (400, 401, 403, 404, 413, 422, 503)}

    @router.post("/v1/models/{name}/feedback", tags=["feedback"], status_code=201, response_model=FeedbackResponse,
                 dependencies=needs, responses=errors)  # fmt: skip
    async def feedback(name: str, body: FeedbackRequest) -> JSONResponse:
        """Say what the right answer was. Stored beside the prediction log with the key's name;
        `tunesmith feedback NAME --export FILE` turns it into training data."""
        slot = server.slot(name)
        loaded = slot.current
        if loaded is None:
            raise ApiError(503, "loading", f"{name!r} is still loading; retry shortly.", {"Retry-After": "1"})
        task = TASKS[loaded.task]
        home = server.registry.home
        given: Any = body.input
        item: Any = [m.model_dump() for m in given] if isinstance(given, list) else \
            given.model_dump() if isinstance(given, QuestionContext) else given
        predicted, version = None, None
        if body.request_id is not None:
            if server.predictions is not None:
                await asyncio.to_thread(server.predictions.flush, 2.0)  # it may still be on the writer's queue
            rows = await asyncio.to_thread(find_prediction, home, slot.name, body.request_id)
            if not rows:
                raise ApiError(404, "unknown_request", f"No logged prediction of {name!r} has request id "
                               f"{body.request_id!r} (the log keeps {server.settings.log_retention_days:g} days). "
                               "Send the input instead.")  # fmt: skip
            if body.index >= len(rows):
                raise ApiError(422, "invalid_request", f"Request {body.request_id!r} held {len(rows)} input(s); "
                               f"index {body.index} is out of range.")  # fmt: skip
            row = rows[body.index]
            predicted, version = row["output"], row["version"]
            logged = _logged_input(row["input"], task.request != "texts")
            if item is None:
                item = logged
            if item is None:
                raise ApiError(422, "input_needed", "This server logs only hashes of inputs: send the input with the "
                               "feedback.")  # fmt: skip
        elif item is None:
            raise ApiError(422, "invalid_request", "Name the prediction: send its request_id, or the input.")
        if task.request == "texts" and not isinstance(item, str):
            raise ApiError(422, "invalid_request", f"{name!r} reads texts: send the input as a string.")
        if task.request == "question" and not (isinstance(item, dict) and "question" in item):
            raise ApiError(422, "invalid_request", f"{name!r} answers questions: send the input as "
                           '{"question", "context"}.')  # fmt: skip
        answer = task.check_feedback(loaded.predictor.meta, item, body.answer)  # DataError: 422 with its message
        correct = task.is_correct(predicted, answer) if predicted is not None and task.judges_feedback else None
        info = current_request.get()
        caller = info.caller if info else ""
        feedback_id = await asyncio.to_thread(
            lambda: store_feedback(home, slot.name, request_id=body.request_id, caller=caller, input=item, answer=answer,
                                   predicted=predicted, version=version, correct=correct))  # fmt: skip
        server.live.observe_feedback(slot.name, correct)
        server.observe_feedback(slot.name, version, correct)
        return JSONResponse({"id": feedback_id, "model": slot.name, "request_id": body.request_id, "version": version,
                             "correct": correct, "answer": answer}, status_code=201)  # fmt: skip

    return router
