"""tunesmith's defaults against a plain `transformers.Trainer` script, with and without a time budget.

    python bench/vs_plain.py                          # trec and banking77, a 5-minute budget
    python bench/vs_plain.py --only banking77 --budget 15
    python bench/vs_plain.py --only wnut17            # named entities: entity F1 instead of accuracy
    python bench/vs_plain.py --only goemotions --budget 15   # multi-label: macro-F1, micro-F1, subset accuracy
    python bench/vs_plain.py --only goemotions --budget 15 --runs plain   # one run; the others are kept

Per dataset, on its official test split, with the embedded all-MiniLM-L6-v2:
- plain: the script a practitioner writes (3 epochs, batch 32, lr 5e-5, linear decay, bf16 autocast where the
  CPU has native bf16 and fp32 elsewhere, as tunesmith decides; dynamic padding), no budget;
- wave-1 schedule + budget: a Trainer with wave 1's defaults (batch 16, lr 1e-4, 10 % warmup planned for 8
  epochs) stopped when the budget runs out: what `--max-minutes` did before runs were planned;
- tunesmith: `tunesmith.train` with its defaults, unbounded, and with `max_minutes` = the budget.
Accuracy and macro-F1 on the test split (entity-level F1, precision and recall for WNUT-17), minutes of training, and training examples per second. Run it
alone on the machine: two runs side by side change the speeds by 3-10x. Writes bench/results/vs_plain.json.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import tunesmith
from _common import RESULTS, machine, require_shared_data, save
from accuracy import prepare
from tunesmith.config import DEFAULT_MODEL
from tunesmith.data import load_classification_data
from tunesmith.models import bf16_supported, resolve_model
from tunesmith.tasks.token_classification.sentences import load_token_data


def read_split(kwargs: dict[str, Any], load: Callable[[Any], Any]) -> Any:
    """The same rows tunesmith trains on (duplicates dropped, the same validation cut) and the test rows."""
    overrides = {f"data.{k}": str(v) for k, v in kwargs.items() if k in {"validation", "test"}}
    return load(tunesmith.load_config(None, {"data.train": str(kwargs["data"]), **overrides}))


def fit(model: Any, rows: list[dict], collator: Any, *, epochs: float, batch: int, lr: float, warmup: float,
        budget: float | None) -> dict[str, float]:
    """A plain Trainer run over `rows`, stopped when `budget` minutes run out: its minutes, speed and epochs."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Budget(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.monotonic()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if budget is not None and time.monotonic() - self.start > budget * 60:
                control.should_training_stop = True

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=batch,
                                 learning_rate=lr, warmup_steps=warmup, lr_scheduler_type="linear", bf16=bf16_supported(),
                                 use_cpu=True, save_strategy="no", eval_strategy="no", report_to=[],
                                 disable_tqdm=True, logging_strategy="no", seed=42)  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator, callbacks=[Budget()])
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    model.eval()
    return speed(trainer.state.global_step, batch, len(rows), epochs, seconds)


def speed(steps: int, batch: int, examples: int, epochs: float, seconds: float) -> dict[str, float]:
    """Minutes, examples a second and epochs of `steps` batches (the last batch of an epoch may be short)."""
    return {"minutes": seconds / 60, "examples_per_second": min(steps * batch, examples * epochs) / seconds,
            "epochs": steps / math.ceil(examples / batch)}  # fmt: skip


