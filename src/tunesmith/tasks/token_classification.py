"""Token classification (named-entity recognition): data, training, evaluation and prediction.

Inputs, detected by content:
- CoNLL column files: one token per line, 2-4 whitespace-separated columns (token first, tag last),
  blank lines between sentences, `-DOCSTART-` lines skipped;
- JSONL with tokens and tags: `{"tokens": [...], "tags": [...]}` (also `words`, `ner_tags`, `labels`);
- JSONL with character spans: `{"text": ..., "entities": [{"start", "end", "label"}]}` (also doccano's
  `"label": [[start, end, label], ...]`).

Tags in IOB1, IOB2 (BIO), BIOES or BILOU are detected and normalised to IOB2, the scheme the model
learns and `seqeval` scores. Sub-words: the first sub-token of a word carries the word's tag, the others
are ignored by the loss; sentences longer than the token limit are split into overlapping windows
(`stride`), and at prediction time each word takes its tags from the window where it has the most
context. Predictions are entities with character offsets into the caller's text, not sub-word tags.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith import methods
from tunesmith.config import RunConfig
from tunesmith.data import DataIssue, fingerprint
from tunesmith.errors import DataError
from tunesmith.export import CALIBRATION_ITEMS, ExportCheck, single_feeds, timed
from tunesmith.inference import Runner, _read_meta, choose_variant, export_file, onnx_runner, softmax, torch_runner
from tunesmith.models import bf16_supported, load_with_new_head, model_max_length
from tunesmith.registry import Registry
from tunesmith.runs import locked_run

TASK = "token-classification"
TAG = re.compile(r"^(?:O|([BIESLU])-(\S+))$")
WORD = re.compile(r"\w+|[^\w\s]")
TOKEN_KEYS = ("tokens", "words")
TAG_KEYS = ("tags", "ner_tags", "labels", "label")
SPAN_KEYS = ("entities", "spans", "label", "labels")

Log = Callable[[str], None]


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str]


@dataclass
class Entity:
    """One predicted entity: its type, the text it covers, character offsets and a confidence."""

    label: str
    text: str
    start: int
    end: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "text": self.text, "start": self.start, "end": self.end, "score": self.score}


# -- reading --------------------------------------------------------------------------------------


def read_sentences(path: str | Path) -> list[Sentence]:
    """Sentences with their (not yet normalised) tags from a CoNLL or JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}). Convert it, e.g. with iconv.") from None
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


# -- data -----------------------------------------------------------------------------------------


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
    rng = random.Random(config.seed)
    order = list(range(len(train)))
    rng.shuffle(order)
    n_val = 0 if "validation" in extra else max(1, round(len(train) * data.validation_size))
    n_test = 0 if "test" in extra else max(1, round(len(train) * data.test_size))
    if len(train) - n_val - n_test < 2:
        raise DataError(f"{data.train} has {len(train)} sentences: too few to split off validation and test.")
    validation = extra.get("validation", [train[i] for i in order[:n_val]])
    test = extra.get("test", [train[i] for i in order[n_val : n_val + n_test]])
    train = [train[i] for i in order[n_val + n_test :]]
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


# -- encoding and metrics ---------------------------------------------------------------------------


def encode(
    tokenizer: Any, sentences: list[Sentence], label2id: dict[str, int], max_length: int
) -> list[dict[str, Any]]:
    """Windows of at most `max_length` tokens; each word's first sub-token carries its tag (others: -100)."""
    encoded = tokenizer(
        [s.tokens for s in sentences], is_split_into_words=True, truncation=True, max_length=max_length,
        stride=stride_for(max_length), return_overflowing_tokens=True,
    )  # fmt: skip
    rows = []
    for window, sentence_index in enumerate(encoded["overflow_to_sample_mapping"]):
        tags = sentences[sentence_index].tags
        labels, previous = [], None
        for word in encoded.word_ids(window):
            labels.append(-100 if word is None or word == previous else label2id.get(tags[word], 0))
            previous = word
        rows.append({"input_ids": encoded["input_ids"][window], "attention_mask": encoded["attention_mask"][window],
                     "labels": labels})  # fmt: skip
    return rows


