"""Token-classification data: CoNLL and JSONL readers, tag schemes normalised to IOB2, and the split."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig
from tunesmith.data import DataIssue, fingerprint, holdout, read_text
from tunesmith.errors import DataError

TAG = re.compile(r"^(?:O|([BIESLU])-(\S+))$")


WORD = re.compile(r"\w+|[^\w\s]")


TOKEN_KEYS = ("tokens", "words")


TAG_KEYS = ("tags", "ner_tags", "labels", "label")


SPAN_KEYS = ("entities", "spans", "label", "labels")


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str]


def read_sentences(path: str | Path) -> list[Sentence]:
    """Sentences with their (not yet normalised) tags from a CoNLL or JSONL file."""
    path = Path(path)
    text = read_text(path)
    first = next((line for line in text.splitlines() if line.strip()), "")
    sentences = _read_jsonl(text, path) if first.lstrip().startswith("{") else _read_conll(text, path)
    if not sentences:
        raise DataError(f"{path} holds no sentences.")
    return sentences


def _read_conll(text: str, path: Path) -> list[Sentence]:
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            if tokens:
                sentences.append(Sentence(tokens, tags))
            tokens, tags = [], []
            continue
        if len(columns) < 2:
            raise DataError(
                f"{path}:{number}: expected a token and a tag, found {line.strip()!r}. CoNLL files have 2 to 4 "
                "columns separated by tabs or spaces (token first, tag last) and a blank line between sentences."
            )
        tokens.append(columns[0])
        tags.append(columns[-1])
    if tokens:
        sentences.append(Sentence(tokens, tags))
    return sentences


def _read_jsonl(text: str, path: Path) -> list[Sentence]:
    sentences = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg}).") from None
        where = f"{path}:{number}"
        token_key = next((k for k in TOKEN_KEYS if k in record), None)
        if token_key is not None:
            tag_key = next((k for k in TAG_KEYS if k in record), None)
            if tag_key is None:
                raise DataError(f"{where}: has {token_key!r} but no tags; add 'tags' with one tag per token.")
            tokens, tags = record[token_key], record[tag_key]
            if not isinstance(tokens, list) or not isinstance(tags, list) or len(tokens) != len(tags):
                raise DataError(f"{where}: {token_key!r} and {tag_key!r} must be lists of the same length.")
            sentences.append(Sentence([str(t) for t in tokens], [str(t) for t in tags]))
        elif "text" in record:
            span_key = next((k for k in SPAN_KEYS if k in record), None)
            sentences.append(
                spans_to_sentence(str(record["text"]), record.get(span_key, []) if span_key else [], where)
            )
        else:
            raise DataError(
                f"{where}: expected 'tokens' and 'tags', or 'text' and 'entities'; found keys {sorted(record)}."
            )
    return sentences


def _span(item: Any, where: str) -> tuple[int, int, str]:
    if isinstance(item, dict) and {"start", "end", "label"} <= set(item):
        start, end, label = item["start"], item["end"], item["label"]
    elif isinstance(item, list | tuple) and len(item) == 3:
        start, end, label = item
    else:
        raise DataError(f"{where}: an entity must be {{'start', 'end', 'label'}} or [start, end, label]; got {item!r}.")
    if not isinstance(start, int) or not isinstance(end, int) or not str(label).strip():
        raise DataError(f"{where}: entity {item!r} needs integer start/end offsets and a non-empty label.")
    return start, end, str(label)


def spans_to_sentence(text: str, entities: Sequence[Any], where: str) -> Sentence:
    """Words of `text` (split at entity boundaries too) with IOB2 tags from character spans."""
    spans = sorted(_span(e, where) for e in entities)
    for start, end, label in spans:
        if not 0 <= start < end <= len(text):
            raise DataError(f"{where}: entity {label!r} at {start}-{end} is outside the text ({len(text)} characters).")
        covered = text[start:end]
        if covered != covered.strip():
            raise DataError(
                f"{where}: entity {label!r} at {start}-{end} ({covered!r}) starts or ends with whitespace: the "
                "offsets are misaligned. End offsets are exclusive: text[start:end] is the entity."
            )
    for (s1, e1, l1), (s2, _e2, l2) in itertools.pairwise(spans):
        if s2 < e1:
            raise DataError(f"{where}: entities {l1!r} ({s1}-{e1}) and {l2!r} (from {s2}) overlap; keep one.")
    cuts = {b for s, e, _ in spans for b in (s, e)}
    tokens, offsets = [], []
    for match in WORD.finditer(text):
        start, end = match.span()
        inner = sorted(b for b in cuts if start < b < end)
        for a, b in zip([start, *inner], [*inner, end], strict=True):
            tokens.append(text[a:b])
            offsets.append((a, b))
    tags = ["O"] * len(tokens)
    for start, end, label in spans:
        inside = [i for i, (a, b) in enumerate(offsets) if a >= start and b <= end]
        if not inside:
            raise DataError(f"{where}: entity {label!r} at {start}-{end} covers no word characters.")
        tags[inside[0]] = f"B-{label}"
        for i in inside[1:]:
            tags[i] = f"I-{label}"
    return Sentence(tokens, tags)


def normalize_tags(sentences: list[Sentence], where: str) -> str:
    """Rewrite every sentence's tags as IOB2, in place; return the scheme found (IOB1, IOB2, BIOES, BILOU)."""
    bad = Counter(t for s in sentences for t in s.tags if not TAG.match(t))
    if bad:
        examples = ", ".join(repr(t) for t, _ in bad.most_common(5))
        raise DataError(
            f"{where}: unknown tag(s) {examples}. Tags must be 'O' or PREFIX-TYPE with prefix B, I (IOB), E, S "
            "(BIOES) or L, U (BILOU), e.g. 'B-PER'."
        )
    prefixes = {t[0] for s in sentences for t in s.tags if t != "O"}
    starts_with_i = any(
        tag.startswith("I-") and (i == 0 or s.tags[i - 1][2:] != tag[2:])
        for s in sentences
        for i, tag in enumerate(s.tags)
    )
    scheme = (
        "BIOES" if prefixes & {"E", "S"} else "BILOU" if prefixes & {"L", "U"} else "IOB1" if starts_with_i else "IOB2"
    )
    for sentence in sentences:
        out, previous = [], None
        for tag in sentence.tags:
            if tag == "O":
                out.append("O")
                previous = None
                continue
            prefix, kind = tag[0], tag[2:]
            # B/S/U always open an entity; I/E/L continue one of the same type, or open it (IOB1 and stray tags).
            out.append(f"I-{kind}" if prefix in "IEL" and previous == kind else f"B-{kind}")
            previous = None if prefix in "ESLU" else kind
        sentence.tags = out
    return scheme


