"""Sentence similarity: each data shape and check, training and scoring beside the untuned base and BM25, the
index and search, and the embedding routes through real clients (the official `openai` package)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tunesmith
from conftest import write_csv, write_jsonl
from tunesmith.tasks import get_task
from tunesmith.tasks.sentence_similarity.pairs import detect_shape, load_pair_data, read_rows
from tunesmith.tasks.sentence_similarity.retrieval import ranking_metrics, retrieval_set, top_k

TASK = "sentence-similarity"


def _by_label(rows: list[tuple[str, str]]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for text, label in rows:
        groups.setdefault(label, []).append(text)
    return groups


def make_pairs(rows: list[tuple[str, str]], seed: int = 0) -> list[dict[str, str]]:
    """(anchor, positive) from support texts of the same intent, a negative from another intent."""
    rng = random.Random(seed)
    groups = _by_label(rows)
    out = []
    for text, label in rows:
        others = [t for t in groups[label] if t != text]
        negative = rng.choice(groups[rng.choice([g for g in groups if g != label])])
        out.append({"anchor": text, "positive": rng.choice(others), "negative": negative})
    return out


def make_scored(rows: list[tuple[str, str]], seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for text, label in rows:
        other, other_label = rng.choice(rows)
        if other != text:
            out.append({"sentence1": text, "sentence2": other, "score": 4.5 if other_label == label else 0.5})
    return out


# -- data shapes and checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(("columns", "shape"), [
    (["sentence1", "sentence2", "score"], "scored-pairs"),
    (["question1", "question2", "is_duplicate"], "scored-pairs"),
    (["anchor", "positive"], "pairs"),
    (["query", "positive"], "pairs"),
    (["anchor", "positive", "negative"], "triplets"),
    (["text", "label"], "labelled-texts"),
])  # fmt: skip
def test_the_shape_is_told_by_the_columns(columns: list[str], shape: str) -> None:
    assert detect_shape(columns)[0] == shape


def test_unknown_columns_say_which_shapes_are_read() -> None:
    with pytest.raises(tunesmith.DataError, match="anchor, positive"):
        detect_shape(["question", "reply"])
    with pytest.raises(tunesmith.DataError, match="no score column"):
        detect_shape(["sentence1", "sentence2"])


def test_checks_name_the_rows(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "pairs.csv", [
        ("where is my parcel", "my order has not arrived"),
        ("", "an empty anchor"),
        ("the same text", "the same text"),
        ("where is my parcel", "my order has not arrived"),
        ("refund please", "I want my money back"),
    ], header=("anchor", "positive"))  # fmt: skip
    shape, rows, issues, _ = read_rows(path)
    assert shape == "pairs" and len(rows) == 2
    found = {i.code: i.message for i in issues}
    assert "data rows 2" in found["empty_text"]
    assert "data rows 3" in found["identical_pair"]
    assert "data rows 4" in found["duplicates"]


def test_scores_outside_the_declared_range_are_an_error(tmp_path: Path) -> None:
    rows = [("a cat sits", "a cat is sitting", 4.0), ("a dog runs", "the stock fell", 0.2), ("x y", "y z", 7.5)]
    path = write_csv(tmp_path / "sts.csv", rows, header=("sentence1", "sentence2", "score"))
    with pytest.raises(tunesmith.DataError, match=r"outside \[0, 5\] \(data rows 3\)"):
        read_rows(path)
    shape, read, _, scale = read_rows(path, score_range=(0.0, 10.0))
    assert shape == "scored-pairs" and len(read) == 3 and scale == (0.0, 10.0)
    bad = write_csv(tmp_path / "bad.csv", [("a", "b", "high")], header=("sentence1", "sentence2", "score"))
    with pytest.raises(tunesmith.DataError, match="no numeric 'score'"):
        read_rows(bad)


def test_splits_keep_an_anchor_together_and_given_files_are_checked_for_leaks(
    tmp_path: Path, support_rows: list[tuple[str, str]]
) -> None:
    pairs = make_pairs(support_rows)
    pairs += [{**p, "positive": p["negative"] + " again"} for p in pairs[:30]]  # a second row for 30 anchors
    data = load_pair_data(tunesmith.RunConfig.model_validate(
        {"task": TASK, "data": {"train": str(write_jsonl(tmp_path / "train.jsonl", pairs))}}))  # fmt: skip
    assert data.shape == "triplets" and len(data.train) + len(data.validation) + len(data.test) == len(pairs)
    sides = {what: {r["anchor"] for r in getattr(data, what)} for what in ("train", "validation", "test")}
    assert not sides["train"] & sides["test"] and not sides["train"] & sides["validation"]

    test = write_jsonl(tmp_path / "test.jsonl", pairs[:5])
    leaked = load_pair_data(tunesmith.RunConfig.model_validate(
        {"task": TASK, "data": {"train": str(tmp_path / "train.jsonl"), "test": str(test)}}))  # fmt: skip
    assert any(i.code == "leak" for i in leaked.issues)
    with pytest.raises(tunesmith.DataError, match="same columns"):
        load_pair_data(tunesmith.RunConfig.model_validate({"task": TASK, "data": {
            "train": str(tmp_path / "train.jsonl"),
            "test": str(write_csv(tmp_path / "t.csv", support_rows))}}))  # fmt: skip


def test_ranking_metrics_on_a_known_ranking() -> None:
    ranked = np.array([[3, 1, 2], [0, 2, 1]])
    metrics = ranking_metrics(ranked, [{1}, {0, 1}])
    assert metrics["mrr_at_10"] == pytest.approx((1 / 2 + 1) / 2)
    assert metrics["accuracy_at_1"] == 0.5 and metrics["recall_at_1"] == pytest.approx((0 + 0.5) / 2)
    ideal_two = 1 + 1 / np.log2(3)
    assert metrics["ndcg_at_10"] == pytest.approx(((1 / np.log2(3)) + (1 + 1 / np.log2(4)) / ideal_two) / 2)
    # A labelled text never finds itself.
    found = retrieval_set("labelled-texts", [{"text": "a", "label": "x"}, {"text": "b", "label": "x"},
                                             {"text": "c", "label": "y"}])  # fmt: skip
    assert found is not None and found.queries == ["a", "b"]
    assert top_k(np.eye(3)[:2] + 0.1, found.itself, 1).tolist() == [[1], [0]]


# -- training and scoring --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["pairs", "scored-pairs"])
def test_each_shape_trains_and_is_scored_beside_the_untuned_base_and_bm25(
    shape: str, tmp_path: Path, tiny_model: str, support_rows: list[tuple[str, str]]
) -> None:
    registry = tunesmith.Registry(tmp_path / "home")
    rows = make_scored(support_rows) if shape == "scored-pairs" else [
        {k: r[k] for k in ("anchor", "positive")} for r in make_pairs(support_rows)]  # fmt: skip
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    result = tunesmith.train(data, task=TASK, name="emb", registry=registry, progress=False, base_model=tiny_model,
                             epochs=1, batch_size=16, learning_rate=5e-4, log=lambda _line: None)  # fmt: skip
    headline = "spearman" if shape == "scored-pairs" else "mrr_at_10"
    evaluation = json.loads((result.version.path / "metrics.json").read_text())
    for scores in (evaluation["test"], evaluation["untuned"], evaluation["baseline"]):
        assert 0 <= abs(scores[headline]) <= 1 and scores["score"] == scores[headline]
    meta = json.loads((result.version.path / "tunesmith.json").read_text())
    assert meta["data_shape"] == shape and meta["loss"] == ("CoSENTLoss" if shape == "scored-pairs" else
                                                            "MultipleNegativesRankingLoss")  # fmt: skip
    # Through sentence-transformers' loader too, the encoder trained without attention dropout (the fused path).
    assert json.loads((result.version.path / "model" / "config.json").read_text())["attention_probs_dropout_prob"] == 0

    # The artifact's model/ is a sentence-transformers folder giving the embeddings tunesmith serves.
    from sentence_transformers import SentenceTransformer

    texts = ["where is my parcel", "refund please"]
    theirs = SentenceTransformer(str(result.version.path / "model"), device="cpu").encode(texts)
    ours = tunesmith.load_model("emb", registry=registry).embed(texts)
    assert np.allclose(theirs, ours, atol=1e-5)


def test_labelled_texts_train_an_embedding_model_and_lora_is_merged(
    tmp_path: Path, tiny_model: str, support_rows: list[tuple[str, str]]
) -> None:
    """A classification file trains an embedding model (texts of a label are positives for each other); LoRA's
    adapter is merged, so the artifact is a plain encoder that exports and serves like a fully tuned one."""
    registry = tunesmith.Registry(tmp_path / "home")
    data = write_csv(tmp_path / "support.csv", support_rows)
    result = tunesmith.train(data, task=TASK, name="emb", registry=registry, progress=False, base_model=tiny_model,
                             method="lora", max_steps=6, batch_size=16, log=lambda _line: None)  # fmt: skip
    assert result.metrics["n"] > 0 and "mrr_at_10" in result.metrics
    assert not (result.version.path / "adapter").exists()
    assert json.loads((result.version.path / "tunesmith.json").read_text())["data_shape"] == "labelled-texts"


def test_an_embedding_model_learns_on_the_embedded_default(tmp_path: Path, support_rows: list[tuple[str, str]]) -> None:
    """On the embedded MiniLM, a short run on pairs of one intent ranks the test positives better than the untuned
    model, which already beats nothing: the loss is wired the right way round."""
    registry = tunesmith.Registry(tmp_path / "home")
    pairs = [{k: r[k] for k in ("anchor", "positive")} for r in make_pairs(support_rows, seed=4)]
    data = write_jsonl(tmp_path / "train.jsonl", pairs)
    result = tunesmith.train(data, task=TASK, name="emb", registry=registry, progress=False, max_steps=20,
                             batch_size=16, log=lambda _line: None)  # fmt: skip
    untuned = json.loads((result.version.path / "metrics.json").read_text())["untuned"]
    assert result.metrics["mrr_at_10"] >= untuned["mrr_at_10"] - 0.02, (result.metrics, untuned)
    assert result.metrics["mrr_at_10"] > 0.3


# -- index, search and serving ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedding_home(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, support_rows: list) -> Path:
    """A home with an exported embedding model 'emb' (version 1) and a text classifier 'clf'."""
    folder = tmp_path_factory.mktemp("embeddings")
    registry = tunesmith.Registry(folder / "home")
    pairs = [{k: r[k] for k in ("anchor", "positive")} for r in make_pairs(support_rows)]
    tunesmith.train(write_jsonl(folder / "pairs.jsonl", pairs), task=TASK, name="emb", registry=registry,
                    progress=False, base_model=tiny_model, epochs=2, batch_size=16, learning_rate=5e-4,
                    log=lambda _line: None)  # fmt: skip
    tunesmith.export_model("emb", registry=registry)
    tunesmith.train(write_csv(folder / "support.csv", support_rows), name="clf", registry=registry, progress=False,
                    base_model=tiny_model, max_steps=2, log=lambda _line: None)  # fmt: skip
    return folder / "home"


def test_a_model_fine_tuned_below_its_untuned_base_says_so(embedding_home: Path) -> None:
    """A short budget can leave a large encoder worse than before (multilingual-e5 on SQuAD in 5 minutes): the run
    says so beside BM25's line, with the steps it took."""
    from tunesmith.tasks.base import TrainResult

    version = tunesmith.Registry(embedding_home).resolve("emb")
    evaluation = json.loads((version.path / "metrics.json").read_text())
    untuned = evaluation["untuned"]["score"]
    task = get_task(TASK)
    worse = TrainResult(version, {**evaluation["test"], "score": untuned - 0.05}, {"score": 0.0})
    warning = task.baseline_warning(worse)
    assert warning is not None and "BM25" not in warning
    steps = json.loads((version.path / "tunesmith.json").read_text())["plan"]["steps_done"]
    assert f"from {untuned:.4f} (the untuned base model) to {untuned - 0.05:.4f} in {steps} steps" in warning
    assert task.baseline_warning(TrainResult(version, {"score": untuned}, {"score": 0.0})) is None
    both = task.baseline_warning(TrainResult(version, {"score": untuned - 0.05}, {"score": untuned}))
    assert both is not None and len(both.splitlines()) == 2


