"""The answer finder: question and context windows in, the best answer spans out, on PyTorch or ONNX."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith import methods
from tunesmith.artifact import choose_variant, export_file, read_meta
from tunesmith.inference import Runner, onnx_runner, torch_runner
from tunesmith.tasks.question_answering.examples import Example

MAX_LENGTH = 384  # question + context window, the usual SQuAD setting


DOC_STRIDE = 128  # overlap between windows of one long context


MAX_ANSWER_TOKENS = 30


N_BEST = 20


OUTPUTS = ["start_logits", "end_logits"]
MAX_ANSWERS = 10  # answers the server computes per question; a request's top_k chooses among them


@dataclass
class Answer:
    text: str
    start: int
    end: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.text, "start": self.start, "end": self.end, "score": self.score}


def features(tokenizer: Any, examples: Sequence[Example], max_length: int, stride: int, labels: bool) -> Any:
    """Tokenized windows; with `labels`, each window's start/end token of the answer (0, [CLS], if not inside)."""
    pad_right = tokenizer.padding_side == "right"
    encoded = tokenizer(
        [e.question for e in examples], [e.context for e in examples], truncation="only_second" if pad_right else
        "only_first", max_length=max_length, stride=stride, return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )  # fmt: skip
    if not labels:
        return encoded
    rows = []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        example = examples[encoded["overflow_to_sample_mapping"][i]]
        sequence = encoded.sequence_ids(i)
        context_tokens = [t for t, s in enumerate(sequence) if s == 1]
        start_token = end_token = 0
        if example.answers and context_tokens:
            text, char_start = example.answers[0]
            char_end = char_start + len(text)
            first, last = context_tokens[0], context_tokens[-1]
            if offsets[first][0] <= char_start and offsets[last][1] >= char_end:
                start_token = next(t for t in context_tokens if offsets[t][1] > char_start)
                end_token = next(t for t in reversed(context_tokens) if offsets[t][0] < char_end)
        row = {k: encoded[k][i] for k in encoded if k not in ("offset_mapping", "overflow_to_sample_mapping")}
        rows.append({**row, "start_positions": start_token, "end_positions": end_token})
    return rows


class AnswerFinder:
    """A fine-tuned extractive QA model: question + context in, answer spans with character offsets out.

    `runner` is the model (PyTorch, or an ONNX export: see `inference.torch_runner` / `onnx_runner`).
    """

    def __init__(self, runner: Runner, tokenizer: Any, max_length: int, allow_no_answer: bool = False,
                 meta: dict[str, Any] | None = None, backend: str = "pytorch", model: Any = None) -> None:  # fmt: skip
        self.runner, self.tokenizer = runner, tokenizer
        self.max_length = max_length
        self.stride = min(DOC_STRIDE, max_length // 3)
        self.allow_no_answer = allow_no_answer
        self.meta = meta or {}
        self.backend = backend
        self.model = model  # the PyTorch model, when that is the backend
        self.task = "question-answering"
        self.label_names: list[str] = []

    @classmethod
    def from_artifact(
        cls, path: str | Path, backend: str = "auto", threads: int | None = None, **model_kwargs: Any
    ) -> AnswerFinder:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = Path(path)
        meta = read_meta(path)
        tokenizer = AutoTokenizer.from_pretrained(path / "model")
        settings = (meta["max_length"], meta.get("allow_no_answer", False), meta)
        variant = choose_variant(path, backend)
        if variant is not None:
            return cls(onnx_runner(export_file(path, variant), threads), tokenizer, *settings, f"onnx-{variant}")
        from transformers import AutoModelForQuestionAnswering

        model = methods.load(AutoModelForQuestionAnswering, path, **model_kwargs)
        return cls(torch_runner(model, OUTPUTS), tokenizer, *settings, model=model)

    def answer(self, questions: Sequence[str], contexts: Sequence[str], top_k: int = 1,
               batch_size: int = 32) -> list[list[Answer]]:  # fmt: skip
        """The `top_k` best answers per question, best first ("" with start = end = -1 means no answer)."""
        examples = [Example(str(i), q, c, []) for i, (q, c) in enumerate(zip(questions, contexts, strict=True))]
        if not examples:
            return []
        encoded = features(self.tokenizer, examples, self.max_length, self.stride, labels=False)
        n = len(encoded["input_ids"])
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        starts, ends = [], []
        for first in range(0, n, batch_size):
            rows = [{k: encoded[k][i] for k in keys} for i in range(first, min(n, first + batch_size))]
            batch = dict(self.tokenizer.pad(rows, return_tensors="np"))
            out = self.runner(batch)
            for row in range(len(rows)):
                length = int(batch["attention_mask"][row].sum())
                starts.append(out["start_logits"][row, :length])
                ends.append(out["end_logits"][row, :length])
        candidates: dict[int, list[Answer]] = collections.defaultdict(list)
        null_score: dict[int, float] = {}
        for i in range(n):
            index = encoded["overflow_to_sample_mapping"][i]
            context = examples[index].context
            sequence, offsets = encoded.sequence_ids(i), encoded["offset_mapping"][i]
            start_lp = starts[i] - np.logaddexp.reduce(starts[i])
            end_lp = ends[i] - np.logaddexp.reduce(ends[i])
            null_score[index] = max(null_score.get(index, -np.inf), start_lp[0] + end_lp[0])
            for s in np.argsort(-start_lp)[:N_BEST]:
                for e in np.argsort(-end_lp)[:N_BEST]:
                    if sequence[s] != 1 or sequence[e] != 1 or e < s or e - s + 1 > MAX_ANSWER_TOKENS:
                        continue
                    a, b = offsets[s][0], offsets[e][1]
                    candidates[index].append(Answer(context[a:b], a, b, float(np.exp(start_lp[s] + end_lp[e]))))
        results = []
        for index in range(len(examples)):
            found = sorted(candidates[index], key=lambda x: -x.score)
            unique, seen = [], set()
            for a in found:
                if (a.start, a.end) not in seen:
                    seen.add((a.start, a.end))
                    unique.append(a)
            if self.allow_no_answer:
                unique.append(Answer("", -1, -1, float(np.exp(null_score[index]))))
                unique.sort(key=lambda x: -x.score)
            results.append(unique[:top_k] or [Answer("", -1, -1, 0.0)])
        return results