@dataclass
class TokenData:
    train: list[Sentence]
    validation: list[Sentence]
    test: list[Sentence]
    label_names: list[str]  # IOB2 tags, "O" first
    scheme: str
    fingerprint: str
    issues: list[DataIssue] = field(default_factory=list)


def load_token_data(config: RunConfig) -> TokenData:
    """Read, normalise and split token-classification data as `config.data` describes."""
    data = config.data
    if data.train is None:
        raise DataError("No training file: pass one, e.g. `tunesmith train data.conll --task token-classification`.")
    train = read_sentences(data.train)
    scheme = normalize_tags(train, data.train)
    issues: list[DataIssue] = []
    if scheme != "IOB2":
        issues.append(DataIssue("warning", "tag_scheme", f"{data.train}: tags are {scheme}; converted to IOB2."))
    extra = {}
    for what in ("validation", "test"):
        file = getattr(data, what)
        if file is not None:
            extra[what] = read_sentences(file)
            normalize_tags(extra[what], file)
    train, validation, test = holdout(train, extra, data, config.seed, minimum=2, what="sentences")
    types = sorted({t[2:] for s in train for t in s.tags if t != "O"})
    if not types:
        raise DataError(f"{data.train} has no entities: every tag is 'O'.")
    unseen = sorted({t[2:] for s in validation + test for t in s.tags if t != "O"} - set(types))
    if unseen:
        issues.append(DataIssue("warning", "unseen_types", f"entity types {unseen} occur in validation/test but "
                                "not in training; the model cannot predict them."))  # fmt: skip
    label_names = ["O"] + [f"{p}-{t}" for t in types for p in "BI"]
    return TokenData(
        train, validation, test, label_names, scheme,
        fingerprint([" ".join(s.tokens) for s in train], [s.tags for s in train]), issues,
    )  # fmt: skip