def stride_for(max_length: int) -> int:
    # A quarter of the window overlaps the next one, so words near a cut are seen with context on both sides.
    return max(1, max_length // 4)


def seqeval_report(true: list[list[str]], predicted: list[list[str]]) -> dict[str, Any]:
    from seqeval.metrics import accuracy_score, classification_report
    from seqeval.scheme import IOB2

    report = classification_report(true, predicted, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    per_type = {
        k: {
            "precision": float(v["precision"]),
            "recall": float(v["recall"]),
            "f1": float(v["f1-score"]),
            "support": int(v["support"]),
        }
        for k, v in report.items()
        if not k.endswith(" avg")
    }
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    macro = report.get("macro avg", {"f1-score": 0.0})
    return {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "f1_macro": float(macro["f1-score"]),
        "token_accuracy": float(accuracy_score(true, predicted)),
        "n": len(true),
        "per_type": per_type,
    }


def _trainer_metrics(label_names: list[str]) -> Callable[[Any], dict[str, float]]:
    from tunesmith.training import SELECTION_METRIC

    def compute(eval_pred: Any) -> dict[str, float]:
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        predicted = logits.argmax(-1)
        true_tags, pred_tags = [], []
        for p_row, l_row in zip(predicted, labels, strict=True):
            keep = l_row != -100
            true_tags.append([label_names[i] for i in l_row[keep]])
            pred_tags.append([label_names[i] for i in p_row[keep]])
        report = seqeval_report(true_tags, pred_tags)
        shifted = logits - logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        mask = labels != -100
        loss = float(-np.take_along_axis(log_probs, np.where(mask, labels, 0)[..., None], -1)[..., 0][mask].mean())
        metrics = {k: report[k] for k in ("f1", "precision", "recall")}
        metrics[SELECTION_METRIC] = report["f1"] + 1e-4 / (1.0 + loss)  # ties broken by lower loss, as for text
        return metrics

    return compute


# -- prediction ------------------------------------------------------------------------------------


class EntityTagger:
    """A fine-tuned token classifier: raw text in, entities with character offsets out.

    `runner` is the model (PyTorch, or an ONNX export: see `inference.torch_runner` / `onnx_runner`); the
    tokenizer and everything around the forward pass are the same for both.
    """

    def __init__(self, runner: Runner, tokenizer: Any, label_names: Sequence[str], max_length: int,
                 meta: dict[str, Any] | None = None, backend: str = "pytorch", model: Any = None) -> None:  # fmt: skip
        self.runner, self.tokenizer = runner, tokenizer
        self.label_names = list(label_names)
        self.max_length = max_length
        self.meta = meta or {}
        self.backend = backend
        self.model = model  # the PyTorch model, when that is the backend
        self.task = TASK

    @classmethod
    def from_artifact(
        cls, path: str | Path, backend: str = "auto", threads: int | None = None, **model_kwargs: Any
    ) -> EntityTagger:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = Path(path)
        meta = _read_meta(path)
        tokenizer = AutoTokenizer.from_pretrained(path / "model")
        variant = choose_variant(path, backend)
        if variant is not None:
            runner = onnx_runner(export_file(path, variant), threads)
            return cls(runner, tokenizer, meta["label_names"], meta["max_length"], meta, f"onnx-{variant}")
        from transformers import AutoModelForTokenClassification

        model = methods.load(AutoModelForTokenClassification, path, **model_kwargs)
        return cls(torch_runner(model, ["logits"]), tokenizer, meta["label_names"], meta["max_length"], meta,
                   model=model)  # fmt: skip

    def windows(self, words: list[list[str]], padding: bool = True) -> Any:
        """The token windows of pre-split sentences (overlapping by `stride_for(max_length)`)."""
        return self.tokenizer(
            words, is_split_into_words=True, truncation=True, max_length=self.max_length,
            stride=stride_for(self.max_length), return_overflowing_tokens=True, padding=padding,
            return_tensors="np" if padding else None,
        )  # fmt: skip

    def word_probabilities(self, words: list[list[str]], batch_size: int = 32) -> list[np.ndarray]:
        """Per sentence, a (n_words, n_tags) array: each word's tag probabilities from its first sub-token, taken
        from the window where the word is farthest from a cut."""
        encoded = self.windows(words)
        n_windows = encoded["input_ids"].shape[0]
        probs_out = [np.zeros((len(w), len(self.label_names)), dtype=np.float32) for w in words]
        best_margin = [np.full(len(w), -1) for w in words]
        for start in range(0, n_windows, batch_size):
            batch = {k: encoded[k][start : start + batch_size] for k in ("input_ids", "attention_mask")}
            probs = softmax(self.runner(batch)["logits"])
            for offset in range(len(probs)):
                window = start + offset
                sentence = int(encoded["overflow_to_sample_mapping"][window])
                word_ids = encoded.word_ids(window)
                positions = [i for i, w in enumerate(word_ids) if w is not None]
                if not positions:  # every word was dropped by the tokenizer (control or format characters)
                    continue
                first, last = positions[0], positions[-1]
                previous = None
                for i, word in enumerate(word_ids):
                    if word is None or word == previous:
                        previous = word
                        continue
                    previous = word
                    margin = min(i - first, last - i)
                    if margin > best_margin[sentence][word]:
                        best_margin[sentence][word] = margin
                        probs_out[sentence][word] = probs[offset, i]
        return probs_out

    def predict(self, texts: str | Sequence[str], batch_size: int = 32) -> list[list[Entity]]:
        """Entities in each text, grouped from word tags, with character offsets into that text."""
        if isinstance(texts, str):
            texts = [texts]
        spans = [[m.span() for m in WORD.finditer(t)] for t in texts]
        words = [[t[a:b] for a, b in s] for t, s in zip(texts, spans, strict=True)]
        nonempty = [i for i, w in enumerate(words) if w]
        probs = self.word_probabilities([words[i] for i in nonempty], batch_size) if nonempty else []
        results: list[list[Entity]] = [[] for _ in texts]
        for i, p in zip(nonempty, probs, strict=True):
            tags = [self.label_names[j] for j in p.argmax(1)]
            results[i] = group_entities(texts[i], spans[i], tags, p.max(1))
        return results


def group_entities(text: str, spans: list[tuple[int, int]], tags: list[str], scores: np.ndarray) -> list[Entity]:
    """Merge IOB2 word tags into entities (an I- without its B- opens one, as seqeval's lenient mode does)."""
    entities: list[Entity] = []
    current: tuple[str, int, list[int]] | None = None

    def close() -> None:
        if current is not None:
            kind, first, members = current
            start, end = spans[first][0], spans[members[-1]][1]
            score = float(np.mean([scores[m] for m in members]))
            entities.append(Entity(kind, text[start:end], start, end, score))

    for i, tag in enumerate(tags):
        if tag == "O":
            close()
            current = None
        elif tag.startswith("B-") or current is None or current[0] != tag[2:]:
            close()
            current = (tag[2:], i, [i])
        else:
            current[2].append(i)
    close()
    return entities


# -- training --------------------------------------------------------------------------------------


@locked_run
def train(
    config: RunConfig, *, registry: Registry | None = None, resume: bool = False, progress: bool = True,
    log: Log = print,
) -> Any:  # fmt: skip
    """Fine-tune, evaluate (seqeval, entity level) and register a token classifier."""
    from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification, set_seed

    from tunesmith.training import (
        TrainResult,
        _prepare_run_dir,
        begin_run,
        build_trainer,
        register_artifact,
        run_trainer,
    )

    config, registry, tokenizer = begin_run(config, registry, offsets_for="token classification")
    settings, name = config.train, str(config.name)
    data = load_token_data(config)
    label2id = {t: i for i, t in enumerate(data.label_names)}
    set_seed(settings.seed)
    model = load_with_new_head(
        AutoModelForTokenClassification, settings.base_model, num_labels=len(data.label_names),
        id2label=dict(enumerate(data.label_names)), label2id=label2id, trust_remote_code=settings.trust_remote_code,
    )  # fmt: skip
    limit = model_max_length(tokenizer, model.config)
    lengths = [len(ids) for ids in tokenizer([s.tokens for s in data.train], is_split_into_words=True)["input_ids"]]
    max_length = min(settings.max_length or limit, limit, max(16, int(np.ceil(max(lengths) / 8) * 8)))
    long = sum(n > max_length for n in lengths)
    if long:
        data.issues.append(DataIssue("warning", "long_sentences", f"{long} training sentence(s) are longer than "
                                     f"{max_length} tokens; they are split into overlapping windows."))  # fmt: skip
    for issue in data.issues:
        log(str(issue))
    if config.data.inspect:
        from tunesmith.quality import summary_lines

        summary_lines(config, log)
    types = sorted({t[2:] for t in data.label_names if t != "O"})
    log(f"Data: {len(data.train)} train / {len(data.validation)} validation / {len(data.test)} test sentences, "
        f"{len(types)} entity types ({', '.join(types)}); tags {data.scheme}; max_length {max_length} tokens.")  # fmt: skip

    run_dir = registry.run_dir(name)
    checkpoint = _prepare_run_dir(run_dir, data.fingerprint, config, resume, log)
    use_bf16 = settings.precision == "bf16" or (settings.precision == "auto" and bf16_supported())
    trainer = build_trainer(
        model, tokenizer, settings, run_dir,
        encode(tokenizer, data.train, label2id, max_length), encode(tokenizer, data.validation, label2id, max_length),
        task=TASK, collator=DataCollatorForTokenClassification(tokenizer), compute_metrics=_trainer_metrics(data.label_names),
        bf16=use_bf16, log=log, progress=progress,
    )  # fmt: skip
    log(f"Fine-tuning {settings.base_model} for {TASK} ({'bf16 autocast' if use_bf16 else 'fp32'}) ...")
    model, minutes = run_trainer(trainer, checkpoint)
    tagger = EntityTagger(torch_runner(model, ["logits"]), tokenizer, data.label_names, max_length)
    metrics, errors = evaluate_sentences(tagger, data.test)
    validation_metrics, _ = evaluate_sentences(tagger, data.validation)
    splits = {
        f"data/{what}.jsonl": "".join(json.dumps({"tokens": s.tokens, "tags": s.tags}, ensure_ascii=False) + "\n"
                                      for s in getattr(data, what))
        for what in ("validation", "test")
    }  # fmt: skip
    version = register_artifact(
        registry, config, model, tokenizer,
        files=splits,
        evaluation={"test": metrics, "validation": validation_metrics, "train_minutes": minutes},
        errors=errors,
        report=report_markdown(name, metrics, len(errors)),
        meta={
            "label_names": data.label_names, "max_length": max_length, "precision": "bf16" if use_bf16 else "fp32",
            "tag_scheme_in_data": data.scheme,
            "data": {"fingerprint": data.fingerprint, "train_file": config.data.train,
                     "sizes": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test)}},
        },
        metrics={k: metrics[k] for k in ("f1", "precision", "recall", "f1_macro", "token_accuracy")},
    )  # fmt: skip
    shutil.rmtree(run_dir, ignore_errors=True)
    return TrainResult(version, metrics, {}, data.issues, minutes)


def evaluate_sentences(tagger: EntityTagger, sentences: list[Sentence]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """seqeval metrics over `sentences`, and the sentences whose entities the model got wrong."""
    probs = tagger.word_probabilities([s.tokens for s in sentences]) if sentences else []
    predicted = [[tagger.label_names[j] for j in p.argmax(1)] for p in probs]
    # A stray I- after O is read as opening an entity, as group_entities does at prediction time.
    predicted = [_repair(p) for p in predicted]
    metrics = seqeval_report([s.tags for s in sentences], predicted)
    errors = [
        {"tokens": s.tokens, "gold": s.tags, "predicted": p}
        for s, p in zip(sentences, predicted, strict=True)
        if s.tags != p
    ]
    return metrics, errors


def _repair(tags: list[str]) -> list[str]:
    out, previous = [], "O"
    for tag in tags:
        out.append(f"B-{tag[2:]}" if tag.startswith("I-") and previous[2:] != tag[2:] else tag)
        previous = tag
    return out


def report_markdown(name: str, metrics: dict[str, Any], n_errors: int) -> str:
    lines = [
        f"# {name}: token classification", "",
        f"Entity-level (seqeval, strict IOB2) on {metrics['n']} test sentences: precision {metrics['precision']:.4f}, "
        f"recall {metrics['recall']:.4f}, **F1 {metrics['f1']:.4f}** (macro over types {metrics['f1_macro']:.4f}).",
        "", "| type | precision | recall | F1 | support |", "|---|---|---|---|---|",
    ]  # fmt: skip
    for kind, m in sorted(metrics["per_type"].items()):
        lines.append(f"| {kind} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    lines += ["", f"{n_errors} test sentence(s) with at least one wrong tag: see errors.jsonl.", ""]
    return "\n".join(lines)


def evaluate_file(tagger: EntityTagger, path: str | Path, out_dir: str | Path, **_columns: Any) -> dict[str, Any]:
    """Score a tagger on a labeled file (any input format above); write metrics.json, errors.jsonl, report.md."""
    sentences = read_sentences(path)
    scheme = normalize_tags(sentences, str(path))
    metrics, errors = evaluate_sentences(tagger, sentences)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"test": metrics}, indent=2), encoding="utf-8")
    (folder / "errors.jsonl").write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors))
    (folder / "report.md").write_text(report_markdown(str(tagger.meta.get("name", "model")), metrics, len(errors)))
    issues = [] if scheme == "IOB2" else [f"warning: {path}: tags are {scheme}; converted to IOB2."]
    return {"test": metrics, "issues": issues}


# -- the task contract beyond training ----------------------------------------------------------------

WARM_UP = "warm-up"


def load(path: str | Path, backend: str = "auto", threads: int | None = None) -> EntityTagger:
    """The tagger in artifact `path`, on the backend asked for (see `inference.choose_variant`)."""
    return EntityTagger.from_artifact(path, backend, threads)


def serve_compute(tagger: EntityTagger, texts: list[str], batch_size: int) -> list[list[Entity]]:
    """One server batch: entities per text."""
    return tagger.predict(texts, batch_size)


def _read_split(path: Path) -> list[Sentence]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Sentence(r["tokens"], r["tags"]) for r in rows]


class _TaggerCheck(ExportCheck):
    """Agreement = share of validation sentences whose every word keeps its tag (word agreement beside it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reference = ref = EntityTagger.from_artifact(path, backend="pytorch", attn_implementation="eager")
        self.model, self.pad_token_id = ref.model, ref.tokenizer.pad_token_id or 0
        self.sentences = _read_split(path / "data" / "validation.jsonl")
        self.test_sentences = _read_split(path / "data" / "test.jsonl")
        self.n, self.test_n = len(self.sentences), len(self.test_sentences)
        self.reference_probs = self._probs(ref, self.sentences)
        self.reference_test, self.reference_seconds = timed(lambda: self._probs(ref, self.test_sentences))
        self.reference_metrics = self._score(self.reference_probs)
        self.output_axes = {"logits": {0: "batch", 1: "sequence"}}
        trace = ref.windows([["a", "short", "one"], ["a", "longer", "sentence", ",", "so", "there", "is", "padding"]])
        self.trace_feeds = {k: trace[k] for k in ("input_ids", "attention_mask")}
        sample = [s.tokens for s in self.sentences[:CALIBRATION_ITEMS]] or [["calibration"]]
        self.calibration_feeds = single_feeds(ref.windows(sample, padding=False), list(self.trace_feeds))

    def candidate(self, onnx_file: Path, variant: str) -> EntityTagger:
        ref = self.reference
        return EntityTagger(onnx_runner(onnx_file), ref.tokenizer, ref.label_names, ref.max_length, ref.meta,
                            f"onnx-{variant}")  # fmt: skip

    @staticmethod
    def _probs(tagger: EntityTagger, sentences: list[Sentence]) -> list[np.ndarray]:
        return tagger.word_probabilities([s.tokens for s in sentences]) if sentences else []

    def _score(self, probs: list[np.ndarray]) -> dict[str, float]:
        if not probs:
            return {}
        predicted = [_repair([self.reference.label_names[j] for j in p.argmax(1)]) for p in probs]
        report = seqeval_report([s.tags for s in self.sentences], predicted)
        return {k: report[k] for k in ("f1", "precision", "recall")}

    @staticmethod
    def _agreement(reference: list[np.ndarray], probs: list[np.ndarray]) -> tuple[float, float]:
        if not probs:
            return 1.0, 1.0
        same = [r.argmax(1) == p.argmax(1) for r, p in zip(reference, probs, strict=True)]
        return float(np.mean([s.all() for s in same])), float(np.concatenate(same).mean())

    def compare(self, candidate: EntityTagger) -> dict[str, Any]:
        probs = self._probs(candidate, self.sentences)
        test_probs, seconds = timed(lambda: self._probs(candidate, self.test_sentences))
        metrics = self._score(probs)
        agreement, word_agreement = self._agreement(self.reference_probs, probs)
        differences = [np.abs(r - p).max() for r, p in zip(self.reference_probs, probs, strict=True) if r.size]
        return {
            "agreement": agreement,
            "word_agreement": word_agreement,
            "test_agreement": self._agreement(self.reference_test, test_probs)[0],
            "max_probability_difference": float(max(differences, default=0.0)),
            "metrics": metrics,
            "metric_delta": {k: metrics[k] - self.reference_metrics[k] for k in metrics},
            "texts_per_second": self.test_n / seconds if self.test_n and seconds > 0 else None,
        }


def export_check(path: str | Path) -> ExportCheck:
    return _TaggerCheck(Path(path))
