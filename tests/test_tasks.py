"""The task contract: every registered task goes train -> evaluate -> register -> export -> serve -> predict.

A task added to `tunesmith.tasks.TASKS` without a case here fails `test_every_registered_task_has_a_case`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import pytest
from peft import TaskType

import tunesmith
from conftest import make_paragraphs, make_sentences, squad, write_conll, write_csv, write_jsonl
from make_instruction_data import make_pairs
from tunesmith.tasks import TASKS, Task, get_task
from tunesmith.tasks.base import DataShape, Request, signature_problems

CONTEXT = "yesterday erin moved to rome with a friend ."


@dataclass
class Case:
    write_data: Callable[[Path, list[tuple[str, str]]], Path]  # (folder, support rows) -> a training file
    settings: dict[str, Any]
    outputs: Callable[[Any], Any]  # predictor -> comparable predictions on a few inputs
    hf_inputs: Any  # the Hugging Face Inference API request's "inputs"
    check_hf: Callable[[Any], bool]  # is the response the shape that API returns for this task?
    base: str = "tiny_model"  # the fixture holding the base model
    route: str = "/models/m"  # where the served model answers, in the API its users' clients speak
    exports: bool = True  # exported to ONNX (int8 checked); else exported its own way and served on PyTorch
    feedback: Any = None  # a right answer to the served request, in the task's shape
    bad_feedback: Any = None  # one the task must refuse with a 4xx
    reads: Callable[[Path], int] | None = None  # the task's training loader over an exported feedback file: rows


CASES = {
    "text-classification": Case(
        lambda folder, rows: write_csv(folder / "train.csv", rows),
        {},
        lambda model: [p.label for p in model.predict(["where is my parcel", "refund please", "the app crashes"])],
        "where is my parcel",
        lambda body: isinstance(body, list) and {"label", "score"} <= set(body[0][0]),
        feedback="order_status", bad_feedback=42,
        reads=lambda path: len(__import__("tunesmith.data", fromlist=["read_table"]).read_table(path)),
    ),
    "token-classification": Case(
        lambda folder, _rows: write_conll(folder / "train.conll", make_sentences(80)),
        {},
        lambda model: [
            [(e.label, e.start, e.end) for e in f] for f in model.predict(["dave moved to oslo", "bob ran"])
        ],
        "yesterday dave moved to oslo",
        lambda body: isinstance(body, list) and all({"entity_group", "word", "start", "end"} <= set(e) for e in body),
        feedback=[{"start": 10, "end": 14, "label": "PER"}, {"start": 24, "end": 28, "label": "LOC"}],
        bad_feedback=[{"start": 10, "end": 99, "label": "PER"}],  # past the end of the text
        reads=lambda path: len(__import__("tunesmith.tasks.token_classification.sentences",
                                          fromlist=["read_sentences"]).read_sentences(path)),
    ),
    "question-answering": Case(
        lambda folder, _rows: squad(folder / "train.json", make_paragraphs(60, unanswerable=True), "v2.0"),
        {"max_length": 64},
        lambda model: [(a[0].start, a[0].end) for a in model.answer(["who moved ?", "where to ?"], [CONTEXT] * 2)],
        {"question": "where to ?", "context": CONTEXT},
        lambda body: isinstance(body, dict) and {"answer", "score", "start", "end"} <= set(body),
        feedback={"text": "rome", "answer_start": CONTEXT.index("rome")}, bad_feedback={"text": "paris"},
        reads=lambda path: len(__import__("tunesmith.tasks.question_answering.examples",
                                          fromlist=["read_examples"]).read_examples(path)[0]),
    ),
    "text-generation": Case(
        lambda folder, _rows: write_jsonl(folder / "train.jsonl", make_pairs(40, seed=2)),
        {"epochs": 1},
        lambda model: [model.chat([{"role": "user", "content": p}], max_tokens=6).text for p in ("order 12", "hi")],
        {"model": "m", "prompt": "order=", "max_tokens": 4},
        lambda body: body["object"] == "text_completion" and isinstance(body["choices"][0]["text"], str),
        base="tiny_llm", route="/v1/completions", exports=False, feedback="order 12 is on its way", bad_feedback="",
        reads=lambda path: len(__import__("tunesmith.tasks.text_generation.conversations",
                                          fromlist=["read_conversations"]).read_conversations(path)),
    ),
    # A classification file trains an embedding model: texts of one label are positives for each other.
    "sentence-similarity": Case(
        lambda folder, rows: write_csv(folder / "train.csv", rows),
        {"learning_rate": 5e-4},
        lambda model: [round(float(x), 4) for x in model.embed(["where is my parcel", "refund please"]).ravel()],
        "where is my parcel",
        lambda body: isinstance(body, list) and all(isinstance(x, float) for x in body),
        feedback="order_status", bad_feedback=42,
        reads=lambda path: len(__import__("tunesmith.tasks.sentence_similarity.pairs",
                                          fromlist=["read_rows"]).read_rows(path)[1]),
    ),
}


def test_every_registered_task_has_a_case_and_keeps_the_contract() -> None:
    """Every task is a `Task` whose methods take exactly the contract's parameters and whose attributes have the
    contract's types: a task that renamed a parameter or returned a tuple where a string belongs fails here."""
    assert set(CASES) == set(TASKS)
    for name, task in TASKS.items():
        assert isinstance(task, Task) and task.name == name
        assert signature_problems(task) == [], name
        assert task.request in get_args(Request) and task.data_shape in get_args(DataShape)
        assert task.default_method in task.methods and task.export_format in ("onnx", "merged")
        assert task.main_metric and all(isinstance(m, str) for m in task.headline_metrics)
        assert isinstance(task.peft_task_type, str) and task.peft_task_type in TaskType.__members__
        # The warm-up input is one item of what the task's server batches hold: a text, or a (question, context) pair.
        assert isinstance(task.warm_up, tuple if task.request == "question" else str), name


