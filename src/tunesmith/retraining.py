"""`tunesmith retrain NAME`: a candidate trained on what production learned from plus what it got wrong since,
exported and judged by the regression gate, for every task.

The new rows are the feedback collected for the model (without the held-out fifth the gate judges on) and any
files given. How they meet the old training rows (kept in every artifact, `data/train.jsonl`) is the strategy:

- `rehearsal` (default): production's weights trained further on the new rows mixed with a replay sample of the
  old ones (REPLAY times the new rows, at least MIN_REPLAY of each old label), so what production knew is
  rehearsed while it learns the new, at a smaller step than a fresh run (WARM_LEARNING_RATE; measured in
  bench/improve.py);
- `scratch`: production's own base model and settings on every old row and every new one: the slowest, and
  the reference the others are measured against;
- `feedback`: production's weights on the new rows alone: what a hand-run fine-tune does; measured to forget;
- `lora`: a LoRA adapter over production's weights on the rehearsal mix (the artifact is small, but it needs
  its parent's weights, so the parent cannot be deleted while it exists). A parent with a head of tunesmith's
  own (an embedding-head classifier) is retrained as `rehearsal`: peft wraps transformers' model classes.

A label that appears only in the feedback extends the head: the old labels' rows are carried over by name
(`models.carry_head_rows`), the new one starts fresh. The candidate is validated and tested on production's own
frozen splits, so its scores and production's are comparable row for row, and its `tunesmith.json` records its
lineage (parent, strategy, rows and fingerprints: `tunesmith models show`).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tunesmith.errors import ConfigError, DataError

Strategy = Literal["rehearsal", "scratch", "feedback", "lora"]
STRATEGIES: tuple[str, ...] = ("rehearsal", "scratch", "feedback", "lora")
REPLAY = 2.0  # old rows replayed per new row (bench/improve.py: docs/improving.md)
MIN_REPLAY = 8  # old rows of each label replayed at least (all of them when a label has fewer)
WARM = ("rehearsal", "feedback", "lora")  # strategies that start from production's weights
# Production's weights already sit where its data put them; a fresh run's step (1e-4 for full fine-tuning) moves
# them far enough to forget (bench/improve.py: docs/improving.md), so a warm full fine-tune takes a smaller one.
WARM_LEARNING_RATE = 2e-5
Log = Any


@dataclass
class Retrained:
    """What `retrain` made: the training result, the gate's verdict (None when not gated) and the lineage."""

    result: Any  # tasks.base.TrainResult
    gate: Any  # gating.GateResult | None
    lineage: dict[str, Any]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file (a kept split, an exported feedback file) or of a table `tunesmith train` reads."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number}: not valid JSON ({exc.msg}).") from None
        return rows
    import pandas as pd

    from tunesmith.data import read_table

    frame = read_table(path)
    return [{k: v for k, v in row.items() if not (isinstance(v, float) and pd.isna(v))}
            for row in frame.to_dict("records")]  # fmt: skip


def replay_sample(rows: Sequence[dict[str, Any]], size: int, stratify: str | None, seed: int) -> list[dict[str, Any]]:
    """`size` of `rows`, keeping the proportions of the `stratify` field's values with at least MIN_REPLAY of
    each (all of a rarer one): every old label is rehearsed, however small its share."""
    if size >= len(rows):
        return list(rows)
    generator = random.Random(seed)
    if stratify is None:
        return generator.sample(list(rows), size)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[json.dumps(row.get(stratify), sort_keys=True, ensure_ascii=False)].append(row)
    chosen: list[dict[str, Any]] = []
    for key in sorted(groups):
        group = groups[key]
        share = max(MIN_REPLAY, round(size * len(group) / len(rows)))
        chosen += generator.sample(group, min(len(group), share))
    generator.shuffle(chosen)
    return chosen


