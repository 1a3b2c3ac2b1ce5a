"""The entity tagger: words to IOB2 tags over overlapping windows, merged into entities with character offsets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith import methods
from tunesmith.artifact import choose_variant, export_file, read_meta
from tunesmith.inference import Runner, onnx_runner, softmax, torch_runner
from tunesmith.tasks.token_classification.sentences import WORD


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


def stride_for(max_length: int) -> int:
    # A quarter of the window overlaps the next one, so words near a cut are seen with context on both sides.
    return max(1, max_length // 4)


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
        self.task = "token-classification"

    @classmethod
    def from_artifact(
        cls, path: str | Path, backend: str = "auto", threads: int | None = None, **model_kwargs: Any
    ) -> EntityTagger:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = Path(path)
        meta = read_meta(path)
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
