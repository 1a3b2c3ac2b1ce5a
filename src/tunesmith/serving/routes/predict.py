"""Predictions: the v1 API, the original Flask service's `/predict`, the Hugging Face Inference API shape
(`/models/NAME`) and extractive answers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tunesmith.serving.generation import hf_text_generation
from tunesmith.serving.schemas import (
    ERRORS,
    AnswerOut,
    AnswerRequest,
    AnswerResponse,
    ApiError,
    GeneratedText,
    HFEntity,
    HFParameters,
    HFRequest,
    LabelScore,
    PredictRequest,
    PredictResponse,
    QuestionContext,
    SeedRequest,
)
from tunesmith.serving.server import Server
from tunesmith.tasks.catalog import TASKS


def routes(server: Server, read: list[Any]) -> APIRouter:
    router = APIRouter()

    predict_errors: dict[int | str, dict[str, Any]] = {k: ERRORS[k] for k in (400, 401, 403, 404, 408, 413, 422, 429, 503, 504)}

    @router.post("/v1/models/{name}/predict", tags=["predict"], response_model=PredictResponse, dependencies=read,
              responses=predict_errors)  # fmt: skip
    async def predict(name: str, body: PredictRequest) -> JSONResponse:
        """Classify one text (`text`) or several (`texts`); answers keep the order of the texts."""
        texts = [body.text] if body.text is not None else list(body.texts or [])
        loaded, outputs = await server.infer(name, texts)
        out = TASKS[loaded.task].serve_outputs(loaded.predictor, outputs, body.all_scores)
        return JSONResponse({"model": loaded.version.name, "version": loaded.version.version,
                             "backend": loaded.predictor.backend, "predictions": out})  # fmt: skip

    @router.post("/predict", tags=["predict"], response_model=LabelScore, dependencies=read, responses=predict_errors)
    async def predict_seed(body: SeedRequest) -> JSONResponse:
        """The default model, in the request and response shape of the original Flask service."""
        current = server.slots[server.default].current
        if current is not None and not TASKS[current.task].answers_with_label:
            raise ApiError(404, "wrong_task", f"/predict answers with a label; the default model {server.default!r} "
                           f"is a {current.task} model. Use /v1/models/{server.default}/predict.")  # fmt: skip
        loaded, outputs = await server.infer(server.default, [body.text])
        p = TASKS[loaded.task].serve_outputs(loaded.predictor, outputs)[0]
        label = p["label"] if isinstance(p["label"], str) else ",".join(p["label"])
        return JSONResponse({"label": label, "score": p["score"]})

    @router.post("/models/{name}", tags=["predict"], dependencies=read, responses=predict_errors,
              response_model=list[list[LabelScore]] | list[HFEntity] | list[list[HFEntity]] | AnswerOut | list[AnswerOut]
              | list[GeneratedText])  # fmt: skip
    async def predict_hf(name: str, body: HFRequest, request: Request) -> JSONResponse:
        """Hugging Face Inference API compatible: text classification answers one list of {label, score} per
        input, most probable first; token classification answers {entity_group, score, word, start, end} per
        entity (a flat list for one input); text generation answers [{generated_text}] as
        text-generation-inference does. `huggingface_hub.InferenceClient` works unchanged."""
        slot = server.slot(name)
        if slot.current is not None and TASKS[slot.current.task].request == "chat":
            return await hf_text_generation(server.generations, name, body, request)
        if isinstance(body.inputs, QuestionContext):
            params = body.parameters or HFParameters()
            loaded, answers = await server.answer(name, body.inputs.question, body.inputs.context)
            found = [{"answer": a.text, "score": a.score, "start": a.start, "end": a.end} for a in answers]
            return JSONResponse(found[: params.top_k] if params.top_k else found[0])
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        loaded, outputs = await server.infer(name, texts)
        params = body.parameters or HFParameters()
        return JSONResponse(TASKS[loaded.task].hf_outputs(loaded.predictor, outputs, isinstance(body.inputs, str),
                                                          params.top_k, params.function_to_apply))  # fmt: skip

    @router.post("/v1/models/{name}/answer", tags=["predict"], response_model=AnswerResponse, dependencies=read,
              responses=predict_errors)  # fmt: skip
    async def answer(name: str, body: AnswerRequest) -> JSONResponse:
        """Extractive question answering: the best `top_k` spans of `context` that answer `question`."""
        loaded, answers = await server.answer(name, body.question, body.context)
        return JSONResponse({"model": loaded.version.name, "version": loaded.version.version,
                             "backend": loaded.predictor.backend,
                             "answers": [a.to_dict() for a in answers[: body.top_k]]})  # fmt: skip

    return router