def test_export_keeps_the_embeddings(embedding_home: Path) -> None:
    record = json.loads(next((embedding_home / "models" / "emb").rglob("export.json")).read_text())
    assert record["variants"]["fp32"]["min_cosine"] > 0.9999 and record["variants"]["fp32"]["agreement"] == 1.0
    assert record["variants"]["int8"]["mean_cosine"] > 0.9, record["variants"]["int8"]


def test_index_and_search_exact_and_approximate(
    tmp_path: Path, embedding_home: Path, support_rows: list[tuple[str, str]]
) -> None:
    from conftest import private_copy
    from tunesmith.tasks.sentence_similarity import index as indexes

    home = private_copy(embedding_home, tmp_path / "home")
    registry = tunesmith.Registry(home)
    corpus = write_csv(tmp_path / "corpus.csv", [(f"doc{i}", t) for i, (t, _) in enumerate(support_rows)],
                       header=("id", "text"))  # fmt: skip
    record = tunesmith.index("emb", corpus, registry=registry, log=lambda _line: None)
    assert record["size"] == len(support_rows) and record["kind"] == "exact" and record["version"] == 1
    query = support_rows[7][0]
    hits = tunesmith.search("emb", query, top_k=3, registry=registry)[0]
    assert hits[0]["id"] == "doc7" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)

    embedder = tunesmith.load_model("emb", registry=registry)
    exact = indexes.CorpusIndex(indexes.folder_of(home, "emb"))
    graph = indexes.build(home, "emb", 1, embedder.embed, exact.ids, exact.texts, ann_from=10)
    assert graph.meta["kind"] == "hnsw" and graph.graph is not None
    queries = embedder.embed([t for t, _ in support_rows[:20]])
    same = [len({h.id for h in a} & {h.id for h in b}) / 5 for a, b in zip(exact.search(queries, 5),
                                                                        graph.search(queries, 5), strict=True)]  # fmt: skip
    assert np.mean(same) >= 0.95

    with pytest.raises(tunesmith.ModelError, match="sentence-similarity"):
        tunesmith.index("clf", corpus, registry=registry)
    with pytest.raises(tunesmith.ConfigError):  # a name that would leave the indexes folder
        indexes.folder_of(home, "../escape")