def test_contract_check_finds_a_drifted_signature() -> None:
    class Drifted(type(get_task("text-classification"))):  # type: ignore[misc]
        def load(self, where: str, backend: str = "auto") -> Any:  # renamed and dropped a parameter
            raise AssertionError

    assert [p for p in signature_problems(Drifted()) if ".load" in p]


def test_unknown_task_lists_the_registered_ones() -> None:
    with pytest.raises(tunesmith.ConfigError, match="Available tasks: " + ", ".join(TASKS)):
        get_task("summarization")


@pytest.mark.parametrize("task", list(TASKS))
def test_train_evaluate_register_export_serve_predict(
    task: str, request: pytest.FixtureRequest, support_rows: list[tuple[str, str]], tmp_path: Path, start_server
) -> None:
    import httpx

    case = CASES[task]
    data = case.write_data(tmp_path, support_rows)
    registry = tunesmith.Registry(tmp_path / "home")
    result = tunesmith.train(
        data, task=task, name="m", registry=registry, progress=False, base_model=request.getfixturevalue(case.base),
        **{"epochs": 2, "learning_rate": 5e-3, "batch_size": 16, **case.settings},
    )  # fmt: skip
    version = registry.resolve("m@1")
    assert version.task == task and result.version.version == 1
    assert {"model", "tunesmith.json", "metrics.json", "report.md", "data"} <= {p.name for p in version.path.iterdir()}

    report = tunesmith.evaluate(tunesmith.load_model("m", registry=registry), data, tmp_path / "evaluation")
    assert report["test"]["n"] > 0
    assert json.loads((tmp_path / "evaluation" / "metrics.json").read_text())["test"] == report["test"]

    if not case.exports:
        assert tunesmith.export_model("m", registry=registry)["format"] == "merged"
        with pytest.raises(tunesmith.ModelError, match="not exported to ONNX"):
            get_task(task).export_check(version.path)
        pytorch = case.outputs(tunesmith.load_model("m", registry=registry))
        assert case.outputs(tunesmith.load_model("m", registry=registry)) == pytorch  # greedy: reproducible
        server = start_server(registry.home, "m")
        info = httpx.get(f"{server.url}/v1/models/m").json()
        assert info["task"] == task and info["backend"] == "pytorch"
        response = httpx.post(f"{server.url}{case.route}", json=case.hf_inputs)
        assert response.status_code == 200 and case.check_hf(response.json()), response.text
        _logged_with_feedback(task, case, server, registry, response, tmp_path)
        return
    record = tunesmith.export_model("m", registry=registry)
    print(
        task,
        json.dumps(
            {
                k: {m: v[m] for m in ("agreement", "test_agreement", "metric_delta", "scheme", "texts_per_second")}
                for k, v in record["variants"].items()
            }
        ),
    )
    assert record["task"] == task and set(record["variants"]) == {"fp32", "int8"}
    assert record["variants"]["fp32"]["agreement"] == 1.0 and record["variants"]["fp32"]["passed"]
    for variant in record["variants"].values():
        assert 0 <= variant["agreement"] <= 1 and set(variant["metric_delta"]) == set(record["reference"]["metrics"])

    pytorch = case.outputs(tunesmith.load_model("m", registry=registry, backend="pytorch"))
    onnx = tunesmith.load_model("m", registry=registry, backend="onnx-fp32")
    assert onnx.backend == "onnx-fp32" and case.outputs(onnx) == pytorch

    server = start_server(registry.home, "m")
    info = httpx.get(f"{server.url}/v1/models/m").json()
    assert info["task"] == task and info["backend"].startswith("onnx")
    response = httpx.post(f"{server.url}{case.route}", json={"inputs": case.hf_inputs})
    assert response.status_code == 200 and case.check_hf(response.json()), response.text
    _logged_with_feedback(task, case, server, registry, response, tmp_path)


