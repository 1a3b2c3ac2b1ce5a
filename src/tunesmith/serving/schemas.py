"""Request and response bodies of the HTTP API, and the errors it answers with."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from tunesmith.tasks.question_answering.predictor import MAX_ANSWERS

# The largest integer every JSON parser holds exactly (JavaScript's Number.MAX_SAFE_INTEGER): a larger seed
# would silently become another number on its way through a client.
MAX_SEED = 2**53 - 1


# A text as a model trained on several columns reads it can also be sent as its parts: a list in the model's
# column order or an object keyed by column name (GET /v1/models names the columns); the server joins them as
# training joined the file's columns.
TextInput = str | Annotated[list[str], Field(min_length=1)] | dict[str, str]


class PredictRequest(BaseModel):
    """Exactly one of `text` and `texts` (the schema says so with oneOf, so generated clients know)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"oneOf": [{"required": ["text"]}, {"required": ["texts"]}]}
    )
    text: TextInput | SkipJsonSchema[None] = Field(
        None, description="One text to classify; for a model that reads several columns (its `text_columns`), "
        'also its parts: ["title", "body"] in that order or {"title": ..., "body": ...}.',
    )  # fmt: skip
    texts: Annotated[list[TextInput], Field(min_length=1)] | SkipJsonSchema[None] = Field(
        None, description="Several texts to classify (each as `text` takes it), answered in the same order."
    )
    all_scores: StrictBool = Field(False, description="Also return every label's score.")

    @field_validator("text", "texts", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:  # only values actually sent reach this; leave a field out instead of sending null
            raise ValueError("must not be null; leave the field out instead")
        return value

    @model_validator(mode="after")
    def _one_input(self) -> PredictRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError('give exactly one of "text" (a string) or "texts" (a list of strings)')
        return self


class LabelScore(BaseModel):
    label: str
    score: float


class PredictionOut(BaseModel):
    label: str | list[str] = Field(description="The predicted label (a list of labels for multi-label models).")
    score: float
    scores: dict[str, float] | None = None


class EntityOut(BaseModel):
    label: str
    text: str
    start: int = Field(description="Character offset of the entity's first character.")
    end: int = Field(description="Character offset just after the entity (text[start:end]).")
    score: float


class EntitiesOut(BaseModel):
    entities: list[EntityOut]


class PredictResponse(BaseModel):
    model: str
    version: int
    backend: str
    predictions: list[PredictionOut | EntitiesOut] = Field(
        description="Per text: a label and score (text classification) or entities (token classification)."
    )


class HFEntity(BaseModel):
    """The Hugging Face Inference API's token-classification element (aggregation 'simple')."""

    entity_group: str
    score: float
    word: str
    start: int
    end: int


class SeedRequest(BaseModel):
    text: str = Field(description="The text to classify.")


class HFParameters(BaseModel):
    top_k: int | None = Field(None, ge=1, description="Return only the k most probable labels.")

    @field_validator("top_k", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        if isinstance(value, bool | str):  # lax validation would read true as 1 and "3" as 3
            raise ValueError("must be an integer")
        return value

    function_to_apply: Literal["sigmoid", "softmax", "none"] | None = None
    # text generation (the text-generation-inference shape that `InferenceClient.text_generation` sends)
    # strict: lax parsing would take "3" for 3 and 0 for false, which the published schema does not allow
    max_new_tokens: int | None = Field(None, ge=1, strict=True, description="text-generation: most tokens to generate.")
    do_sample: bool | None = Field(None, strict=True, description="text-generation: sample instead of greedy decoding.")
    temperature: float | None = Field(None, ge=0, le=2, strict=True, description="text-generation: sampling temperature.")
    top_p: float | None = Field(None, gt=0, le=1, strict=True, description="text-generation: nucleus sampling mass.")
    stop: Annotated[list[str], Field(max_length=4)] | None = Field(None, description="text-generation: stop strings.")
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = Field(
        None, strict=True, description="text-generation: sampling seed (0 to 2^53-1)."
    )
    return_full_text: bool | None = Field(None, strict=True, description="text-generation: the prompt, then the answer.")
    details: bool | None = Field(None, strict=True, description="text-generation: add finish_reason and token counts.")


class QuestionContext(BaseModel):
    question: str = Field(description="The question.")
    context: str = Field(description="The text that holds the answer.")


class HFRequest(BaseModel):
    """The Hugging Face Inference API's request: a text or texts (classification, token classification), or a
    question with its context (question answering)."""

    inputs: str | Annotated[list[str], Field(min_length=1)] | QuestionContext = Field(
        description="A text, a list of texts, or {question, context}."
    )
    parameters: HFParameters | None = None
    options: dict[str, Any] | None = None
    stream: bool = Field(False, strict=True, description="text-generation: not supported here; stream at /v1/completions.")


class AnswerRequest(QuestionContext):
    model_config = ConfigDict(extra="forbid")
    top_k: int = Field(1, ge=1, le=MAX_ANSWERS, description="How many answers, best first.")


class GenerationDetails(BaseModel):
    finish_reason: Literal["eos_token", "length"]
    generated_tokens: int
    seed: int | None = None


class GeneratedText(BaseModel):
    generated_text: str
    details: GenerationDetails | None = None


class AnswerOut(BaseModel):
    answer: str = Field(description='The answer span ("" when the model finds none).')
    start: int = Field(description="Character offset of the answer in the context (-1 for no answer).")
    end: int
    score: float


class AnswerResponse(BaseModel):
    model: str
    version: int
    backend: str
    answers: list[AnswerOut]


class ModelInfo(BaseModel):
    name: str
    ref: str
    version: int | None
    backend: str | None
    status: Literal["loading", "ready", "failed"]
    task: str
    labels: list[str]
    multi_label: bool
    text_columns: list[str] = Field(
        default_factory=list, description="The columns of its training file the model reads as one text, in order."
    )
    aliases: list[str]
    default: bool


class ModelList(BaseModel):
    models: list[ModelInfo]


class AliasRequest(BaseModel):
    version: int = Field(ge=1, description="Version the alias should point at.")
    force: bool = Field(False, strict=True, description="Move production to a version without a passing regression "
                        "gate (`tunesmith gate`).")


AliasName = Annotated[str, PathParam(pattern=r"^[A-Za-z][A-Za-z0-9._-]{0,63}$", description="e.g. production")]


class ChatMessage(BaseModel):
    role: str
    content: str


class FeedbackRequest(BaseModel):
    """The right answer to a served prediction, named by its request id or by its input."""

    model_config = ConfigDict(extra="forbid")
    request_id: str | None = Field(None, max_length=64, description="The X-Request-ID of the prediction's response.")
    index: int = Field(0, ge=0, description="Which input of that request (a request may hold several texts).")
    input: str | QuestionContext | Annotated[list[ChatMessage], Field(min_length=1)] | None = Field(
        None, description="The input, when no request id is given (or the log keeps only hashes): a text, "
        "{question, context}, or chat messages."
    )
    answer: Any = Field(
        description='The right answer in the task\'s shape: a label ("refund"; a list for multi-label), entity '
        'spans [{"start", "end", "label"}], an answer span {"text", "answer_start"}, or a preferred completion.'
    )


class FeedbackResponse(BaseModel):
    id: int
    model: str
    request_id: str | None
    version: int | None = Field(description="The version that made the prediction (None: not found in the log).")
    correct: bool | None = Field(description="Whether the logged prediction was right (None: unknown).")
    answer: Any


class ErrorBody(BaseModel):
    error: str = Field(description="What was wrong and how to fix it.")
    code: str
    request_id: str | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "The body is not valid JSON.",
        401: "Missing or unknown API key.",
        403: "The key lacks the scope this route needs.",
        404: "No such model is served (or no such version).",
        409: "Conflicts with the registry's state: nothing to roll back, a reserved alias name.",
        408: "The body did not arrive within the server's body timeout.",
        413: "The body is larger than the server accepts.",
        422: "The body is not what this route takes, or breaks a limit (texts per request, characters per text).",
        429: "Too many requests: the queue is full, too many are in progress, or the key's rate is exceeded; "
        "retry after the Retry-After seconds.",
        503: "The model is still loading; retry.",
        504: "The model did not answer within the request timeout.",
    }.items()
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers
