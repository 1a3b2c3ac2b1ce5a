"""Extractive question answering: find the answer to a question as a span of its context.

Inputs: SQuAD v1.1 / v2.0 JSON (`{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}`) and JSONL
with `question`, `context` and `answers` (`{"text": [...], "answer_start": [...]}` as Hugging Face datasets
write it, or a list of `{"text", "answer_start"}`); an empty answer list means "no answer" (SQuAD v2).

Contexts longer than the token limit are cut into windows overlapping by `doc_stride` tokens; each window
is trained to point at the answer if it holds all of it, else at [CLS] ("not here"). At prediction time
the best span over all windows wins; for data with unanswerable questions the model answers "" when [CLS]
scores higher than the best span. Scores: exact match and F1 with SQuAD's official answer normalisation.
"""

from __future__ import annotations

import collections
import json
import random
import re
import shutil
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith import methods
from tunesmith.config import RunConfig
from tunesmith.data import DataIssue, fingerprint
from tunesmith.errors import DataError
from tunesmith.export import ExportCheck, single_feeds, timed
from tunesmith.inference import Runner, _read_meta, choose_variant, export_file, onnx_runner, torch_runner
from tunesmith.models import bf16_supported, load_with_new_head, model_max_length
from tunesmith.registry import Registry
from tunesmith.runs import locked_run

TASK = "question-answering"
MAX_LENGTH = 384  # question + context window, the usual SQuAD setting
DOC_STRIDE = 128  # overlap between windows of one long context
MAX_ANSWER_TOKENS = 30
N_BEST = 20
OUTPUTS = ["start_logits", "end_logits"]

Log = Callable[[str], None]


@dataclass
class Example:
    id: str
    question: str
    context: str
    answers: list[tuple[str, int]]  # (text, character start); empty when the question has no answer
    group: str = ""  # article title or context: splits keep a group together, so no context leaks


@dataclass
class Answer:
    text: str
    start: int
    end: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.text, "start": self.start, "end": self.end, "score": self.score}


# -- reading and checking --------------------------------------------------------------------------


