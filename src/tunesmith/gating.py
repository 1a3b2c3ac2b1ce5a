"""The regression gate: a candidate version earns its promotion against the version in production.

`tunesmith gate CANDIDATE --against production` scores both on the same rows and checks, in this order:

1. **No regression on the frozen test split** stored in the production artifact (the rows it was judged on):
   the candidate may not be worse beyond noise. Paired, exact McNemar test on the rows exactly one of the two
   got right (one-sided: is the candidate worse?), at the stated confidence (95 %).
2. **Better on the held-out feedback**: one input in five that users sent right answers for never goes into a
   training file (`tunesmith feedback --export` leaves it out); on those the candidate must get more right than
   production (skipped, and said so, when there are none).
3. **Latency**: the candidate's time per example within `max_latency_ratio` (1.5x) of production's, on the
   same backend choice the server makes: the faster of interleaved timed passes over the same rows, so that
   another process's burst during one model's pass is not read as a regression.
4. **Export agreement**: a task exported to ONNX is served from its export, so the candidate needs one that
   passed its agreement check (`tunesmith export CANDIDATE`).

A pass moves the `candidate` alias and is recorded in the registry; `models promote ... --alias production`
refuses a version without a passing gate against the current production unless `--force`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from tunesmith.errors import ConfigError, ConflictError, NotFoundError

CANDIDATE_ALIAS = "candidate"
GATED_ALIAS = "production"


@dataclass
class Criterion:
    name: str
    passed: bool | None  # None: not judged (nothing to judge on)
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class GateResult:
    candidate: str
    against: str
    passed: bool
    criteria: list[Criterion]

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "against": self.against, "passed": self.passed,
                "criteria": [asdict(c) for c in self.criteria]}  # fmt: skip

    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.criteria if c.passed is False]


def check_promotion(registry: Any, ref: str, alias: str, force: bool = False, how: str = "pass --force") -> None:
    """Refuse to move `production` to a version that has not passed the gate against the current production
    (the first production version, and any other alias, move freely; `force` skips the check)."""
    if alias != GATED_ALIAS or force:
        return
    target = registry.resolve(ref)
    try:
        current = registry.resolve(f"{target.name}@{GATED_ALIAS}")
    except NotFoundError:
        return  # the first production version: nothing to be judged against
    if current.version != target.version and not registry.gate_passed(target.name, target.version, current.version):
        raise ConflictError(f"{target.ref} has not passed the regression gate against production ({current.ref}): "
                            f"run `tunesmith gate {target.ref}` first, or {how}.")


def mcnemar_worse(candidate_right: list[bool], production_right: list[bool]) -> tuple[float, int, int]:
    """One-sided exact McNemar test: (p-value that the candidate is no worse, rows only production got right,
    rows only the candidate got right)."""
    from scipy.stats import binomtest

    lost = sum(p and not c for c, p in zip(candidate_right, production_right, strict=True))
    won = sum(c and not p for c, p in zip(candidate_right, production_right, strict=True))
    if lost + won == 0:
        return 1.0, 0, 0
    return float(binomtest(lost, lost + won, 0.5, alternative="greater").pvalue), lost, won


def _batches(task: Any, predictor: Any, items: list[Any]) -> list[Any]:
    """The predictor's outputs for `items`, a server batch (32) at a time."""
    return [task.serve_compute(predictor, items[start : start + 32], 32) for start in range(0, len(items), 32)]


def _answers(task: Any, predictor: Any, items: list[Any]) -> list[dict[str, Any]]:
    return [answer for batch in _batches(task, predictor, items) for answer in task.log_outputs(predictor, batch)]


def _latencies(task: Any, predictors: list[Any], items: list[Any], rows: int = 128) -> list[float]:
    """Seconds per example of each predictor: the fastest of its passes over the same first `rows` items, the
    predictors taking turns within each round; at least 3 rounds, and more (up to 100) until a second has been
    spent, so that a small model's millisecond passes get enough tries. A single pass each, one after the other,
    failed a candidate as 1.5x slower whenever another process on the machine ran a burst during its pass."""
    sample = items[:rows]
    best = [float("inf")] * len(predictors)
    began = time.perf_counter()
    for round_ in range(100):
        if round_ >= 3 and time.perf_counter() - began > 1.0:
            break
        for i, predictor in enumerate(predictors):
            started = time.perf_counter()
            _batches(task, predictor, sample)
            best[i] = min(best[i], time.perf_counter() - started)
    return [seconds / max(1, len(sample)) for seconds in best]