def _logged_with_feedback(task: str, case: Case, server: Any, registry: Any, response: Any, tmp_path: Path) -> None:
    """The served answer is in the prediction log under its request id; feedback on it is checked in the task's
    shape (a wrong shape is a 422), stored, and exported as a file the task's own training loader reads."""
    import time

    import httpx

    from tunesmith.monitoring.feedback import export_feedback
    from tunesmith.monitoring.predictions import find_prediction

    request_id = response.headers["x-request-id"]
    deadline = time.time() + 10
    while not (rows := find_prediction(registry.home, "m", request_id)) and time.time() < deadline:
        time.sleep(0.1)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["task"] == task and row["version"] == 1 and row["latency_ms"] > 0 and row["input"], row
    bad = httpx.post(f"{server.url}/v1/models/m/feedback", json={"request_id": request_id, "answer": case.bad_feedback})
    assert bad.status_code == 422 and bad.json()["error"], bad.text
    good = httpx.post(f"{server.url}/v1/models/m/feedback", json={"request_id": request_id, "answer": case.feedback})
    assert good.status_code == 201 and good.json()["version"] == 1, good.text
    exported = tmp_path / "feedback.jsonl"
    assert export_feedback(registry.home, "m", get_task(task), exported, include_held_out=True) == 1
    assert case.reads is not None and case.reads(exported) == 1
    _retrained(task, registry, exported)


def _retrained(task: str, registry: Any, feedback_file: Path) -> None:
    """`retrain` makes the next version from the kept training rows and new rows (the exported feedback, given
    as a file: one input in five is held out of the feedback itself), on production's frozen splits."""
    from tunesmith.retraining import retrain

    parent = registry.resolve("m@1")
    outcome = retrain(registry, "m", against="m@1", files=[feedback_file], overrides=["train.max_steps=3"],
                      gate=False, export=False, progress=False, log=lambda _line: None)  # fmt: skip
    version = outcome.result.version
    assert version.ref == "m@2" and version.task == task
    meta = json.loads((version.path / "tunesmith.json").read_text())
    assert meta["lineage"]["parent"] == "m@1" and meta["lineage"]["rows"]["files"] == 1
    kept = (version.path / "data" / "train.jsonl").read_text().splitlines()
    rows = meta["lineage"]["rows"]
    assert len(kept) == rows["replayed"] + rows["new"] and rows["new"] == 1  # the same row as feedback and as a file
    assert (version.path / "data" / "test.jsonl").read_bytes() == (parent.path / "data" / "test.jsonl").read_bytes()