def read_examples(path: str | Path) -> tuple[list[Example], list[DataIssue]]:
    """Examples from SQuAD JSON or JSONL, with answers checked against their contexts."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}). Convert it, e.g. with iconv.") from None
    raw: list[dict[str, Any]] = []
    stripped = text.lstrip()
    if stripped.startswith("{") and '"data"' in stripped[:200]:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}).") from None
        for article in document.get("data", []):
            for paragraph in article.get("paragraphs", []):
                for qa in paragraph.get("qas", []):
                    answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                    raw.append({"id": qa.get("id"), "question": qa.get("question"), "context": paragraph.get("context"),
                                "answers": answers, "group": article.get("title", "")})  # fmt: skip
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    raw.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number}: not valid JSON ({exc.msg}).") from None
    if not raw:
        raise DataError(f"{path} holds no questions. Expected SQuAD JSON or JSONL with question, context, answers.")
    examples, issues = _check(raw, path)
    return examples, issues


def _answer_list(value: Any) -> list[tuple[str, int]]:
    if isinstance(value, dict):  # {"text": [...], "answer_start": [...]}
        return list(zip(value.get("text", []), value.get("answer_start", []), strict=False))
    return [(a["text"], a["answer_start"]) for a in value or []]


def _check(raw: list[dict[str, Any]], path: Path) -> tuple[list[Example], list[DataIssue]]:
    examples, issues = [], []
    empty, unfound, moved = [], [], 0
    for i, row in enumerate(raw):
        missing = [k for k in ("question", "context") if k not in row]
        if missing:
            raise DataError(f"{path}: question {i} has no {' or '.join(missing)} field; found {sorted(row)}.")
        question, context = str(row["question"] or "").strip(), str(row["context"] or "")
        if not question or not context.strip():
            empty.append(i)
            continue
        try:
            answers = _answer_list(row.get("answers", []))
        except (KeyError, TypeError):
            raise DataError(f"{path}: question {i}: answers must be {{'text': [...], 'answer_start': [...]}} or "
                            "a list of {'text', 'answer_start'}.") from None  # fmt: skip
        fixed = []
        for answer, start in answers:
            if context[start : start + len(answer)] == answer:
                fixed.append((answer, start))
                continue
            near = context.find(answer, max(0, start - 20))  # offsets a few characters off are common
            near = near if near != -1 else context.find(answer)
            if answer and near != -1:
                fixed.append((answer, near))
                moved += 1
        if answers and not fixed:
            unfound.append(row.get("id") or i)
            continue
        examples.append(Example(str(row.get("id") or i), question, context, fixed, str(row.get("group") or context)))
    if empty:
        issues.append(DataIssue("warning", "empty", f"{path}: {len(empty)} question(s) with an empty question or "
                                f"context were left out (rows {empty[:5]})."))  # fmt: skip
    if unfound:
        issues.append(DataIssue("warning", "answer_not_in_context", f"{path}: {len(unfound)} question(s) whose "
                                f"answers do not occur in their context were left out (ids {unfound[:5]})."))  # fmt: skip
    if moved:
        issues.append(DataIssue("warning", "answer_moved", f"{path}: {moved} answer offset(s) did not point at "
                                "the answer text; the nearest occurrence was used."))  # fmt: skip
    if not examples:
        raise DataError(f"{path}: no usable question is left after the checks above: {[str(i) for i in issues]}.")
    return examples, issues


# -- official SQuAD metrics ----------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction: str, truth: str) -> float:
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not predicted or not gold:
        return float(predicted == gold)
    common = sum((collections.Counter(predicted) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(examples: Sequence[Example], predictions: Sequence[str]) -> dict[str, Any]:
    """Exact match and F1 (0-1), each the best over an example's reference answers; "" answers no-answer."""
    em, f1 = [], []
    for example, prediction in zip(examples, predictions, strict=True):
        golds = [a for a, _ in example.answers] or [""]
        em.append(max(float(normalize_answer(prediction) == normalize_answer(g)) for g in golds))
        f1.append(max(_f1(prediction, g) for g in golds))
    return {"exact_match": float(np.mean(em)) if em else 0.0, "f1": float(np.mean(f1)) if f1 else 0.0, "n": len(em)}


# -- features ----------------------------------------------------------------------------------------


def features(tokenizer: Any, examples: Sequence[Example], max_length: int, stride: int, labels: bool) -> Any:
    """Tokenized windows; with `labels`, each window's start/end token of the answer (0, [CLS], if not inside)."""
    pad_right = tokenizer.padding_side == "right"
    encoded = tokenizer(
        [e.question for e in examples], [e.context for e in examples], truncation="only_second" if pad_right else
        "only_first", max_length=max_length, stride=stride, return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )  # fmt: skip
    if not labels:
        return encoded
    rows = []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        example = examples[encoded["overflow_to_sample_mapping"][i]]
        sequence = encoded.sequence_ids(i)
        context_tokens = [t for t, s in enumerate(sequence) if s == 1]
        start_token = end_token = 0
        if example.answers and context_tokens:
            text, char_start = example.answers[0]
            char_end = char_start + len(text)
            first, last = context_tokens[0], context_tokens[-1]
            if offsets[first][0] <= char_start and offsets[last][1] >= char_end:
                start_token = next(t for t in context_tokens if offsets[t][1] > char_start)
                end_token = next(t for t in reversed(context_tokens) if offsets[t][0] < char_end)
        row = {k: encoded[k][i] for k in encoded if k not in ("offset_mapping", "overflow_to_sample_mapping")}
        rows.append({**row, "start_positions": start_token, "end_positions": end_token})
    return rows


