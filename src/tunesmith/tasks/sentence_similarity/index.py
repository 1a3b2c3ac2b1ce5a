"""A corpus embedded by a model version, kept beside the model and searched by cosine similarity.

`<home>/indexes/<name>/` holds the corpus (`corpus.jsonl`: id and text), its embeddings (`vectors.npy`, float32,
read without pickle), an HNSW graph (`usearch`) when the corpus is large, and `index.json` (which version
embedded it). A version's own files never change, so the index lives outside them; when the model a name
serves moves to another version, the next search re-embeds the corpus with it (`current`). A new index is
written into a fresh folder and swapped in by one rename, so a reader sees the old index or the new one.

Exact search (one matrix product) up to `ANN_FROM` texts; above, an HNSW graph (bench/search_index.py measured
where the graph starts paying on this CPU, and its recall against exact search).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.errors import DataError, NotFoundError

INDEX_DIR = "indexes"
# Texts from which an HNSW graph is built (bench/search_index.py, 2-core EPYC): exact search took 2.0 ms a query at
# 10k texts, 5.5 at 25k (already as long as embedding the query), 17.6 at 100k; the graph 0.6-1.0 ms at every size
# with recall@10 >= 0.999 against exact, for a build of ~7 s per 20k texts.
ANN_FROM = 20_000
HNSW_FILE = "hnsw.usearch"
EXPANSION_SEARCH = 128  # usearch's `ef` at query time (recall@10 >= 0.999 in the benchmark)


@dataclass
class Hit:
    id: str
    text: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "score": round(self.score, 6)}


def read_corpus(path: str | Path, text_column: str | None = None, id_column: str | None = None) -> tuple[list[str], list[str]]:
    """(ids, texts) of a corpus file: a text column (`text`, or the only column) and an optional `id` column."""
    from tunesmith.data import read_table

    frame = read_table(path)
    columns = [str(c) for c in frame.columns]
    text = text_column or next((c for c in ("text", "document", "passage", "sentence") if c in columns),
                               columns[0] if len(columns) == 1 else None)  # fmt: skip
    if text not in columns:
        raise DataError(f"{path}: no text column among {columns}; name it with --text-column.")
    ident = id_column or ("id" if "id" in columns else None)
    if id_column and id_column not in columns:
        raise DataError(f"{path}: no column {id_column!r} (columns: {columns}).")
    texts = ["" if v is None else str(v).strip() for v in frame[text]]
    ids = [str(v) for v in frame[ident]] if ident else [str(i) for i in range(len(texts))]
    empty = [i + 1 for i, t in enumerate(texts) if not t]
    if empty:
        raise DataError(f"{path}: {len(empty)} row(s) have an empty {text!r} (data rows {empty[:5]}); fill them in "
                        "or delete them.")  # fmt: skip
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: the {ident!r} column repeats ids; every text needs its own id.")
    return ids, texts


class CorpusIndex:
    """An index as it is on disk; `search` takes embedded queries."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.meta = json.loads((folder / "index.json").read_text(encoding="utf-8"))
        rows = [json.loads(line) for line in (folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
        self.ids, self.texts = [r["id"] for r in rows], [r["text"] for r in rows]
        self.vectors = np.load(folder / "vectors.npy", allow_pickle=False)
        self.graph: Any = None
        if (folder / HNSW_FILE).is_file():
            from usearch.index import Index

            self.graph = Index.restore(str(folder / HNSW_FILE), view=False)
            self.graph.expansion_search = EXPANSION_SEARCH

    @property
    def version(self) -> int:
        return int(self.meta["version"])

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        k = max(1, min(k, len(self.ids)))
        if self.graph is not None:
            found = self.graph.search(queries.astype(np.float32), k)
            keys = np.atleast_2d(found.keys)
            scores = 1 - np.atleast_2d(found.distances)  # usearch's cosine distance
        else:
            similarity = queries @ self.vectors.T
            keys = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
            order = np.take_along_axis(similarity, keys, axis=1).argsort(axis=1)[:, ::-1]
            keys = np.take_along_axis(keys, order, axis=1)
            scores = np.take_along_axis(similarity, keys, axis=1)
        return [[Hit(self.ids[int(i)], self.texts[int(i)], float(s)) for i, s in zip(row, score, strict=True)
                 if 0 <= int(i) < len(self.ids)] for row, score in zip(keys, scores, strict=True)]  # fmt: skip


def folder_of(home: str | Path, name: str) -> Path:
    from tunesmith.paths import check_name, confine

    return confine(Path(home) / INDEX_DIR, check_name(name))


def build(home: str | Path, name: str, version: int, embed: Any, ids: Sequence[str], texts: Sequence[str], *,
          source: str = "", ann_from: int = ANN_FROM) -> CorpusIndex:  # fmt: skip
    """Embed `texts` with `embed` and publish them as NAME's index, made by `version`."""
    folder = folder_of(home, name)
    staging = folder.with_name(f".{folder.name}.new-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        vectors = np.asarray(embed(list(texts)), dtype=np.float32)
        np.save(staging / "vectors.npy", vectors, allow_pickle=False)
        (staging / "corpus.jsonl").write_text("".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n"
                                                      for i, t in zip(ids, texts, strict=True)), encoding="utf-8")  # fmt: skip
        kind = "exact"
        if len(texts) >= ann_from:
            from usearch.index import Index

            graph = Index(ndim=vectors.shape[1], metric="cos", dtype="f32")
            graph.add(np.arange(len(texts)), vectors)
            graph.save(str(staging / HNSW_FILE))
            kind = "hnsw"
        meta = {"format": 1, "name": name, "version": version, "size": len(texts), "dimension": int(vectors.shape[1]),
                "kind": kind, "source": source, "created_at": datetime.now(UTC).isoformat()}  # fmt: skip
        (staging / "index.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        if folder.exists():
            os.replace(folder, old)
        os.replace(staging, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CorpusIndex(folder)


def current(home: str | Path, name: str, version: int, embed: Any) -> CorpusIndex:
    """NAME's index, re-embedded first when a different version made it."""
    folder = folder_of(home, name)
    if not (folder / "index.json").is_file():
        raise NotFoundError(f"{name} has no index: build one with `tunesmith index {name} corpus.csv`.")
    index = CorpusIndex(folder)
    if index.version == version:
        return index
    return build(home, name, version, embed, index.ids, index.texts, source=index.meta.get("source", ""),
                 ann_from=ANN_FROM)  # fmt: skip