def _digest(rows: Sequence[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()[:16]


def _write(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _warm_start_problem(parent: Any, meta: dict[str, Any]) -> str | None:
    """Why `parent`'s weights cannot be trained further, or None when they can."""
    model = Path(parent.path) / "model"
    if meta.get("method") not in ("full", "frozen") or not any(model.glob("*.safetensors")):
        return (f"{parent.ref} holds no full set of weights to train further (method {meta.get('method')}): "
                "trained from its base model instead")  # fmt: skip
    return None


def retrain(
    registry: Any,
    name: str,
    *,
    strategy: str = "rehearsal",
    against: str = "production",
    files: Sequence[str | Path] = (),
    replay: float = REPLAY,
    overrides: Sequence[str] = (),
    gate: bool = True,
    export: bool = True,
    feedback_until: int | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Log = print,
) -> Retrained:
    """Train the next version of `name` from the version `against` names (an alias or NAME@VERSION) and the
    feedback since, export it and gate it against that version. See the module's docstring for `strategy`.
    `feedback_until` takes only feedback up to that id (a resumed `watch` step retrains on the same rows);
    `resume` continues an interrupted run of the same rows from its last checkpoint, when there is one."""
    from tunesmith.artifact import read_meta
    from tunesmith.config import apply_overrides, load_config
    from tunesmith.monitoring.feedback import read_feedback
    from tunesmith.paths import check_name
    from tunesmith.tasks.catalog import TASKS

    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy {strategy} is not one of {', '.join(STRATEGIES)}.")
    if replay < 0:
        raise ConfigError(f"--replay {replay}: give the old rows replayed per new row, 0 or more (default {REPLAY:g}).")
    name = check_name(name, "model name")
    parent = registry.resolve(against if "@" in against else f"{name}@{against}")
    task, meta = TASKS[parent.task], read_meta(parent.path)
    kept = Path(parent.path) / "data"
    old = read_rows(kept / "train.jsonl") if (kept / "train.jsonl").is_file() else []
    if not old and strategy != "feedback" and not files:
        raise ConfigError(f"{parent.ref} was trained before artifacts kept their training rows: pass its training file "
                          "with --data FILE (and the feedback comes on top), or --strategy feedback.")  # fmt: skip
    feedback = [f for f in read_feedback(registry.home, name) if f["input"] is not None and not f["held_out"]
                and (feedback_until is None or f["id"] <= feedback_until)]  # fmt: skip
    given = [row for file in files for row in read_rows(Path(file))]
    new = task.feedback_rows(feedback) + given
    if not new:
        raise ConfigError(f"No new rows for {name}: no feedback outside the held-out fifth and no --data file. Send "
                          f"corrections (POST /v1/models/{name}/feedback) or pass --data FILE.")  # fmt: skip

    problem = _warm_start_problem(parent, meta) if strategy in WARM else None
    if problem:
        log(f"Retrain: {problem}.")
        strategy = "scratch"
    elif strategy == "lora" and meta.get("architecture"):
        # peft wraps transformers' model classes; this head is tunesmith's own, and a LoRA run on the bare encoder
        # would put a fresh head under it, losing what the parent's head had learned.
        log(f"Retrain: {parent.ref} is a {meta['architecture']} model, whose head a LoRA adapter cannot carry: "
            "every weight trains instead (as --strategy rehearsal).")  # fmt: skip
        strategy = "rehearsal"
    unique = {json.dumps(row, sort_keys=True, ensure_ascii=False): row for row in new}  # feedback also sent as a file
    new = list(unique.values())
    old = [row for row in old if json.dumps(row, sort_keys=True, ensure_ascii=False) not in unique]
    if strategy == "scratch":
        replayed = old
    elif strategy == "feedback":
        replayed = []
    else:
        replayed = replay_sample(old, round(replay * len(new)), task.replay_stratify, seed=parent.version)
    rows = replayed + new
    random.Random(parent.version).shuffle(rows)

    lineage = {
        "parent": parent.ref, "against": against, "strategy": strategy,
        "rows": {"old": len(old), "replayed": len(replayed), "new": len(new), "feedback": len(feedback),
                 "files": len(given)},
        "feedback_until": max((f["id"] for f in feedback), default=None),
        "fingerprints": {"training_rows": _digest(rows), "feedback": _digest(task.feedback_rows(feedback))},
        "files": [str(f) for f in files],
    }  # fmt: skip
    work = registry.inside(Path(registry.home) / "retrain" / name)
    shutil.rmtree(work, ignore_errors=True)
    _write(work / "train.jsonl", rows)
    config = load_config(Path(parent.path) / "config.yaml")
    data = {"train": str(work / "train.jsonl"), "text_column": None, "label_column": None, "label_delimiter": None}
    for split in ("validation", "test"):
        if (kept / f"{split}.jsonl").is_file():
            shutil.copyfile(kept / f"{split}.jsonl", work / f"{split}.jsonl")
            data[split] = str(work / f"{split}.jsonl")
    # What the parent's run chose by itself is chosen again for the new data: epochs and step size by its size.
    settings: dict[str, Any] = {"epochs": None, "learning_rate": None, "max_steps": None}
    if strategy in WARM:
        settings.update(base_model=str(Path(parent.path) / "model"), method="lora" if strategy == "lora" else "full")
    if strategy in ("rehearsal", "feedback"):
        settings["learning_rate"] = WARM_LEARNING_RATE
    raw = config.model_dump(mode="json")
    raw["data"].update(data)
    raw["train"].update(settings)
    raw["lineage"] = lineage
    config = type(config).model_validate(apply_overrides(raw, list(overrides)))
    log(f"Retrain ({strategy}): {len(new)} new rows ({len(feedback)} from feedback, {len(given)} from files) "
        f"{'alone' if not replayed else f'with {len(replayed)} of the {len(old)} old rows'}, starting from "
        f"{parent.ref if strategy in WARM else config.train.base_model}.")  # fmt: skip
    resume = resume and (registry.run_dir(name) / "run.json").is_file()
    try:
        result = task.train(config, registry=registry, resume=resume, progress=progress, log=log)
    except ConfigError as exc:
        if not resume or "cannot be resumed" not in str(exc):
            raise
        log("Retrain: the interrupted run trained on other rows; starting afresh.")
        result = task.train(config, registry=registry, progress=progress, log=log)
    shutil.rmtree(work, ignore_errors=True)  # the artifact keeps the rows it trained on
    verdict = judge(registry, result.version.ref, parent.ref, export=export, gate=gate, log=log)
    return Retrained(result, verdict, lineage)


def judge(registry: Any, ref: str, against: str, *, export: bool = True, gate: bool = True, log: Log = print) -> Any:
    """Export `ref` (an ONNX task's, unless it already has an export) and gate it against `against`; the verdict."""
    from tunesmith.artifact import read_export
    from tunesmith.tasks.catalog import TASKS

    version = registry.resolve(ref)
    task = TASKS[version.task]
    if export and task.export_format == "onnx" and read_export(version.path) is None:
        log(f"Exporting {version.ref} ...")
        task.export(version.path, log=log)
    if not gate:
        return None
    from tunesmith.gating import gate as run_gate

    return run_gate(registry, version.ref, against, log=log)
