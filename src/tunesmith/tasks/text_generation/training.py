"""Instruction tuning (SFT) inside the shared `training.fit`: before/after generations on the test split,
validation loss and perplexity, and the merged-model export."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tunesmith.config import RunConfig
from tunesmith.data import DataIssue, fingerprint, holdout
from tunesmith.tasks.base import TrainResult
from tunesmith.tasks.text_generation.conversations import (
    Conversation,
    encode,
    encode_all,
    prepare_tokenizer,
    read_conversations,
)
from tunesmith.tasks.text_generation.generator import Generator
from tunesmith.tasks.text_generation.metrics import score
from tunesmith.training import ListDataset, Run, choose_max_length

# Held-out test conversations generated for the metrics when the test split is cut from the training file
# (generation is the slow part of evaluation); a test file the user gives is scored whole.
EVAL_LIMIT = 64


SAMPLES = 8  # generations shown before vs after training in the report


def generate_answers(generator: Generator, conversations: list[Conversation], max_tokens: int) -> list[str]:
    return [generator.chat(c.prompt, max_tokens=max_tokens).text for c in conversations]


def evaluate_conversations(
    generator: Generator, conversations: list[Conversation], limit: int | None = EVAL_LIMIT
) -> tuple[dict[str, Any], list]:
    """Generation metrics against the reference answers (of the first `limit`), and each example's generation."""
    shown = conversations[:limit]
    longest = max(len(generator.tokenizer(c.reference)["input_ids"]) for c in shown)
    answers = generate_answers(generator, shown, max_tokens=min(512, longest + 16))
    rows = [{"row": c.row, "prompt": c.prompt[-1]["content"], "reference": c.reference, "generated": a}
            for c, a in zip(shown, answers, strict=True)]  # fmt: skip
    return score(answers, [c.reference for c in shown]), rows


def _split(conversations: list[Conversation], config: RunConfig) -> tuple[list, list, list]:
    data = config.data
    given = {what: read_conversations(getattr(data, what)) for what in ("validation", "test") if getattr(data, what)}
    return holdout(conversations, given, data, config.seed, minimum=2, what="usable conversations")


