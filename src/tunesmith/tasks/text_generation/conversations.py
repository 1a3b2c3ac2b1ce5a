"""Instruction data: reading conversations, chat templates, and encoding with the loss on the answers only."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data import DataIssue, read_text
from tunesmith.errors import DataError, ModelError

ROLES = ("system", "user", "assistant")


# ChatML, the format SmolLM2, Qwen and many others were tuned on; used when a tokenizer has no template.
DEFAULT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


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
    text = read_text(path)
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