def _trainer_metrics() -> Callable[[Any], dict[str, float]]:
    from tunesmith.training import SELECTION_METRIC

    def compute(eval_pred: Any) -> dict[str, float]:
        (start_logits, end_logits), (starts, ends) = eval_pred.predictions, eval_pred.label_ids
        exact = (start_logits.argmax(-1) == starts) & (end_logits.argmax(-1) == ends)
        # Window-level exact spans are a cheap stand-in for answer EM while training; the real EM/F1 come after.
        return {"span_accuracy": float(exact.mean()), SELECTION_METRIC: float(exact.mean())}

    return compute


# -- prediction ---------------------------------------------------------------------------------------


class AnswerFinder:
    """A fine-tuned extractive QA model: question + context in, answer spans with character offsets out.

    `runner` is the model (PyTorch, or an ONNX export: see `inference.torch_runner` / `onnx_runner`).
    """

    def __init__(self, runner: Runner, tokenizer: Any, max_length: int, allow_no_answer: bool = False,
                 meta: dict[str, Any] | None = None, backend: str = "pytorch", model: Any = None) -> None:  # fmt: skip
        self.runner, self.tokenizer = runner, tokenizer
        self.max_length = max_length
        self.stride = min(DOC_STRIDE, max_length // 3)
        self.allow_no_answer = allow_no_answer
        self.meta = meta or {}
        self.backend = backend
        self.model = model  # the PyTorch model, when that is the backend
        self.task = TASK
        self.label_names: list[str] = []

    @classmethod
    def from_artifact(
        cls, path: str | Path, backend: str = "auto", threads: int | None = None, **model_kwargs: Any
    ) -> AnswerFinder:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = Path(path)
        meta = _read_meta(path)
        tokenizer = AutoTokenizer.from_pretrained(path / "model")
        settings = (meta["max_length"], meta.get("allow_no_answer", False), meta)
        variant = choose_variant(path, backend)
        if variant is not None:
            return cls(onnx_runner(export_file(path, variant), threads), tokenizer, *settings, f"onnx-{variant}")
        from transformers import AutoModelForQuestionAnswering

        model = methods.load(AutoModelForQuestionAnswering, path, **model_kwargs)
        return cls(torch_runner(model, OUTPUTS), tokenizer, *settings, model=model)

    def answer(self, questions: Sequence[str], contexts: Sequence[str], top_k: int = 1,
               batch_size: int = 32) -> list[list[Answer]]:  # fmt: skip
        """The `top_k` best answers per question, best first ("" with start = end = -1 means no answer)."""
        examples = [Example(str(i), q, c, []) for i, (q, c) in enumerate(zip(questions, contexts, strict=True))]
        if not examples:
            return []
        encoded = features(self.tokenizer, examples, self.max_length, self.stride, labels=False)
        n = len(encoded["input_ids"])
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        starts, ends = [], []
        for first in range(0, n, batch_size):
            rows = [{k: encoded[k][i] for k in keys} for i in range(first, min(n, first + batch_size))]
            batch = dict(self.tokenizer.pad(rows, return_tensors="np"))
            out = self.runner(batch)
            for row in range(len(rows)):
                length = int(batch["attention_mask"][row].sum())
                starts.append(out["start_logits"][row, :length])
                ends.append(out["end_logits"][row, :length])
        candidates: dict[int, list[Answer]] = collections.defaultdict(list)
        null_score: dict[int, float] = {}
        for i in range(n):
            index = encoded["overflow_to_sample_mapping"][i]
            context = examples[index].context
            sequence, offsets = encoded.sequence_ids(i), encoded["offset_mapping"][i]
            start_lp = starts[i] - np.logaddexp.reduce(starts[i])
            end_lp = ends[i] - np.logaddexp.reduce(ends[i])
            null_score[index] = max(null_score.get(index, -np.inf), start_lp[0] + end_lp[0])
            for s in np.argsort(-start_lp)[:N_BEST]:
                for e in np.argsort(-end_lp)[:N_BEST]:
                    if sequence[s] != 1 or sequence[e] != 1 or e < s or e - s + 1 > MAX_ANSWER_TOKENS:
                        continue
                    a, b = offsets[s][0], offsets[e][1]
                    candidates[index].append(Answer(context[a:b], a, b, float(np.exp(start_lp[s] + end_lp[e]))))
        results = []
        for index in range(len(examples)):
            found = sorted(candidates[index], key=lambda x: -x.score)
            unique, seen = [], set()
            for a in found:
                if (a.start, a.end) not in seen:
                    seen.add((a.start, a.end))
                    unique.append(a)
            if self.allow_no_answer:
                unique.append(Answer("", -1, -1, float(np.exp(null_score[index]))))
                unique.sort(key=lambda x: -x.score)
            results.append(unique[:top_k] or [Answer("", -1, -1, 0.0)])
        return results


# -- data and training ----------------------------------------------------------------------------------


@dataclass
class QAData:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    allow_no_answer: bool
    fingerprint: str
    issues: list[DataIssue] = field(default_factory=list)


def load_qa_data(config: RunConfig) -> QAData:
    data = config.data
    if data.train is None:
        raise DataError(
            "No training file: pass SQuAD JSON or JSONL, e.g. `tunesmith train squad.json --task question-answering`."
        )
    train, issues = read_examples(data.train)
    extra = {}
    for what in ("validation", "test"):
        if getattr(data, what) is not None:
            extra[what], more = read_examples(getattr(data, what))
            issues += more
    # Split by article (or context), so no context is seen in training and again when scored.
    groups = sorted({e.group for e in train})
    random.Random(config.seed).shuffle(groups)
    n_val = 0 if "validation" in extra else max(1, round(len(groups) * data.validation_size))
    n_test = 0 if "test" in extra else max(1, round(len(groups) * data.test_size))
    if len(groups) - n_val - n_test < 1:
        raise DataError(
            f"{data.train} has {len(groups)} distinct contexts: too few to split; pass --validation and --test."
        )
    held = {g: "validation" for g in groups[:n_val]} | {g: "test" for g in groups[n_val : n_val + n_test]}
    splits: dict[str, list[Example]] = {"train": [], "validation": [], "test": []}
    for e in train:
        splits[held.get(e.group, "train")].append(e)
    splits.update(extra)
    allow_no_answer = any(not e.answers for e in train)
    return QAData(
        splits["train"], splits["validation"], splits["test"], allow_no_answer,
        fingerprint([e.question + "\n" + e.context for e in splits["train"]], [e.answers for e in splits["train"]]),
        issues,
    )  # fmt: skip


def evaluate_examples(finder: AnswerFinder, examples: list[Example]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    answers = finder.answer([e.question for e in examples], [e.context for e in examples])
    predictions = [a[0].text for a in answers]
    scores = squad_scores(examples, predictions)
    errors = [
        {"id": e.id, "question": e.question, "answers": [a for a, _ in e.answers], "predicted": p}
        for e, p in zip(examples, predictions, strict=True)
        if normalize_answer(p) not in {normalize_answer(a) for a, _ in e.answers or [("", 0)]}
    ]
    return scores, errors


@locked_run
def train(
    config: RunConfig, *, registry: Registry | None = None, resume: bool = False, progress: bool = True,
    log: Log = print,
) -> Any:  # fmt: skip
    """Fine-tune, evaluate (exact match, F1) and register an extractive question-answering model."""
    from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding, set_seed

    from tunesmith.training import (
        TrainResult,
        _prepare_run_dir,
        begin_run,
        build_trainer,
        register_artifact,
        run_trainer,
    )

    config, registry, tokenizer = begin_run(config, registry, offsets_for="question answering")
    settings, name = config.train, str(config.name)
    data = load_qa_data(config)
    set_seed(settings.seed)
    model = load_with_new_head(
        AutoModelForQuestionAnswering, settings.base_model, trust_remote_code=settings.trust_remote_code
    )
    max_length = min(settings.max_length or MAX_LENGTH, model_max_length(tokenizer, model.config))
    stride = min(DOC_STRIDE, max_length // 3)
    for issue in data.issues:
        log(str(issue))
    log(f"Data: {len(data.train)} train / {len(data.validation)} validation / {len(data.test)} test questions"
        f"{' (some unanswerable)' if data.allow_no_answer else ''}; windows of {max_length} tokens, stride {stride}.")  # fmt: skip

    run_dir = registry.run_dir(name)
    checkpoint = _prepare_run_dir(run_dir, data.fingerprint, config, resume, log)
    use_bf16 = settings.precision == "bf16" or (settings.precision == "auto" and bf16_supported())
    trainer = build_trainer(
        model, tokenizer, settings, run_dir,
        features(tokenizer, data.train, max_length, stride, labels=True),
        features(tokenizer, data.validation, max_length, stride, labels=True),
        task=TASK, collator=DataCollatorWithPadding(tokenizer), compute_metrics=_trainer_metrics(),
        bf16=use_bf16, log=log, progress=progress,
    )  # fmt: skip
    log(f"Fine-tuning {settings.base_model} for {TASK} ({'bf16 autocast' if use_bf16 else 'fp32'}) ...")
    model, minutes = run_trainer(trainer, checkpoint)
    finder = AnswerFinder(torch_runner(model, OUTPUTS), tokenizer, max_length, data.allow_no_answer)
    metrics, errors = evaluate_examples(finder, data.test)
    validation_metrics, _ = evaluate_examples(finder, data.validation)
    log(f"Test: exact match {metrics['exact_match']:.4f}, F1 {metrics['f1']:.4f} ({metrics['n']} questions).")
    splits = {
        f"data/{what}.jsonl": "".join(
            json.dumps({"id": e.id, "question": e.question, "context": e.context,
                        "answers": {"text": [a for a, _ in e.answers], "answer_start": [s for _, s in e.answers]}},
                       ensure_ascii=False) + "\n"
            for e in getattr(data, what)
        )
        for what in ("validation", "test")
    }  # fmt: skip
    report = (
        f"# {name}: extractive question answering\n\nOn {metrics['n']} test questions: exact match "
        f"{metrics['exact_match']:.4f}, F1 {metrics['f1']:.4f} (SQuAD normalisation). Validation: exact match "
        f"{validation_metrics['exact_match']:.4f}, F1 {validation_metrics['f1']:.4f}.\n\n{len(errors)} test "
        "question(s) answered wrongly: see errors.jsonl.\n"
    )
    version = register_artifact(
        registry, config, model, tokenizer,
        files=splits,
        evaluation={"test": metrics, "validation": validation_metrics, "train_minutes": minutes},
        errors=errors,
        report=report,
        meta={
            "label_names": [], "max_length": max_length, "allow_no_answer": data.allow_no_answer,
            "precision": "bf16" if use_bf16 else "fp32",
            "data": {"fingerprint": data.fingerprint, "train_file": config.data.train,
                     "sizes": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test)}},
        },
        metrics={k: metrics[k] for k in ("exact_match", "f1")},
    )  # fmt: skip
    shutil.rmtree(run_dir, ignore_errors=True)
    return TrainResult(version, metrics, {}, data.issues, minutes)


def evaluate_file(finder: AnswerFinder, path: str | Path, out_dir: str | Path, **_columns: Any) -> dict[str, Any]:
    """Score a QA model on a SQuAD JSON or JSONL file; write metrics.json, errors.jsonl and report.md."""
    examples, issues = read_examples(path)
    metrics, errors = evaluate_examples(finder, examples)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"test": metrics}, indent=2), encoding="utf-8")
    (folder / "errors.jsonl").write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors))
    (folder / "report.md").write_text(
        f"# {finder.meta.get('name', 'model')} on {Path(path).name}\n\nExact match {metrics['exact_match']:.4f}, "
        f"F1 {metrics['f1']:.4f} over {metrics['n']} questions; wrong answers in errors.jsonl.\n", encoding="utf-8")  # fmt: skip
    return {"test": metrics, "issues": [str(i) for i in issues]}