def train(run: Run) -> TrainResult:
    """Instruction-tune a causal LM (LoRA by default), evaluate its generations, and register it."""
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq

    from tunesmith.gguf import detach_quantizer
    from tunesmith.models import load_pretrained, model_max_length

    config, settings, log, name = run.config, run.settings, run.log, run.name
    tokenizer = run.tokenizer()
    default_template = prepare_tokenizer(tokenizer)
    issues: list[DataIssue] = []
    if default_template:
        issues.append(DataIssue("warning", "default_template", f"{settings.base_model} has no chat template; the "
                                "ChatML default is used (and saved with the model)."))  # fmt: skip
    conversations = read_conversations(str(config.data.train), issues)
    train_c, val_c, test_c = _split(conversations, config)
    model = load_pretrained(AutoModelForCausalLM, settings.base_model, trust_remote_code=settings.trust_remote_code,
                            attention_dropout=settings.attention_dropout)  # fmt: skip
    detach_quantizer(model)
    limit = model_max_length(tokenizer, model.config)
    lengths = [len(encode(tokenizer, c, 10**9)[0]["input_ids"]) for c in train_c]
    max_length = choose_max_length(lengths, min(limit, 2048), settings.max_length)
    overlength = config.data.overlength
    train_set = encode_all(tokenizer, train_c, max_length, overlength, "training", issues)
    val_set = encode_all(tokenizer, val_c, max_length, overlength, "validation", issues)
    for issue in issues:
        log(str(issue))
    log(f"Data: {len(train_set)} train / {len(val_set)} validation / {len(test_c)} test conversations; "
        f"max_length {max_length} tokens; loss on the assistant turns only.")  # fmt: skip

    fp = fingerprint([json.dumps(c.messages, ensure_ascii=False) for c in train_c], [0] * len(train_c))
    checkpoint = run.checkpoint(fp)
    model.eval()
    before = Generator(model, tokenizer)
    samples = test_c[:SAMPLES]
    scored = test_c if config.data.test else test_c[:EVAL_LIMIT]
    if len(scored) < len(test_c):
        log(f"Scoring the first {len(scored)} of {len(test_c)} held-out test conversations (generation is slow); "
            "give a test file (--test) to have every row of it scored.")  # fmt: skip
    max_new = min(256, max(len(tokenizer(c.reference)["input_ids"]) for c in scored) + 16)
    answers = generate_answers(before, scored, max_new)
    before_metrics = score(answers, [c.reference for c in scored])
    before_samples = answers[: len(samples)]

    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = run.trainer(model, tokenizer, ListDataset(train_set), ListDataset(val_set), collator=collator,
                          compute_metrics=None, select_by="loss")  # fmt: skip
    started = time.perf_counter()
    model, minutes = run.fine_tune(trainer, checkpoint)
    model.eval()
    val_loss = trainer.evaluate()["eval_loss"]
    after = Generator(model, tokenizer)
    metrics, rows = evaluate_conversations(after, scored, limit=None)
    metrics.update({"validation_loss": val_loss, "perplexity": math.exp(min(50.0, val_loss)), "test_rows": len(test_c)})
    after_samples = [r["generated"] for r in rows[: len(samples)]]
    comparison = [{"prompt": c.prompt[-1]["content"], "reference": c.reference, "before": b, "after": a}
                  for c, b, a in zip(samples, before_samples, after_samples, strict=True)]  # fmt: skip
    splits = {f"data/{what}.jsonl": "".join(json.dumps({"messages": c.messages}, ensure_ascii=False) + "\n" for c in cs)
              for what, cs in (("train", train_c), ("validation", val_c), ("test", test_c))}  # fmt: skip
    version = run.register_artifact(
        model, tokenizer,
        files={**splits, "samples.json": json.dumps(comparison, indent=2, ensure_ascii=False)},
        evaluation={"test": metrics, "before_training": before_metrics, "train_minutes": minutes,
                    "validation": {"loss": val_loss, "negative_loss": -val_loss},  # what `tune` maximises
                    "samples": comparison},
        errors=[r for r in rows if r["generated"].strip() != r["reference"].strip()],
        report=report_markdown(name, metrics, before_metrics, comparison),
        meta={"max_length": max_length, "precision": "bf16" if run.bf16 else "fp32",
              "default_template": default_template,
              "data": {"fingerprint": fp, "train_file": config.data.train,
                       "sizes": {"train": len(train_set), "validation": len(val_set), "test": len(test_c)}}},
        metrics={k: metrics[k] for k in ("exact_match", "token_f1", "rouge_l", "validation_loss", "perplexity")},
    )  # fmt: skip
    log(f"Trained and evaluated in {(time.perf_counter() - started) / 60:.1f} min.")
    return TrainResult(version, metrics, before_metrics, issues, minutes)


def report_markdown(name: str, metrics: dict[str, Any], before: dict[str, Any], samples: list[dict[str, str]]) -> str:
    rows = metrics.get("test_rows", metrics["n"])
    of = f" (the first {metrics['n']} of {rows}: generation is slow; a given test file is scored whole)" if rows > metrics["n"] else ""
    lines = [f"# {name}: instruction tuning", "", f"Test split: {metrics['n']} conversations{of}, greedy generation.", "",
             "| metric | before training | after training |", "|---|---|---|"]  # fmt: skip
    for key in ("exact_match", "token_f1", "rouge_l"):
        lines.append(f"| {key} | {before[key]:.4f} | {metrics[key]:.4f} |")
    lines += ["", f"Validation loss {metrics['validation_loss']:.4f}, perplexity {metrics['perplexity']:.2f}.", "",
              "## Sample generations", ""]  # fmt: skip
    for s in samples:
        lines += [f"**Prompt:** {s['prompt']}", "", f"- reference: {s['reference']!r}", f"- before: {s['before']!r}",
                  f"- after: {s['after']!r}", ""]  # fmt: skip
    return "\n".join(lines)


def evaluate_file(generator: Generator, path: str | Path, out_dir: str | Path, **_options: Any) -> dict[str, Any]:
    """Generate for each conversation of a file and score against its last answer; write a report."""
    issues: list[DataIssue] = []
    conversations = read_conversations(path, issues)
    metrics, rows = evaluate_conversations(generator, conversations, limit=None)  # a file is scored whole
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"test": metrics}, indent=2), encoding="utf-8")
    (folder / "generations.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"test": metrics, "issues": [str(i) for i in issues]}
