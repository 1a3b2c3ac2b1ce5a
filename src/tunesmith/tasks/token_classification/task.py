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

The package: `sentences` (reading and splitting), `predictor` (the tagger), `metrics` (seqeval),
`training` and `checking` (the export check).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.tasks.base import Summary, Task, TrainResult

if TYPE_CHECKING:
    from tunesmith.export import ExportCheck
    from tunesmith.tasks.token_classification.predictor import Entity, EntityTagger


class TokenClassification(Task):
    name = "token-classification"
    peft_task_type = "TOKEN_CLS"
    main_metric = "f1"
    headline_metrics = ("precision", "recall", "f1")
    warm_up = "warm-up"
    request = "texts"
    training = "tunesmith.tasks.token_classification.training"
    baseline_name = "CRF baseline"
    compared_metric = "f1"
    below_baseline_hint = ("Try more steps (--epochs, --max-minutes), a larger learning rate, or a "
        "base model that knows the language and the domain.")
    data_shape = "tagged-sentences"

    def load(self, path: str | Path, backend: str = "auto", threads: int | None = None) -> EntityTagger:
        from tunesmith.tasks.token_classification.predictor import EntityTagger

        return EntityTagger.from_artifact(path, backend, threads)

    def evaluate_file(self, predictor: Any, data: str | Path, out_dir: str | Path, **options: Any) -> dict[str, Any]:
        from tunesmith.tasks.token_classification.training import evaluate_file

        return evaluate_file(predictor, data, out_dir)

    def predict_lines(self, predictor: Any, inputs: Sequence[str], **options: Any) -> Iterator[str]:
        for text, entities in zip(inputs, predictor.predict(list(inputs), options.get("batch_size", 64)), strict=True):
            found = "; ".join(f"{e.label} {e.text!r} [{e.start}:{e.end}] {e.score:.3f}" for e in entities)
            yield f"{found or '(no entities)'}\t{text}"

    def predict_records(self, predictor: Any, inputs: Sequence[str], **options: Any) -> list[dict[str, Any]]:
        found = predictor.predict(list(inputs), options.get("batch_size", 64))
        return [{"text": t, "entities": [e.to_dict() for e in es]} for t, es in zip(inputs, found, strict=True)]

    def export_check(self, path: str | Path) -> ExportCheck:
        from tunesmith.tasks.token_classification.checking import TaggerCheck

        return TaggerCheck(Path(path))

    def serve_compute(self, predictor: Any, items: list[Any], batch_size: int) -> list[list[Entity]]:
        """One server batch: entities per text."""
        return predictor.predict(items, batch_size)

    def serve_outputs(self, predictor: Any, outputs: Any, all_scores: bool = False) -> list[dict[str, Any]]:
        return [{"entities": [e.to_dict() for e in entities]} for entities in outputs]

    def hf_outputs(self, predictor: Any, outputs: Any, single: bool, top_k: int | None, function: str | None) -> Any:
        """{entity_group, score, word, start, end} per entity, as the Inference API answers (one list for one input)."""
        groups = [[{"entity_group": e.label, "score": e.score, "word": e.text, "start": e.start, "end": e.end}
                   for e in entities] for entities in outputs]  # fmt: skip
        return groups[0] if single else groups

    def counted_labels(self, predictor: Any, outputs: Any) -> Iterable[str]:
        return [entity.label for entities in outputs for entity in entities]

    def log_outputs(self, predictor: Any, outputs: Any) -> list[dict[str, Any]]:
        # An answer's confidence is that of its least sure entity; a text with no entity has none to give.
        return [{"labels": [e.label for e in entities],
                 "entities": [{"label": e.label, "start": e.start, "end": e.end, "score": round(e.score, 5)}
                              for e in entities],
                 **({"confidence": round(min(e.score for e in entities), 5)} if entities else {}),
                 "figures": {"entities": len(entities)}} for entities in outputs]  # fmt: skip

    def reference(self, path: Path, split: str) -> tuple[list[Any], list[Any] | None]:
        import json

        file = Path(path) / "data" / f"{split}.jsonl"
        if not file.is_file():
            return [], None
        rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        texts, answers = [], []
        for row in rows:  # words and IOB2 tags, back to a text with character spans
            text, spans, at = "", [], 0
            for i, (word, tag) in enumerate(zip(row["tokens"], row["tags"], strict=True)):
                at = len(text) + (1 if i else 0)
                text += (" " if i else "") + word
                if tag.startswith("B-"):
                    spans.append({"start": at, "end": at + len(word), "label": tag[2:]})
                elif tag.startswith("I-") and spans:
                    spans[-1]["end"] = at + len(word)
            texts.append(text)
            answers.append(spans)
        return texts, answers

    def is_correct(self, output: dict[str, Any], answer: Any) -> bool:
        found = {(e["start"], e["end"], e["label"]) for e in output.get("entities", [])}
        return found == {(e["start"], e["end"], e["label"]) for e in answer}

    def check_feedback(self, meta: dict[str, Any], item: Any, answer: Any) -> Any:
        from tunesmith.errors import DataError
        from tunesmith.tasks.token_classification.sentences import spans_to_sentence

        if not isinstance(answer, list) or not all(isinstance(e, dict) for e in answer):
            raise DataError('Send the correct entities as a list of {"start", "end", "label"} character spans '
                            '(end exclusive: text[start:end] is the entity), [] for none.')  # fmt: skip
        spans_to_sentence(item, answer, "feedback")  # the training loader's own checks: bounds, overlaps, words
        try:
            return sorted(({"start": int(e["start"]), "end": int(e["end"]), "label": str(e["label"])} for e in answer),
                          key=lambda e: e["start"])  # fmt: skip
        except (KeyError, TypeError, ValueError):
            raise DataError('Each entity needs "start", "end" (integers) and "label".') from None

    def feedback_rows(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"text": r["input"], "entities": r["answer"]} for r in records]

    def summary(self, result: TrainResult) -> Summary:
        m, crf = result.metrics, result.baseline
        rows = [*sorted(m["per_type"].items()), ("all (micro)", {**m, "support": ""})]
        crf_f1 = {**{k: v["f1"] for k, v in crf.get("per_type", {}).items()}, "all (micro)": crf.get("f1")}
        return Summary(
            title=f"{result.version.ref} - test split ({m['n']} sentences), entity level",
            columns=["entity type", "precision", "recall", "F1", "CRF baseline F1", "support"],
            rows=[[kind, f"{x['precision']:.4f}", f"{x['recall']:.4f}", f"{x['f1']:.4f}",
                   f"{crf_f1[kind]:.4f}" if crf_f1.get(kind) is not None else "-", str(x["support"])]
                  for kind, x in rows],
        )  # fmt: skip