# -- the task contract beyond training ----------------------------------------------------------------

WARM_UP = ("warm-up?", "warm-up")


def load(path: str | Path, backend: str = "auto", threads: int | None = None) -> AnswerFinder:
    """The QA model in artifact `path`, on the backend asked for (see `inference.choose_variant`)."""
    return AnswerFinder.from_artifact(path, backend, threads)


def serve_compute(finder: AnswerFinder, pairs: list[tuple[str, str]], batch_size: int) -> list[list[Answer]]:
    """One server batch of (question, context) pairs: the best answers of each, best first."""
    from tunesmith.serving.schemas import MAX_ANSWERS

    return finder.answer([q for q, _ in pairs], [c for _, c in pairs], top_k=MAX_ANSWERS, batch_size=batch_size)


class _FinderCheck(ExportCheck):
    """Agreement = share of validation questions whose best answer is the same span."""

    def __init__(self, path: Path) -> None:
        self.reference = ref = AnswerFinder.from_artifact(path, backend="pytorch", attn_implementation="eager")
        self.model, self.pad_token_id = ref.model, ref.tokenizer.pad_token_id or 0
        self.examples = self._read(path / "data" / "validation.jsonl")
        self.test_examples = self._read(path / "data" / "test.jsonl")
        self.n, self.test_n = len(self.examples), len(self.test_examples)
        self.reference_answers = self._best(ref, self.examples)
        self.reference_test, self.reference_seconds = timed(lambda: self._best(ref, self.test_examples))
        self.reference_metrics = self._score(self.reference_answers)
        self.output_axes = {name: {0: "batch", 1: "sequence"} for name in OUTPUTS}
        trace = ref.tokenizer(["Who?", "Where is it?"], ["A short context.", "A longer context, so there is padding."],
                              padding=True, return_tensors="np")  # fmt: skip
        self.trace_feeds = {k: trace[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in trace}
        encoded = features(ref.tokenizer, self.examples or [Example("0", "Who?", "Calibration.", [])],
                           ref.max_length, ref.stride, labels=False)  # fmt: skip
        self.calibration_feeds = single_feeds(encoded, list(self.trace_feeds))

    @staticmethod
    def _read(path: Path) -> list[Example]:
        return read_examples(path)[0] if path.is_file() and path.stat().st_size else []

    @staticmethod
    def _best(finder: AnswerFinder, examples: list[Example]) -> list[Answer]:
        return [a[0] for a in finder.answer([e.question for e in examples], [e.context for e in examples])]

    def _score(self, answers: list[Answer]) -> dict[str, float]:
        if not answers:
            return {}
        scores = squad_scores(self.examples, [a.text for a in answers])
        return {k: scores[k] for k in ("exact_match", "f1")}

    @staticmethod
    def _agreement(reference: list[Answer], answers: list[Answer]) -> float:
        same = [(r.start, r.end) == (a.start, a.end) for r, a in zip(reference, answers, strict=True)]
        return float(np.mean(same)) if same else 1.0

    def candidate(self, onnx_file: Path, variant: str) -> AnswerFinder:
        ref = self.reference
        return AnswerFinder(onnx_runner(onnx_file), ref.tokenizer, ref.max_length, ref.allow_no_answer, ref.meta,
                            f"onnx-{variant}")  # fmt: skip

    def compare(self, candidate: AnswerFinder) -> dict[str, Any]:
        answers = self._best(candidate, self.examples)
        test_answers, seconds = timed(lambda: self._best(candidate, self.test_examples))
        metrics = self._score(answers)
        differences = [abs(r.score - a.score) for r, a in zip(self.reference_answers, answers, strict=True)]
        return {
            "agreement": self._agreement(self.reference_answers, answers),
            "test_agreement": self._agreement(self.reference_test, test_answers),
            "max_probability_difference": float(max(differences, default=0.0)),
            "metrics": metrics,
            "metric_delta": {k: metrics[k] - self.reference_metrics[k] for k in metrics},
            "texts_per_second": self.test_n / seconds if self.test_n and seconds > 0 else None,
        }


def export_check(path: str | Path) -> ExportCheck:
    return _FinderCheck(Path(path))