def trainer_run(data: Any, *, epochs: float, batch: int, lr: float, warmup: float, budget: float | None) -> dict:
    """The plain text-classification script: [CLS] head, dynamic padding, argmax on the test texts; on multi-label
    data (GoEmotions) the Hugging Face multi-label recipe: sigmoid outputs, binary cross-entropy, 0.5 on each label.
    Scored by tunesmith's own metrics, so the numbers differ by the training alone."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from tunesmith.tasks.text_classification.evaluation import classification_metrics, multi_hot

    path = resolve_model(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    n = len(data.label_names)
    problem = "multi_label_classification" if data.multi_label else "single_label_classification"
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=n, problem_type=problem)
    encoded = tokenizer(data.train.texts, truncation=True, max_length=128)
    targets = multi_hot(data.train.labels, n).astype(np.float32).tolist() if data.multi_label else data.train.labels
    rows = [{"input_ids": ids, "attention_mask": mask, "labels": label}
            for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], targets, strict=True)]  # fmt: skip
    trained = fit(model, rows, DataCollatorWithPadding(tokenizer), epochs=epochs, batch=batch, lr=lr, warmup=warmup,
                  budget=budget)  # fmt: skip
    outputs = []
    with torch.inference_mode():
        for i in range(0, len(data.test.texts), 64):
            batch_in = tokenizer(data.test.texts[i : i + 64], truncation=True, max_length=128, padding=True,
                                 return_tensors="pt")  # fmt: skip
            logits = model(**batch_in).logits
            outputs.append(logits.sigmoid() if data.multi_label else logits.softmax(-1))
    metrics = classification_metrics(data.test.labels, torch.cat(outputs).numpy(), data.label_names, data.multi_label)
    return {"accuracy": metrics["accuracy"], "f1_macro": metrics["f1_macro"], "f1_micro": metrics["f1_micro"],
            **trained}  # fmt: skip


def tagger_run(data: Any, *, epochs: float, batch: int, lr: float, warmup: float, budget: float | None) -> dict:
    """The plain token-classification script (the Hugging Face tutorial's): each word's first sub-token carries its
    tag, the word takes the first sub-token's prediction. Scored as tunesmith scores (seqeval strict IOB2, a stray
    I- read as opening an entity), so the numbers differ by the training alone."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification

    from tunesmith.tasks.token_classification.metrics import repair_tags, seqeval_report

    path = resolve_model(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    names = data.label_names
    model = AutoModelForTokenClassification.from_pretrained(path, num_labels=len(names))
    index = {tag: i for i, tag in enumerate(names)}
    encoded = tokenizer([s.tokens for s in data.train], is_split_into_words=True, truncation=True, max_length=128)
    rows = []
    for n, sentence in enumerate(data.train):
        words = encoded.word_ids(n)
        labels = [-100 if w is None or (i > 0 and w == words[i - 1]) else index[sentence.tags[w]]
                  for i, w in enumerate(words)]  # fmt: skip
        rows.append({"input_ids": encoded["input_ids"][n], "attention_mask": encoded["attention_mask"][n], "labels": labels})
    trained = fit(model, rows, DataCollatorForTokenClassification(tokenizer), epochs=epochs, batch=batch, lr=lr,
                  warmup=warmup, budget=budget)  # fmt: skip
    predicted = []
    with torch.inference_mode():
        for i in range(0, len(data.test), 64):
            chunk = [s.tokens for s in data.test[i : i + 64]]
            batch_in = tokenizer(chunk, is_split_into_words=True, truncation=True, max_length=128, padding=True,
                                 return_tensors="pt")  # fmt: skip
            best = model(**batch_in).logits.argmax(-1).tolist()
            for n, tokens in enumerate(chunk):
                tags = ["O"] * len(tokens)  # words cut off by truncation stay outside any entity
                for position, word in reversed(list(enumerate(batch_in.word_ids(n)))):
                    if word is not None:
                        tags[word] = names[best[n][position]]  # reversed: the first sub-token's is written last
                predicted.append(repair_tags(tags))
    report = seqeval_report([s.tags for s in data.test], predicted)
    return {"f1": report["f1"], "precision": report["precision"], "recall": report["recall"], **trained}


def tunesmith_run(kwargs: dict[str, Any], budget: float | None, work: Path, tag: str, scores: tuple[str, ...]) -> dict:
    options = {k: v for k, v in kwargs.items() if k not in {"data", "max_minutes"}}
    if budget is not None:
        options["max_minutes"] = budget
    result = tunesmith.train(kwargs["data"], registry=tunesmith.Registry(work / f"home-{tag}"), name="bench",
                             progress=False, log=lambda _m: None, **options)  # fmt: skip
    plan = json.loads((result.version.path / "tunesmith.json").read_text())["plan"]
    return {**{k: result.metrics[k] for k in scores},
            **speed(plan["steps_done"], plan["batch_size"], plan["examples"], plan["epochs"], result.train_minutes * 60),
            "planned_steps": plan["total_steps"], "limited_by": plan["limited_by"],
            **{f"baseline_{k}": result.baseline[k] for k in scores}}  # fmt: skip


def wnut17(data: Path) -> dict[str, object]:
    folder = data / "wnut17"
    return {"data": folder / "wnut17train.conll", "task": "token-classification",
            "validation": str(folder / "emerging.dev.conll"), "test": str(folder / "emerging.test.annotated")}  # fmt: skip


@dataclass(frozen=True)
class Kind:
    arguments: Callable[[str, Path, Path], dict[str, object]]  # (name, shared data, work folder) -> train's
    load: Callable[[Any], Any]  # config -> the split data, as the task reads it
    plain: Callable[..., dict]  # the plain script
    scores: tuple[str, ...]  # the table's score columns


CLASSIFICATION = Kind(prepare, lambda config: load_classification_data(config.data, seed=config.seed), trainer_run,
                      ("accuracy", "f1_macro"))  # fmt: skip
MULTI_LABEL = Kind(prepare, CLASSIFICATION.load, trainer_run, ("f1_macro", "f1_micro", "accuracy"))
KINDS = {"goemotions": MULTI_LABEL, "wnut17": Kind(lambda _name, data, _work: wnut17(data), load_token_data, tagger_run, ("f1", "precision", "recall"))}


def one_run(run: str, kind: Kind, data: Any, kwargs: dict[str, Any], work: Path, budget: float) -> dict:
    """One row of a dataset's table."""
    if run == "plain":
        return kind.plain(data, epochs=3, batch=32, lr=5e-5, warmup=0.0, budget=None)
    if run == "wave-1 schedule + budget":
        return kind.plain(data, epochs=8, batch=16, lr=1e-4, warmup=0.1, budget=budget)
    bounded = run == "tunesmith + budget"
    return tunesmith_run(kwargs, budget if bounded else None, work, "budget" if bounded else "free", kind.scores)


# --runs names for the table's rows
RUNS = {"plain": "plain", "wave-1 schedule + budget": "wave1", "tunesmith": "tunesmith",
        "tunesmith + budget": "tunesmith-budget"}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=["trec", "banking77"])
    parser.add_argument("--budget", type=float, default=5.0, help="minutes")
    parser.add_argument("--runs", nargs="*", choices=sorted(set(RUNS.values())), default=sorted(set(RUNS.values())),
                        help="which runs (a dataset's other runs of the same budget are kept from earlier)")
    args = parser.parse_args()
    shared = require_shared_data()
    previous = json.loads((RESULTS / "vs_plain.json").read_text()) if (RESULTS / "vs_plain.json").is_file() else {}
    results: dict[str, Any] = previous.get("datasets", {})
    for kept in results.values():  # written before datasets kept their own machine: the file's was theirs
        kept.setdefault("machine", previous.get("machine"))
    path = RESULTS / "vs_plain.json"
    for name in args.only:
        with tempfile.TemporaryDirectory() as folder:
            work = Path(folder)
            kind = KINDS.get(name, CLASSIFICATION)
            scores = kind.scores
            kwargs = kind.arguments(name, shared, work)
            kwargs["data"] = str(kwargs["data"])
            data = read_split(kwargs, kind.load)
            kept = results.get(name, {})
            same = kept.get("budget_minutes") == args.budget and kept.get("train_rows") == len(data.train)
            runs = dict(kept.get("runs", {})) if same else {}
            for run, option in RUNS.items():
                if option not in args.runs:
                    continue
                # saved as each run ends: one dataset takes hours here (GoEmotions' plain run alone over an hour)
                runs[run] = {**one_run(run, kind, data, kwargs, work, args.budget), "machine": machine()}
                results[name] = {"budget_minutes": args.budget, "train_rows": len(data.train),
                                 "test_rows": len(data.test), "runs": runs, "machine": machine()}  # fmt: skip
                path = save("vs_plain", {"datasets": results})
        print(f"\n{name}: {len(data.train)} training rows, test {len(data.test)}, budget {args.budget:g} min")
        print(f"| run | {' | '.join(scores)} | minutes | examples/s | epochs |\n|---|" + "---|" * (len(scores) + 3))
        for run, r in runs.items():
            print(f"| {run} | {' | '.join(f'{r[k]:.4f}' for k in scores)} | {r['minutes']:.1f} | "
                  f"{r['examples_per_second']:.0f} | {r['epochs']:.2f} |")  # fmt: skip
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
