"""Extractive QA: input formats, validation rules, SQuAD metrics, long contexts, no-answer, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tunesmith
from conftest import fuzz_openapi, make_paragraphs, squad, write_jsonl
from tunesmith.errors import DataError
from tunesmith.tasks.question_answering.examples import Example, normalize_answer, read_examples, squad_scores
from tunesmith.tasks.question_answering.predictor import AnswerFinder, features


def test_squad_json_and_jsonl(tmp_path: Path) -> None:
    examples, issues = read_examples(squad(tmp_path / "s.json", make_paragraphs(3, unanswerable=True), "v2.0"))
    assert len(examples) == 7 and not issues
    assert examples[0].answers == [(examples[0].context.split()[1], 10)]
    assert next(e for e in examples if not e.answers).id == "0n"
    records = [
        {"question": "who?", "context": "bob went home", "answers": {"text": ["bob"], "answer_start": [0]}},
        {"question": "where?", "context": "bob went home", "answers": [{"text": "home", "answer_start": 9}]},
        {"question": "why?", "context": "bob went home", "answers": {"text": [], "answer_start": []}},
    ]
    examples, _ = read_examples(write_jsonl(tmp_path / "q.jsonl", records))
    assert [e.answers for e in examples] == [[("bob", 0)], [("home", 9)], []]


def test_answers_are_checked_against_their_context(tmp_path: Path) -> None:
    records = [
        {"question": "q1", "context": "the cat sat", "answers": [{"text": "cat", "answer_start": 6}]},  # off by 2
        {"question": "q2", "context": "the cat sat", "answers": [{"text": "dog", "answer_start": 4}]},  # absent
        {"question": "q3", "context": "   ", "answers": []},  # empty context
        {"question": "q4", "context": "the cat sat", "answers": [{"text": "sat", "answer_start": 8}]},
    ]
    examples, issues = read_examples(write_jsonl(tmp_path / "q.jsonl", records))
    assert [e.answers for e in examples] == [[("cat", 4)], [("sat", 8)]]
    codes = {i.code: i.message for i in issues}
    assert set(codes) == {"answer_moved", "answer_not_in_context", "empty"}
    assert "do not occur in their context" in codes["answer_not_in_context"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"question": "q", "answers": []}\n', "has no context field"),
        ('{"question": "q", "context": "c", "answers": [{"t": 1}]}\n', "answers must be"),
        ('{"question": "q", "context": "abc", "answers": [{"text": "z", "answer_start": 0}]}\n', "no usable question"),
        ('{"question": "q"\n', "not valid JSON"),
        ("", "holds no questions"),
    ],
)
def test_validation_rules(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_examples(path)


def test_official_normalisation_and_scores() -> None:
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple, a pear") == "apple pear"
    examples = [
        Example("1", "q", "c", [("Denver Broncos", 0), ("the Broncos", 0)]),
        Example("2", "q", "c", [("Carolina Panthers", 0)]),
        Example("3", "q", "c", []),  # unanswerable: only "" is right
    ]
    scores = squad_scores(examples, ["broncos", "Panthers", ""])
    assert scores["exact_match"] == pytest.approx(2 / 3)  # "broncos" matches "the Broncos"
    assert scores["f1"] == pytest.approx((1 + 2 / 3 + 1) / 3)


def test_long_context_windows_point_at_the_answer(tiny_model: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    context = "the order was late . " * 12 + "carol paid the refund . " + "the order was late . " * 12
    example = Example("1", "who paid ?", context, [("carol", context.index("carol"))])
    rows = features(tokenizer, [example], max_length=48, stride=16, labels=True)
    assert len(rows) > 3  # the context is cut into overlapping windows
    holding = [r for r in rows if r["start_positions"] > 0]
    assert holding and all(r["start_positions"] == 0 and r["end_positions"] == 0 for r in rows if r not in holding)
    for row in holding:
        pieces = tokenizer.convert_ids_to_tokens(row["input_ids"][row["start_positions"] : row["end_positions"] + 1])
        assert "".join(p.removeprefix("##") for p in pieces) == "carol"


@pytest.fixture(scope="module")
def qa_result(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("qa")
    data = squad(folder / "train.json", make_paragraphs(90, unanswerable=True), "v2.0")
    registry = tunesmith.Registry(folder / "home")
    result = tunesmith.train(
        data, task="question-answering", name="where", registry=registry, progress=False, base_model=tiny_model,
        epochs=20, learning_rate=5e-3, batch_size=16, early_stopping_patience=0, max_length=64,
    )  # fmt: skip
    return folder / "home", result


def test_train_register_and_answer(qa_result: tuple[Path, object]) -> None:
    home, result = qa_result
    assert result.version.task == "question-answering"
    assert set(result.metrics) >= {"exact_match", "f1", "n"}
    assert result.metrics["f1"] > 0.6, result.metrics
    # The lexical baseline is scored on the same test questions, and shown beside the model.
    assert set(result.baseline) >= {"exact_match", "f1", "n"} and result.baseline["n"] == result.metrics["n"]
    assert "lexical baseline" in (result.version.path / "report.md").read_text()
    assert "baseline" in json.loads((result.version.path / "metrics.json").read_text())
    files = {p.name for p in result.version.path.iterdir()}
    assert {"model", "tunesmith.json", "metrics.json", "report.md", "errors.jsonl", "data"} <= files
    # Trained without attention dropout (the fused attention path; long windows paid most for the slow one).
    assert json.loads((result.version.path / "model" / "config.json").read_text())["attention_probs_dropout_prob"] == 0
    finder = tunesmith.load_model("where@1", registry=tunesmith.Registry(home))
    assert isinstance(finder, AnswerFinder) and finder.allow_no_answer
    context = "yesterday erin moved to rome with a friend ."
    answers = finder.answer(["who moved ?", "where to ?"], [context, context], top_k=3)
    assert len(answers[0]) == 3 and answers[0][0].score >= answers[0][1].score
    best = answers[1][0]
    assert best.text == "rome" and context[best.start : best.end] == "rome"
    unanswerable = finder.answer(["how old ?"], [context], top_k=2)[0]  # v2 data: always without an answer
    assert (unanswerable[0].text, unanswerable[0].start, unanswerable[0].end) == ("", -1, -1)
    assert unanswerable[1].text and unanswerable[0].score > unanswerable[1].score


def test_cli_predict_answers_questions(qa_result: tuple[Path, object], capsys: pytest.CaptureFixture[str]) -> None:
    from test_cli import run

    home, _ = qa_result
    context = "yesterday erin moved to rome with a friend ."
    code, out, err = run(capsys, "--home", str(home), "predict", "where", "where to ?", "--context", context)
    assert code == 0, err
    answer, offsets, _score, question = out.strip().split("\t")
    assert answer == "rome" and offsets == "[24:28]" and question == "where to ?"
    code, _, err = run(capsys, "--home", str(home), "predict", "where", "where to ?")
    assert code == 1 and "needs --context" in err


def test_evaluate_on_another_file(qa_result: tuple[Path, object], tmp_path: Path) -> None:
    home, _ = qa_result
    data = squad(tmp_path / "more.json", make_paragraphs(10, seed=9))
    result = tunesmith.evaluate(tunesmith.load_model("where", registry=tunesmith.Registry(home)), data, tmp_path / "r")
    assert result["test"]["n"] == 20 and 0 <= result["test"]["exact_match"] <= result["test"]["f1"] <= 1
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["test"] == result["test"]


def test_served_over_http(qa_result: tuple[Path, object], start_server) -> None:
    import httpx
    from huggingface_hub import InferenceClient

    home, _ = qa_result
    server = start_server(home, "where")
    context = "yesterday erin moved to rome with a friend ."
    ours = httpx.post(f"{server.url}/v1/models/where/answer",
                      json={"question": "where to ?", "context": context, "top_k": 2}).json()  # fmt: skip
    assert ours["version"] == 1 and len(ours["answers"]) == 2
    best = ours["answers"][0]
    assert best["answer"] == "rome" and context[best["start"] : best["end"]] == "rome"
    hf = httpx.post(
        f"{server.url}/models/where", json={"inputs": {"question": "where to ?", "context": context}}
    ).json()
    assert hf["answer"] == "rome" and hf["start"] == best["start"]
    client = InferenceClient(model=f"{server.url}/models/where")
    assert client.question_answering(question="where to ?", context=context).answer == "rome"
    wrong = httpx.post(f"{server.url}/v1/models/where/predict", json={"text": "where to ?"})
    assert wrong.status_code == 404 and wrong.json()["code"] == "wrong_task"
    too_long = httpx.post(f"{server.url}/v1/models/where/answer", json={"question": "q", "context": "x" * 20_000})
    assert too_long.status_code == 422 and too_long.json()["code"] == "text_too_long"


def test_property_based_run_over_openapi_has_no_5xx(
    qa_result: tuple[Path, object], start_server, tmp_path: Path
) -> None:
    fuzz_openapi(start_server(qa_result[0], "where").url, tmp_path)
