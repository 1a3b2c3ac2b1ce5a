"""Sentence similarity: an embedding model for semantic search, FAQ matching and duplicate detection.

Trains on scored pairs, pairs, triplets or labelled texts (`pairs`) with sentence-transformers' losses
(`training`); scores Spearman or retrieval metrics beside the untuned base model and BM25 (`retrieval`);
exports ONNX fp32 + int8 checked by retrieval agreement and cosine (`checking`); embeds corpora into a
versioned index (`index`); serves OpenAI's `/v1/embeddings`, TEI's `/embed`, the Hugging Face
feature-extraction shape on `/models/NAME` and `/v1/models/NAME/search` (`routes`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import DataError
from tunesmith.tasks.base import BELOW_BASELINE, Log, Summary, Task, TrainResult

if TYPE_CHECKING:
    import numpy as np

    from tunesmith.export import ExportCheck
    from tunesmith.registry import ModelVersion
    from tunesmith.tasks.sentence_similarity.encoder import Embedder


@dataclass
class Embedding:
    """One served text: its embedding and its token count; for a judged item (query, right text, distractors...),
    the query's cosine to each candidate."""

    vector: np.ndarray
    tokens: int
    candidates: list[float] | None = None


# A stored split's query is judged by whether its relevant text ranks first among this many candidates (the rest
# drawn from the split's other texts): a right-or-wrong per row, which `gate` compares between two versions.
CANDIDATES = 10
CANDIDATES_KEPT = 20_000  # judged candidates kept embedded per model: 30 MB at 384 dimensions


HEADLINE = {"spearman": "Spearman", "mrr_at_10": "MRR@10", "ndcg_at_10": "NDCG@10", "accuracy_at_1": "accuracy@1",
            "recall_at_10": "recall@10"}  # fmt: skip