def gate(registry: Any, candidate: str, against: str = "production", *, confidence: float = 0.95,
         max_latency_ratio: float = 1.5, log: Any = print) -> GateResult:  # fmt: skip
    """Judge `candidate` (a reference) against what `against` names (an alias or a version of the same model)."""
    from tunesmith.artifact import read_export
    from tunesmith.monitoring.feedback import read_feedback
    from tunesmith.tasks.catalog import TASKS

    new = registry.resolve(candidate)
    old = registry.resolve(against if "@" in against else f"{new.name}@{against}")
    if old.name != new.name:
        raise ConfigError(f"{candidate} and {against} are different models; gate a version of {old.name} against it.")
    if old.version == new.version:
        raise ConfigError(f"{new.ref} is what {against} names already: nothing to gate.")
    if old.task != new.task:
        raise ConfigError(f"{new.ref} is a {new.task} model and {old.ref} a {old.task} one.")
    task = TASKS[new.task]
    items, answers = task.reference(old.path, "test")
    if not items or answers is None:
        raise ConfigError(f"{old.ref} keeps no test split with answers to judge on; gate it with `tunesmith evaluate`.")
    log(f"Gate: {new.ref} against {old.ref} ({against}) on the {len(items)} test rows {old.ref} was judged on.")
    production = task.load(old.path, "auto")
    contender = task.load(new.path, "auto")
    old_out = _answers(task, production, items)
    new_out = _answers(task, contender, items)
    old_right = [task.is_correct(o, a) for o, a in zip(old_out, answers, strict=True)]
    new_right = [task.is_correct(o, a) for o, a in zip(new_out, answers, strict=True)]
    p, lost, won = mcnemar_worse(new_right, old_right)
    alpha = 1 - confidence
    worse = p < alpha
    accuracy = {"candidate": sum(new_right) / len(items), "production": sum(old_right) / len(items)}
    criteria = [Criterion(
        "test split", not worse,
        f"accuracy {accuracy['candidate']:.4f} vs {accuracy['production']:.4f} ({won} rows won, {lost} lost); "
        + (f"worse beyond noise (McNemar p={p:.2g} < {alpha:g})" if worse else
           f"not worse beyond noise at {confidence:.0%} (McNemar p={p:.2g})"),
        {**accuracy, "p_value": p, "lost": lost, "won": won, "n": len(items)},
    )]  # fmt: skip

    given = [f for f in read_feedback(registry.home, new.name) if f["input"] is not None]
    feedback = [f for f in given if f["held_out"]]  # never in an exported training file (`feedback --export`)
    if not feedback or not task.judges_feedback:
        why = f"{len(given)} feedback rows, none held out yet (one input in five is)" if given else "no feedback"
        if given and not task.judges_feedback:
            why = f"{len(given)} feedback rows, which train a {task.name} model but are no verdict on its outputs"
        criteria.append(Criterion("feedback", None, f"{why}: nothing to judge on"))
    else:
        inputs = [tuple(f["input"].values()) if isinstance(f["input"], dict) else f["input"] for f in feedback]
        old_fb = _answers(task, production, inputs)
        new_fb = _answers(task, contender, inputs)
        old_ok = sum(task.is_correct(o, f["answer"]) for o, f in zip(old_fb, feedback, strict=True))
        new_ok = sum(task.is_correct(o, f["answer"]) for o, f in zip(new_fb, feedback, strict=True))
        # Better, or as good where production already answers every one right: nothing left to win.
        passed = new_ok > old_ok or new_ok == old_ok == len(feedback)
        criteria.append(Criterion("feedback", passed, f"{new_ok} of {len(feedback)} held-out feedback answers right vs "
                                  f"{old_ok} ({'better' if passed else 'not better'})",
                                  {"candidate": new_ok, "production": old_ok, "n": len(feedback)}))  # fmt: skip

    old_seconds, new_seconds = _latencies(task, [production, contender], items)
    ratio = new_seconds / max(old_seconds, 1e-9)
    criteria.append(Criterion("latency", ratio <= max_latency_ratio,
                              f"{new_seconds * 1000:.2f} ms an example vs {old_seconds * 1000:.2f} ms ({ratio:.2f}x; "
                              f"at most {max_latency_ratio:g}x)", {"ratio": ratio}))  # fmt: skip
    if task.export_format == "onnx":
        record = read_export(new.path)
        if record is None or record.get("default") is None:
            criteria.append(Criterion("export", False, f"no ONNX export passed its agreement check: run `tunesmith "
                                      f"export {new.ref}` (the server would serve PyTorch)"))  # fmt: skip
        else:
            variant = record["variants"][record["default"]]
            criteria.append(Criterion("export", True, f"{record['default']} agrees {variant['agreement']:.4f} with "
                                      "PyTorch", {"agreement": variant["agreement"]}))  # fmt: skip
    else:
        criteria.append(Criterion("export", None, f"{task.name} models are served from their own export format"))
    result = GateResult(new.ref, old.ref, all(c.passed is not False for c in criteria), criteria)
    registry.record_gate(new.name, new.version, old.version, result.passed, result.to_dict())
    if result.passed:
        registry.promote(new.ref, CANDIDATE_ALIAS)
    return result