def test_the_index_is_re_embedded_when_the_version_changes(
    tmp_path: Path, embedding_home: Path, tiny_model: str, support_rows: list[tuple[str, str]]
) -> None:
    from conftest import private_copy

    home = private_copy(embedding_home, tmp_path / "home")
    registry = tunesmith.Registry(home)
    corpus = write_csv(tmp_path / "corpus.csv", [(t,) for t, _ in support_rows[:30]], header=("text",))
    tunesmith.index("emb", corpus, registry=registry, log=lambda _line: None)
    pairs = [{k: r[k] for k in ("anchor", "positive")} for r in make_pairs(support_rows, seed=9)]
    tunesmith.train(write_jsonl(tmp_path / "more.jsonl", pairs), task=TASK, name="emb", registry=registry,
                    progress=False, base_model=tiny_model, max_steps=3, log=lambda _line: None)  # fmt: skip
    import subprocess
    import sys

    tunesmith_cli = str(Path(sys.executable).parent / "tunesmith")
    done = subprocess.run([tunesmith_cli, "--home", str(home), "search", "emb@2", "refund please", "--json"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)[0]["hits"]) == 10
    meta = json.loads((home / "indexes" / "emb" / "index.json").read_text())
    assert meta["version"] == 2 and meta["size"] == 30

    # The gate judges each test query: is its relevant text first among 10 candidates?
    from tunesmith.gating import gate

    verdict = gate(registry, "emb@2", "emb@1", log=lambda _line: None)
    test_split = next(c for c in verdict.criteria if c.name == "test split")
    assert test_split.passed is not None and test_split.figures["n"] > 0
    items, answers = get_task(TASK).reference(registry.resolve("emb@1").path, "test")
    test_rows = (registry.resolve("emb@1").path / "data" / "test.jsonl").read_text().splitlines()
    positives = {(r["anchor"], r["positive"]) for r in map(json.loads, test_rows)}
    assert items and answers == [1] * len(items)
    # the query, its relevant text, then distractors from the split that are not relevant to it
    assert all((q, right) in positives and 2 <= len(rest) + 2 <= 10 for q, right, *rest in items)
    assert all((q, other) not in positives for q, _, *rest in items for other in rest)


def test_embeddings_over_http_with_the_openai_client_tei_and_hf_shapes(
    tmp_path: Path, embedding_home: Path, start_server: Any, support_rows: list[tuple[str, str]]
) -> None:
    import httpx
    import openai

    from conftest import private_copy

    home = private_copy(embedding_home, tmp_path / "home")
    server = start_server(home, "emb", "clf")
    texts = ["where is my parcel", "refund please", "the app crashes"]
    local = tunesmith.load_model("emb", registry=tunesmith.Registry(home)).embed(texts)

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    answer = client.embeddings.create(model="emb", input=texts)  # the client asks for base64 and decodes it
    vectors = np.array([d.embedding for d in answer.data])
    assert vectors.shape == local.shape and np.allclose(vectors, local, atol=1e-4)
    assert answer.usage.prompt_tokens > 0 and answer.model == "emb"
    single = client.embeddings.create(model="emb", input=texts[0], encoding_format="float")
    assert np.allclose(single.data[0].embedding, local[0], atol=1e-4)
    with pytest.raises(openai.UnprocessableEntityError, match="dimension"):
        client.embeddings.create(model="emb", input=texts[0], dimensions=8)
    with pytest.raises(openai.NotFoundError, match="text-classification"):
        client.embeddings.create(model="clf", input=texts[0])

    tei = httpx.post(f"{server.url}/embed", json={"inputs": texts})
    assert tei.status_code == 200 and np.allclose(tei.json(), local, atol=1e-4)
    hf = httpx.post(f"{server.url}/models/emb", json={"inputs": texts[0]})
    assert hf.status_code == 200 and np.allclose(hf.json(), local[0], atol=1e-4)
    token_ids = httpx.post(f"{server.url}/v1/embeddings", json={"model": "emb", "input": [1, 2, 3]})
    assert token_ids.status_code == 422 and "text" in token_ids.json()["error"]["message"]  # OpenAI's error shape

    missing = httpx.post(f"{server.url}/v1/models/emb/search", json={"query": "refund"})
    assert missing.status_code == 404 and "tunesmith index" in missing.json()["error"]
    corpus = write_csv(tmp_path / "corpus.csv", [(t,) for t, _ in support_rows], header=("text",))
    tunesmith.index("emb", corpus, registry=tunesmith.Registry(home), log=lambda _line: None)
    found = httpx.post(f"{server.url}/v1/models/emb/search", json={"query": support_rows[3][0], "top_k": 3})
    assert found.status_code == 200, found.text
    body = found.json()
    assert body["index"]["size"] == len(support_rows) and len(body["hits"]) == 3
    assert body["hits"][0]["text"] == support_rows[3][0]
    both = httpx.post(f"{server.url}/v1/models/emb/search", json={"query": "a", "queries": ["b"]})
    assert both.status_code == 422