class SentenceSimilarity(Task):
    name = "sentence-similarity"
    peft_task_type = "FEATURE_EXTRACTION"
    main_metric = "score"  # Spearman for scored pairs, MRR@10 for retrieval
    headline_metrics = tuple(HEADLINE)
    warm_up = "warm-up"
    request = "texts"
    data_shape = "text-pairs"
    methods = ("full", "lora")
    training = "tunesmith.tasks.sentence_similarity.training"
    baseline_name = "BM25 baseline"
    compared_metric = "score"
    below_baseline_hint = ("Lexical matching wins on this data: try more pairs or steps (--max-minutes), or search "
                           "with BM25 beside the model (hybrid search).")  # fmt: skip
    judges_feedback = False

    def load(self, path: str | Path, backend: str = "auto", threads: int | None = None) -> Embedder:
        from tunesmith.tasks.sentence_similarity.encoder import Embedder

        return Embedder.from_artifact(path, backend, threads)

    def evaluate_file(self, predictor: Any, data: str | Path, out_dir: str | Path, **options: Any) -> dict[str, Any]:
        from tunesmith.tasks.sentence_similarity.training import evaluate_file

        return evaluate_file(predictor, data, out_dir)

    def predict_lines(self, predictor: Any, inputs: Sequence[str], **options: Any) -> Iterator[str]:
        vectors = predictor.embed(list(inputs), batch_size=options.get("batch_size") or 32)
        for text, vector in zip(inputs, vectors, strict=True):
            yield json.dumps([round(float(x), 6) for x in vector]) + f"\t{text}"

    def predict_records(self, predictor: Any, inputs: Sequence[str], **options: Any) -> list[dict[str, Any]]:
        vectors = predictor.embed(list(inputs), batch_size=options.get("batch_size") or 32)
        return [{"input": text, "embedding": [float(x) for x in v]} for text, v in zip(inputs, vectors, strict=True)]

    def export_check(self, path: str | Path) -> ExportCheck:
        from tunesmith.tasks.sentence_similarity.checking import EmbeddingCheck

        return EmbeddingCheck(Path(path))

    def serve_compute(self, predictor: Any, items: list[Any], batch_size: int) -> list[Embedding]:
        """Texts (what the server batches), or judged items from `reference`: (query, right text, distractors...)."""
        if not items or isinstance(items[0], str):
            vectors, tokens = predictor.embed_counted(items, batch_size)
            return [Embedding(v, n) for v, n in zip(vectors, tokens, strict=True)]
        known = predictor.candidates
        candidates = list(dict.fromkeys(str(t) for item in items for t in item[1:]))
        if len(known) + len(candidates) > CANDIDATES_KEPT:
            known.clear()
        fresh = [t for t in candidates if t not in known]
        if fresh:
            known.update(zip(fresh, predictor.embed(fresh, batch_size), strict=True))
        queries = list(dict.fromkeys(str(item[0]) for item in items))
        vectors, tokens = predictor.embed_counted(queries, batch_size)
        at = {text: i for i, text in enumerate(queries)}
        first = [at[str(item[0])] for item in items]
        return [Embedding(vectors[q], tokens[q], [float(vectors[q] @ known[str(t)]) for t in item[1:]])
                for q, item in zip(first, items, strict=True)]  # fmt: skip

    def serve_outputs(self, predictor: Any, outputs: Any, all_scores: bool = False) -> list[dict[str, Any]]:
        return [{"embedding": [float(x) for x in o.vector]} for o in outputs]

    def hf_outputs(self, predictor: Any, outputs: Any, single: bool, top_k: int | None, function: str | None) -> Any:
        """Feature extraction as the Inference API answers it for sentence-transformers models: the pooled
        embedding (a list of floats for one input, a list of them for several)."""
        vectors = [[float(x) for x in o.vector] for o in outputs]
        return vectors[0] if single else vectors

    def log_outputs(self, predictor: Any, outputs: Any) -> list[dict[str, Any]]:
        import numpy as np

        centroid = predictor.meta.get("centroid")
        rows = []
        for o in outputs:
            figures = {"tokens": float(o.tokens)}
            if centroid:  # how far traffic is from the texts the model was scored on: drift shows here first
                figures["centroid_cosine"] = round(float(np.dot(o.vector, np.asarray(centroid))), 5)
            row: dict[str, Any] = {"figures": figures}
            if o.candidates:
                row["best"] = int(np.argmax(o.candidates)) + 1  # the candidate ranked first (1: the right text)
            rows.append(row)
        return rows

    def reference(self, path: Path, split: str) -> tuple[list[Any], list[Any] | None]:
        """Retrieval splits: each query with its relevant text and distractors from the split, the answer being the
        relevant text's position (1). Scored pairs: their first texts, without answers (no right-or-wrong per row)."""
        import random

        from tunesmith.artifact import read_meta
        from tunesmith.tasks.sentence_similarity.retrieval import retrieval_set

        file = Path(path) / "data" / f"{split}.jsonl"
        if not file.is_file():
            return [], None
        rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        found = retrieval_set(str(read_meta(path).get("data_shape", "pairs")), rows)
        if found is None:
            return [str(r.get("sentence1", "")) for r in rows], None
        rng = random.Random(0)
        items: list[Any] = []
        for q, (query, relevant) in enumerate(zip(found.queries, found.relevant, strict=True)):
            own = found.itself[q]
            taken = set(relevant) | ({own} if own is not None else set())
            if len(found.corpus) - len(taken) < 1:
                continue
            distractors: list[int] = []
            while len(distractors) < min(CANDIDATES - 1, len(found.corpus) - len(taken)):
                pick = rng.randrange(len(found.corpus))
                if pick not in taken:
                    taken = taken | {pick}
                    distractors.append(pick)
            items.append((query, found.corpus[min(relevant)], *(found.corpus[i] for i in distractors)))
        return items, [1] * len(items)

    def is_correct(self, output: dict[str, Any], answer: Any) -> bool:
        """A judged query (from `reference`) is right when its relevant text ranked first among the candidates."""
        return output.get("best") == answer

    def check_feedback(self, meta: dict[str, Any], item: Any, answer: Any) -> Any:
        shape = meta.get("data_shape", "pairs")
        if shape == "labelled-texts":
            if not isinstance(answer, str) or not answer.strip():
                raise DataError("This model was trained on labelled texts: send the text's label as a string.")
            return {"label": answer.strip()}
        if shape == "scored-pairs":
            low, high = meta.get("score_range") or (0.0, 1.0)
            ok = isinstance(answer, dict) and isinstance(answer.get("text"), str) and answer["text"].strip() and \
                isinstance(answer.get("score"), int | float) and not isinstance(answer["score"], bool)
            if not ok or not low <= answer["score"] <= high:
                raise DataError(f'Send {{"text": another text, "score": how similar, {low:g}-{high:g}}}.')
            return {"text": answer["text"].strip(), "score": float(answer["score"])}
        if isinstance(answer, str):
            answer = {"positive": answer}
        wanted = ("positive", "negative") if shape == "triplets" else ("positive",)
        if not isinstance(answer, dict) or not all(isinstance(answer.get(k), str) and answer[k].strip() for k in wanted):
            raise DataError(f"Send {' and '.join(wanted)} text(s) that should (not) match the input: "
                            f"{{{', '.join(f'{k!r}: text' for k in wanted)}}}.")  # fmt: skip
        if answer["positive"].strip() == str(item).strip():
            raise DataError("The positive is the input itself; send another text that should match it.")
        return {k: answer[k].strip() for k in wanted}

    def feedback_rows(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows = []
        for r in records:
            text, answer = str(r["input"]), r["answer"]
            if "label" in answer:
                rows.append({"text": text, "label": answer["label"]})
            elif "score" in answer:
                rows.append({"sentence1": text, "sentence2": answer["text"], "score": answer["score"]})
            else:
                rows.append({"anchor": text, **answer})
        return rows

    def baseline_warning(self, result: TrainResult) -> str | None:
        """BM25's line (`Task.baseline_warning`), and one when fine-tuning left the model below its untuned base:
        a short budget moves a large encoder away from what it knew before it learns the new data (multilingual-e5
        on SQuAD: 22 steps in 5 minutes took MRR@10 from 0.865 to 0.803)."""
        from tunesmith.artifact import read_meta

        lines = [line for line in [super().baseline_warning(result)] if line]
        evaluation = json.loads((Path(result.version.path) / "metrics.json").read_text(encoding="utf-8"))
        fine, untuned = result.metrics.get(self.compared_metric), evaluation.get("untuned", {}).get(self.compared_metric)
        if isinstance(fine, float) and isinstance(untuned, float) and fine < untuned - BELOW_BASELINE:
            steps = (read_meta(result.version.path).get("plan") or {}).get("steps_done")
            lines.append(f"warning: fine-tuning lowered the test {self.compared_metric} from {untuned:.4f} (the untuned "
                         f"base model) to {fine:.4f}{f' in {steps} steps' if steps else ''}. Give it more steps "
                         "(--max-minutes, --epochs) or a lower --learning-rate, or embed with the base model as it "
                         "is.")  # fmt: skip
        return "\n".join(lines) or None

    def summary(self, result: TrainResult) -> Summary:
        evaluation = json.loads((Path(result.version.path) / "metrics.json").read_text(encoding="utf-8"))
        untuned, m = evaluation.get("untuned", {}), result.metrics
        rows = [[label, f"{m[k]:.4f}", f"{untuned[k]:.4f}" if k in untuned else "-",
                 f"{result.baseline[k]:.4f}" if k in result.baseline else "-"]
                for k, label in HEADLINE.items() if k in m]  # fmt: skip
        what = "pairs" if "spearman" in m else f"queries against {m.get('corpus', 0)} texts"
        return Summary(f"{result.version.ref} - test split ({m['n']} {what})",
                       ["metric", "fine-tuned", "untuned base", "BM25"], rows)  # fmt: skip

    def evaluation_lines(self, result: dict[str, Any]) -> list[str]:
        lines = super().evaluation_lines(result)
        bm25 = result.get("baseline", {})
        shown = ", ".join(f"{k} {bm25[k]:.4f}" for k in self.headline_metrics if k in bm25)
        return [*lines, f"BM25 on the same rows: {shown}."] if shown else lines

    # -- search --------------------------------------------------------------------------------------

    def build_index(self, version: ModelVersion, home: Path, corpus: Path, *, log: Log = print,
                    **options: Any) -> dict[str, Any]:  # fmt: skip
        from tunesmith.tasks.sentence_similarity.index import build, read_corpus

        ids, texts = read_corpus(corpus, options.get("text_column"), options.get("id_column"))
        embedder = self.load(version.path, options.get("backend", "auto"))
        log(f"Embedding {len(texts):,} texts with {version.ref} ({embedder.backend}) ...")
        index = build(home, version.name, version.version, embedder.embed, ids, texts, source=str(corpus))
        return index.meta

    def search(self, version: ModelVersion, home: Path, queries: Sequence[str], top_k: int = 10,
               backend: str = "auto") -> list[list[dict[str, Any]]]:  # fmt: skip
        from tunesmith.tasks.sentence_similarity.index import current

        embedder = self.load(version.path, backend)
        index = current(home, version.name, version.version, embedder.embed)
        return [[h.to_dict() for h in row] for row in index.search(embedder.embed(list(queries)), top_k)]

    def routes(self, server: Any, read: list[Any]) -> Any:
        from tunesmith.tasks.sentence_similarity.routes import routes

        return routes(server, read)
