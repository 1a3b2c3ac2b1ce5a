"""Token classification (NER): every input format, every validation rule, alignment, windows, spans, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import tunesmith
from conftest import fuzz_openapi, make_sentences, write_conll, write_jsonl
from tunesmith.errors import DataError
from tunesmith.inference import torch_runner
from tunesmith.tasks import get_task
from tunesmith.tasks.token_classification.predictor import EntityTagger, group_entities
from tunesmith.tasks.token_classification.sentences import Sentence, normalize_tags, read_sentences, spans_to_sentence
from tunesmith.tasks.token_classification.training import encode


@pytest.mark.parametrize("columns", [2, 3, 4])
def test_conll_columns_and_docstart(tmp_path: Path, columns: int) -> None:
    sentences = make_sentences(5)
    read = read_sentences(write_conll(tmp_path / "d.conll", sentences, columns))
    assert [(s.tokens, s.tags) for s in read] == [(s.tokens, s.tags) for s in sentences]


def test_schemes_are_detected_and_normalised() -> None:
    iob1 = [Sentence(["John", "Smith", "met", "Ann", "Bob"], ["I-PER", "I-PER", "O", "I-PER", "B-PER"])]
    assert normalize_tags(iob1, "x") == "IOB1"
    assert iob1[0].tags == ["B-PER", "I-PER", "O", "B-PER", "B-PER"]
    bioes = [Sentence(["New", "York", "is", "big", "Ann"], ["B-LOC", "E-LOC", "O", "O", "S-PER"])]
    assert normalize_tags(bioes, "x") == "BIOES"
    assert bioes[0].tags == ["B-LOC", "I-LOC", "O", "O", "B-PER"]
    bilou = [Sentence(["a", "b", "c"], ["U-X", "B-Y", "L-Y"])]
    assert normalize_tags(bilou, "x") == "BILOU" and bilou[0].tags == ["B-X", "B-Y", "I-Y"]
    iob2 = [Sentence(["a", "b"], ["B-X", "I-X"])]
    assert normalize_tags(iob2, "x") == "IOB2" and iob2[0].tags == ["B-X", "I-X"]


def test_jsonl_tokens_and_spans(tmp_path: Path) -> None:
    records = [
        {"tokens": ["Ann", "lives", "in", "Rome"], "ner_tags": ["B-PER", "O", "O", "B-LOC"]},
        {"text": "Bob Stone visited New-York.", "entities": [{"start": 0, "end": 9, "label": "PER"},
                                                             {"start": 18, "end": 26, "label": "LOC"}]},
        {"text": "Call Ann!", "label": [[5, 8, "PER"]]},  # doccano's shape
    ]  # fmt: skip
    read = read_sentences(write_jsonl(tmp_path / "d.jsonl", records))
    assert read[0].tags == ["B-PER", "O", "O", "B-LOC"]
    assert read[1].tokens == ["Bob", "Stone", "visited", "New", "-", "York", "."]
    assert read[1].tags == ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC", "O"]
    assert read[2].tags == ["O", "B-PER", "O"]


def test_span_inside_a_word_splits_the_word() -> None:
    sentence = spans_to_sentence("preorder the iPhone15 now", [(13, 19, "PRODUCT")], "x")
    assert sentence.tokens == ["preorder", "the", "iPhone", "15", "now"]
    assert sentence.tags == ["O", "O", "B-PRODUCT", "O", "O"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("Ann\tB-PER\nRome\n", "expected a token and a tag"),
        ("Ann\tPERSON\n", "unknown tag(s) 'PERSON'"),
        ('{"tokens": ["a", "b"], "tags": ["O"]}\n', "must be lists of the same length"),
        ('{"tokens": ["a"]}\n', "no tags"),
        (
            '{"text": "Ann went", "entities": [{"start": 0, "end": 4, "label": "PER"}]}\n',
            "starts or ends with whitespace",
        ),
        ('{"text": "Ann", "entities": [{"start": 0, "end": 9, "label": "PER"}]}\n', "outside the text"),
        ('{"text": "Ann Lee", "entities": [[0, 3, "PER"], [2, 7, "PER"]]}\n', "overlap"),
        ('{"text": "Ann", "entities": [{"start": 0, "end": 3}]}\n', "an entity must be"),
        ('{"sentence": "Ann"}\n', "expected 'tokens' and 'tags'"),
        ('{"tokens": ["a"], "tags": ["O"]\n', "not valid JSON"),
        ("", "holds no sentences"),
    ],
)
def test_validation_rules(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / ("d.jsonl" if content.startswith("{") else "d.conll")
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        normalize_tags(read_sentences(path), str(path))


def test_no_entities_is_refused(tmp_path: Path, tiny_model: str) -> None:
    path = write_conll(tmp_path / "plain.conll", [Sentence(["a", "b"], ["O", "O"])] * 20)
    with pytest.raises(DataError, match="has no entities"):
        tunesmith.train(
            path, task="token-classification", base_model=tiny_model, registry=tunesmith.Registry(tmp_path / "h")
        )


def test_first_sub_token_carries_the_tag(tiny_model: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    sentence = Sentence(["unbelievably", "carol", "went"], ["O", "B-PER", "O"])
    row = encode(tokenizer, [sentence], {"O": 0, "B-PER": 1, "I-PER": 2}, 64)[0]
    words = tokenizer([sentence.tokens], is_split_into_words=True).word_ids(0)
    assert len(words) > 5  # the tiny vocabulary splits these words into several pieces
    for i, word in enumerate(words):
        first = word is not None and (i == 0 or words[i - 1] != word)
        expected = {0: 0, 1: 1, 2: 0}[word] if first else -100
        assert row["labels"][i] == expected


def test_long_sentences_cross_window_boundaries(tiny_model: str) -> None:
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    labels = ["O", "B-PER", "I-PER"]
    long = Sentence(["carol", "went"] * 60, ["B-PER", "O"] * 60)  # 120 words, far over 32 tokens
    rows = encode(tokenizer, [long], {t: i for i, t in enumerate(labels)}, 32)
    assert len(rows) > 3 and all(len(r["input_ids"]) <= 32 for r in rows)
    labelled = sum(1 for r in rows for label in r["labels"] if label != -100)
    assert labelled > len(long.tokens)  # windows overlap: words near cuts are seen twice
    model = AutoModelForTokenClassification.from_pretrained(tiny_model, num_labels=3)
    tagger = EntityTagger(torch_runner(model, ["logits"]), tokenizer, labels, max_length=32)
    probs = tagger.word_probabilities([long.tokens, ["short"]])
    assert probs[0].shape == (120, 3) and np.allclose(probs[0].sum(1), 1.0, atol=1e-5)  # every word got a window
    assert probs[1].shape == (1, 3)


def test_grouping_word_tags_into_character_spans() -> None:
    text = "Ann Lee flew to New York ; Bob"
    spans = [(0, 3), (4, 7), (8, 12), (13, 15), (16, 19), (20, 24), (25, 26), (27, 30)]
    tags = ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O", "I-PER"]
    scores = np.array([0.9, 0.7, 1, 1, 0.8, 0.6, 1, 0.5])
    entities = group_entities(text, spans, tags, scores)
    assert [(e.label, e.text, e.start, e.end) for e in entities] == [
        ("PER", "Ann Lee", 0, 7), ("LOC", "New York", 16, 24), ("PER", "Bob", 27, 30),
    ]  # fmt: skip
    assert entities[0].score == pytest.approx(0.8)
    adjacent = group_entities("a b", [(0, 1), (2, 3)], ["B-X", "B-X"], np.ones(2))
    assert len(adjacent) == 2


@pytest.fixture(scope="module")
def ner_home(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> tuple[Path, object]:
    """A registry holding 'people@1', a tiny NER model trained on synthetic sentences."""
    folder = tmp_path_factory.mktemp("ner")
    data = write_conll(folder / "train.conll", make_sentences(120), columns=4)
    registry = tunesmith.Registry(folder / "home")
    result = tunesmith.train(
        data, task="token-classification", name="people", registry=registry, progress=False,
        base_model=tiny_model, epochs=15, learning_rate=5e-3, batch_size=16, early_stopping_patience=0,
    )  # fmt: skip
    return folder / "home", result


def test_train_predict_and_register_end_to_end(ner_home: tuple[Path, object]) -> None:
    home, result = ner_home
    assert result.version.task == "token-classification"
    assert set(result.metrics["per_type"]) == {"PER", "LOC"}
    assert result.metrics["f1"] > 0.8, result.metrics
    # The CRF baseline is trained on the same split and shown beside the model, per entity type too.
    assert result.baseline["f1"] > 0.5 and result.baseline["n"] == result.metrics["n"], result.baseline
    report = (result.version.path / "report.md").read_text()
    assert "CRF baseline" in report and "| CRF F1 |" in report
    summary = get_task("token-classification").summary(result)
    assert "CRF baseline F1" in summary.columns and all(row[4] != "-" for row in summary.rows)
    files = {p.name for p in result.version.path.iterdir()}
    assert {"model", "tunesmith.json", "metrics.json", "report.md", "errors.jsonl", "config.yaml", "data"} <= files
    tagger = tunesmith.load_model("people@1", registry=tunesmith.Registry(home))
    text = "yesterday  dave moved to oslo"
    entities = tagger.predict([text, "", "\u200b\x00", "dave \u200b oslo"])  # the tokenizer drops \u200b, \x00
    assert entities[1] == [] and entities[2] == []
    assert {e.text for e in entities[3]} <= {"dave", "oslo"}
    found = {(e.label, e.text) for e in entities[0]}
    assert ("PER", "dave") in found and ("LOC", "oslo") in found
    for e in entities[0]:
        assert text[e.start : e.end] == e.text and 0 < e.score <= 1


def test_served_over_http(ner_home: tuple[Path, object], start_server) -> None:
    import httpx
    from huggingface_hub import InferenceClient

    home, _ = ner_home
    server = start_server(home, "people")
    text = "yesterday dave moved to oslo"
    ours = httpx.post(f"{server.url}/v1/models/people/predict", json={"texts": [text, "nothing here"]}).json()
    entities = ours["predictions"][0]["entities"]
    assert {(e["label"], e["text"]) for e in entities} >= {("PER", "dave"), ("LOC", "oslo")}
    assert all(text[e["start"] : e["end"]] == e["text"] for e in entities)
    hf = httpx.post(f"{server.url}/models/people", json={"inputs": text}).json()
    assert [(e["entity_group"], e["word"], e["start"]) for e in hf] == [
        (e["label"], e["text"], e["start"]) for e in entities
    ]
    client = InferenceClient(model=f"{server.url}/models/people")
    assert [e.word for e in client.token_classification(text)] == [e["text"] for e in entities]
    wrong = httpx.post(f"{server.url}/predict", json={"text": text})
    assert wrong.status_code == 404 and wrong.json()["code"] == "wrong_task"
    assert 'tunesmith_predictions_total{label="LOC",model="people"}' in httpx.get(f"{server.url}/metrics").text


def test_task_registry_lists_tasks() -> None:
    assert get_task("token-classification").name == "token-classification"
    with pytest.raises(Exception, match="Available tasks: text-classification, token-classification"):
        get_task("summarization")


def test_evaluate_on_another_file(
    ner_home: tuple[Path, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_cli import run

    home, _ = ner_home
    bioes = make_sentences(20, seed=5)
    for s in bioes:  # the same data written in BIOES: converted before scoring
        s.tags = [t.replace("B-", "S-") if t == "B-LOC" else t for t in s.tags]
    data = write_conll(tmp_path / "more.conll", bioes)
    code, out, err = run(capsys, "--home", str(home), "evaluate", "people", str(data), "--output", str(tmp_path / "r"))
    assert code == 0, err
    assert "precision" in out and "f1" in out and "converted to IOB2" in err
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())["test"]
    assert metrics["n"] == 20 and 0 <= metrics["f1"] <= 1
    assert (tmp_path / "r" / "report.md").is_file() and (tmp_path / "r" / "errors.jsonl").is_file()


def test_property_based_run_over_openapi_has_no_5xx(
    ner_home: tuple[Path, object], start_server, tmp_path: Path
) -> None:
    fuzz_openapi(start_server(ner_home[0], "people").url, tmp_path)
