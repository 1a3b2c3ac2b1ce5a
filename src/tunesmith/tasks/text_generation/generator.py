"""A causal language model with its tokenizer: chat and plain completion, whole or streamed, with per-request
sampling and stop strings."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.tasks.text_generation.conversations import prepare_tokenizer, render


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" (end of turn or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Generator:
    """A causal LM with its tokenizer: chat and plain completion, whole or streamed."""

    model: Any
    tokenizer: Any
    meta: dict[str, Any] = field(default_factory=dict)
    backend: str = "pytorch"
    task: str = "text-generation"

    @classmethod
    def from_artifact(cls, path: str | Path) -> Generator:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tunesmith import methods

        path = Path(path)
        meta = json.loads((path / "tunesmith.json").read_text(encoding="utf-8"))
        tokenizer = AutoTokenizer.from_pretrained(path / "model")
        prepare_tokenizer(tokenizer)
        model = methods.load(AutoModelForCausalLM, path)  # adapters are merged: as fast as a full model
        model.eval()
        return cls(model, tokenizer, meta)

    def prompt_ids(self, messages: list[dict[str, str]] | None = None, prompt: str | None = None) -> list[int]:
        text = render(self.tokenizer, messages, add_generation_prompt=True) if messages is not None else prompt or ""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _kwargs(self, ids: list[int], max_tokens: int, temperature: float, top_p: float,
                stop: Sequence[str] | None, seed: int | None, cancel: Any = None) -> dict[str, Any]:  # fmt: skip
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        sample = temperature > 0
        kwargs: dict[str, Any] = {
            "input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "max_new_tokens": max_tokens, "do_sample": sample, "pad_token_id": self.tokenizer.pad_token_id,
            "use_cache": True,  # the KV cache: each new token costs one position, not the whole sequence
        }  # fmt: skip
        # Greedy decoding either way, with the model's sampling defaults unset so transformers does not warn
        # about them; sampling happens in our logits processor, with a generator of this request's own.
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if sample:
            kwargs["logits_processor"] = _seeded_sampling(temperature, top_p, seed)
        criteria = StoppingCriteriaList()
        if stop:
            criteria.append(_stop_on_text(self.tokenizer, len(ids), list(stop)))
        if cancel is not None:

            class Cancelled(StoppingCriteria):
                def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                    return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool)

            criteria.append(Cancelled())
        if criteria:
            kwargs["stopping_criteria"] = criteria
        return kwargs

    def generate(self, ids: list[int], max_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                 stop: Sequence[str] | None = None, seed: int | None = None, cancel: Any = None) -> Generation:  # fmt: skip
        """The whole answer; setting `cancel` (a `threading.Event`) stops it at its next token."""
        import torch

        with torch.inference_mode():
            out = self.model.generate(**self._kwargs(ids, max_tokens, temperature, top_p, stop, seed, cancel))
        new = out[0, len(ids) :].tolist()
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        text, stopped = _cut_at_stop(text, stop)
        eos = {self.tokenizer.eos_token_id, *(_as_list(getattr(self.model.generation_config, "eos_token_id", None)))}
        ended = stopped or (new and new[-1] in eos) or len(new) < max_tokens
        return Generation(text, "stop" if ended else "length", len(ids), len(new))

    def stream(self, ids: list[int], max_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
               stop: Sequence[str] | None = None, seed: int | None = None,
               cancel: Any = None) -> Iterator[str | Generation]:  # fmt: skip
        """Text pieces as they are generated, then the finished `Generation` (run it in a worker thread).

        Setting `cancel` (a `threading.Event`) stops the generation at its next token, e.g. when the client
        that reads the stream has gone away."""
        import threading

        import torch
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict[str, Any] = {}

        def run() -> None:
            with torch.inference_mode():
                try:
                    result["out"] = self.model.generate(
                        **self._kwargs(ids, max_tokens, temperature, top_p, stop, seed, cancel), streamer=streamer
                    )
                except Exception as exc:  # surfaces in the consumer instead of hanging it
                    result["error"] = exc
                    streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        emitted = ""
        for piece in streamer:
            candidate, stopped = _cut_at_stop(emitted + piece, stop)
            hold = partial_stop(candidate, stop) if not stopped else 0  # a stop string may be arriving
            if len(candidate) - hold > len(emitted):
                yield candidate[len(emitted) : len(candidate) - hold]
                emitted = candidate[: len(candidate) - hold]
            if stopped:
                break
        worker.join()
        if "error" in result:
            raise result["error"]
        new = result["out"][0, len(ids) :].tolist()
        final, stopped = _cut_at_stop(self.tokenizer.decode(new, skip_special_tokens=True), stop)
        if len(final) > len(emitted):
            yield final[len(emitted) :]
        ended = stopped or len(new) < max_tokens or new[-1] == self.tokenizer.eos_token_id
        yield Generation(final, "stop" if ended else "length", len(ids), len(new))

    def chat(self, messages: list[dict[str, str]], **options: Any) -> Generation:
        return self.generate(self.prompt_ids(messages), **options)


def _seeded_sampling(temperature: float, top_p: float, seed: int | None) -> Any:
    """Temperature and nucleus sampling with a `torch.Generator` of the request's own: transformers samples
    from torch's global generator, so a seed set for one request was moved by every other generation running
    at the same time. The sampled token gets score 0 and every other -inf, so greedy decoding picks it."""
    import secrets

    import torch
    from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    generator = torch.Generator().manual_seed(seed if seed is not None else secrets.randbits(63))

    class Sample(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            chosen = torch.multinomial(torch.softmax(scores.float(), dim=-1), 1, generator=generator)
            return torch.full_like(scores, float("-inf")).scatter_(1, chosen, 0.0)

    warpers: list[Any] = [TemperatureLogitsWarper(temperature)]
    if top_p < 1:
        warpers.append(TopPLogitsWarper(top_p))
    return LogitsProcessorList([*warpers, Sample()])


def _stop_on_text(tokenizer: Any, prompt_length: int, stops: list[str]) -> Any:
    """Stop once the decoded answer contains a stop string. transformers' own `stop_strings` matches on
    vocabulary strings and stopped early on byte-level vocabularies (seen with a newline stop), so the
    answer is decoded instead: a few hundred tokens at most, cheap beside a forward pass."""
    import torch
    from transformers import StoppingCriteria

    class StopOnText(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = [any(s in tokenizer.decode(row[prompt_length:], skip_special_tokens=True) for s in stops)
                    for row in input_ids]  # fmt: skip
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StopOnText()


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def _cut_at_stop(text: str, stop: Sequence[str] | None) -> tuple[str, bool]:
    """`text` up to the first stop string (OpenAI leaves the stop string out), and whether one was found."""
    cuts = [text.find(s) for s in stop or () if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def partial_stop(text: str, stop: Sequence[str] | None) -> int:
    """How many characters at the end of `text` could be the start of a stop string."""
    longest = 0
    for s in stop or ():
        # Longest first, and never longer than the text: the server caps stop strings (max_stop_chars), so
        # this stays a few thousand character comparisons per piece.
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest
