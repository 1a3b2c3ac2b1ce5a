"""The run plan: steps from whichever of epochs, step limit and time budget ends first; warmup and decay laid over
those steps; evaluations spread over them; re-planned when the measured speed drifts."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

import tunesmith
from tunesmith.planning import Plan


def plan(**overrides: Any) -> Plan:
    settings = {"examples": 1000, "batch_size": 10, "epochs": 8.0, "max_steps": None, "budget_seconds": None,
                "warmup_ratio": 0.1, "evaluations": 10, "eval_examples": 100, **overrides}  # fmt: skip
    return Plan(**settings)


def test_the_budget_sets_the_steps_and_the_schedule_follows() -> None:
    p = plan(budget_seconds=60)
    assert p.total_steps == 800 and p.limited_by == "epochs"  # nothing timed yet
    p.seconds_per_step = 0.5
    assert p.fit_budget(step=9, elapsed=5.0)
    # 60 s less 3 % margin less 5 s spent, less the evaluations (100 rows at a third of a step's cost per row):
    # of the 10 asked, the 7 that keep evaluating within a fifth of the 60 s budget.
    assert p.evaluations == 7 and p.asked_evaluations == 10
    assert p.limited_by == "time budget" and p.total_steps == 9 + int((60 * 0.97 - 5 - 7 * 100 * 0.05 / 3) / 0.5)
    assert p.warmup_steps == pytest.approx(0.1 * p.total_steps, abs=1)
    assert p.lr_factor(0) == 0 and p.lr_factor(p.warmup_steps) == 1.0
    assert p.lr_factor(p.total_steps) == 0.0  # decayed to zero at the planned end, not at epoch 8
    assert p.eval_every == -(-p.total_steps // 7)
    for step in range(1, p.total_steps + 1):
        p.evaluations_done += p.evaluates_at(step)
    assert p.evaluations_done == 7
    assert "set by the 1.0 min budget" in p.describe() and "Without the budget: 800 steps" in p.describe()
    assert "7 evaluations (of 10 asked" in p.describe()


def test_evaluations_that_would_eat_the_budget_are_thinned_not_the_training() -> None:
    """SQuAD windows on a slow CPU: 10.9 s a step, so ten evaluations of 400 windows would cost the whole
    15-minute budget, and a plan that kept them trained 10 steps."""
    p = plan(examples=4400, batch_size=16, evaluations=10, eval_examples=400, budget_seconds=900)
    p.seconds_per_step = 10.87
    p.fit_budget(step=9, elapsed=100.0)
    left = 900 * 0.97 - 100
    one = 400 * 10.87 / 16 / 3
    assert 1 <= p.evaluations < 10 and p.evaluations * one <= max(one, 0.2 * 900)
    later = p.evaluations
    p.evaluations_done = 0
    p.fit_budget(step=40, elapsed=100.0 + 31 * 10.87)
    assert p.evaluations == later  # steady as the budget is spent: a fifth of the whole, not of what is left
    assert p.total_steps == 9 + int((left - p.evaluations * one) / 10.87) > 60
    for step in range(1, p.total_steps + 1):
        p.evaluations_done += p.evaluates_at(step)
    assert p.evaluations_done == p.evaluations  # the last one at the planned end
    faster = plan(examples=4400, batch_size=16, evaluations=10, eval_examples=400, budget_seconds=900)
    faster.seconds_per_step = 0.5  # cheap evaluations: all ten kept
    faster.fit_budget(step=9, elapsed=5.0)
    assert faster.evaluations == 10


def test_padded_tokens_per_step_follows_how_the_trainer_batches() -> None:
    from tunesmith.planning import padded_tokens_per_step

    assert padded_tokens_per_step([12] * 100, 10, grouped=True) == 120
    lengths = [10] * 500 + [200] * 20  # a few long rows: a random batch is padded to them, a grouped one rarely
    grouped, shuffled = padded_tokens_per_step(lengths, 16, True), padded_tokens_per_step(lengths, 16, False)
    assert sum(lengths) / len(lengths) * 16 <= grouped < shuffled
    assert padded_tokens_per_step([], 16, True) is None


def test_the_speed_is_timed_per_token_when_the_longest_batches_come_first() -> None:
    """The length-grouped sampler serves each megabatch longest first: 8 steps of 1,000 tokens at 1 ms a token
    must not plan a run whose average step holds 250 tokens as if every step took a second."""
    from types import SimpleNamespace

    from tunesmith.planning import planning_callback

    now = [0.0]
    p = plan(examples=16_000, batch_size=16, epochs=1.0, budget_seconds=600, evaluations=1, eval_examples=10,
             tokens_per_step=250.0)  # fmt: skip
    callback = planning_callback(p, log=lambda _line: None, clock=lambda: now[0])
    state = SimpleNamespace(global_step=0, num_input_tokens_seen=0)
    callback.on_train_begin(None, state, None)
    control = SimpleNamespace(should_evaluate=False, should_save=False, should_training_stop=False)
    for step in range(1, 10):
        now[0] += 1.0
        state.global_step, state.num_input_tokens_seen = step, state.num_input_tokens_seen + 1000
        callback.on_step_end(None, state, control)
    assert p.seconds_per_step == pytest.approx(0.25)
    assert p.total_steps == 1000 and p.limited_by == "epochs"  # a second a step would have fitted ~580
    untokened = plan(examples=16_000, batch_size=16, epochs=1.0, budget_seconds=600, evaluations=1, eval_examples=10)
    callback = planning_callback(untokened, log=lambda _line: None, clock=lambda: now[0])
    state = SimpleNamespace(global_step=0, num_input_tokens_seen=0)
    callback.on_train_begin(None, state, None)
    for step in range(1, 10):  # no token counts (or no tokens_per_step): timed per step, as before
        now[0] += 1.0
        state.global_step = step
        callback.on_step_end(None, state, control)
    assert untokened.seconds_per_step == pytest.approx(1.0) and untokened.limited_by == "time budget"


def test_a_budget_spent_before_the_steps_are_timed_ends_the_run_and_says_so() -> None:
    """Steps so slow that the budget runs out within the calibration: the run ends there, and the plan it records
    names the budget as what ended it (and the steps it trained), not the epochs or step limit it started from."""
    from types import SimpleNamespace

    from tunesmith.planning import planning_callback

    now = [0.0]
    p = plan(examples=1600, batch_size=16, epochs=3.0, max_steps=200, budget_seconds=30, evaluations=1)
    callback = planning_callback(p, log=lambda _line: None, clock=lambda: now[0])
    state = SimpleNamespace(global_step=0, num_input_tokens_seen=0)
    callback.on_train_begin(None, state, None)
    control = SimpleNamespace(should_evaluate=False, should_save=False, should_training_stop=False)
    for step in range(1, 4):  # 20 s a step: the 30 s budget is gone at step 2, long before 8 are timed
        now[0] += 20.0
        state.global_step = step
        callback.on_step_end(None, state, control)
        if control.should_training_stop:
            break
    assert step == 2 and control.should_evaluate  # ended at once, scoring the weights it ends with
    assert (p.total_steps, p.steps_done, p.limited_by) == (2, 2, "time budget")


def test_step_limits_and_epochs_bound_the_plan() -> None:
    limited = plan(max_steps=50, budget_seconds=3600)
    limited.seconds_per_step = 0.1
    limited.fit_budget(step=9, elapsed=1.0)
    assert limited.total_steps == 50 and limited.limited_by == "step limit"
    roomy = plan(epochs=2.0, budget_seconds=3600)
    roomy.seconds_per_step = 0.1
    roomy.fit_budget(step=9, elapsed=1.0)
    assert roomy.total_steps == 200 and roomy.limited_by == "epochs"


def test_a_slower_speed_replans_without_a_jump_in_the_learning_rate() -> None:
    p = plan(budget_seconds=120)
    p.seconds_per_step = 0.2
    p.fit_budget(step=9, elapsed=2.0)
    first = p.total_steps
    before = p.lr_factor(200)
    p.seconds_per_step = 0.4  # the steps got twice as slow
    assert p.fit_budget(step=200, elapsed=50.0)
    assert p.replans == 1 and p.total_steps < first
    assert p.lr_factor(200) == pytest.approx(before)  # bends from where it was...
    assert p.lr_factor(p.total_steps) == 0.0  # ...to zero at the new end
    assert not p.fit_budget(step=208, elapsed=50.0 + 8 * 0.4)  # on plan: no re-plan for noise


def test_a_long_unbounded_run_is_announced() -> None:
    p = plan(examples=67_000, batch_size=16, epochs=8.0)
    p.seconds_per_step = 0.3
    p.fit_budget(step=9, elapsed=3.0)
    assert "about 2 h" in (p.long_run_warning() or "") and "--max-minutes" in (p.long_run_warning() or "")
    bounded = plan(budget_seconds=900)
    bounded.seconds_per_step = 0.3
    bounded.fit_budget(step=9, elapsed=3.0)
    assert bounded.long_run_warning() is None


def slow_steps(seconds: Any) -> Any:
    """A Trainer callback that makes every step slower by `seconds(step)`: a fake slow machine."""
    from transformers import TrainerCallback

    class Slow(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            time.sleep(seconds(state.global_step))

    return Slow()


def test_a_budgeted_run_is_planned_replanned_and_ends_on_plan(
    tiny_model: str, support_csv: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:  # fmt: skip
    from tunesmith.tasks import get_task

    config = tunesmith.load_config(None, {"data.train": str(support_csv), "name": "planned", "train.base_model": tiny_model,
                                          "train.epochs": 100, "train.learning_rate": 5e-3, "train.batch_size": 16,
                                          "train.max_minutes": 0.25, "data.train_on_small_validation": False,
                                          "train.method": "full"})  # fmt: skip
    logs: list[str] = []
    started = time.monotonic()
    # 0.1 s a step, then 0.25 s from step 40: the plan made on the first speed no longer fits and is re-made.
    result = get_task("text-classification").train(
        config, registry=tunesmith.Registry(tmp_path / "home"), progress=True, log=logs.append,
        callbacks=[slow_steps(lambda step: 0.1 if step < 40 else 0.25)],
    )  # fmt: skip
    trained = time.monotonic() - started
    shown, bar = capfd.readouterr()
    logs += shown.splitlines()  # with the bar on, the plan's lines are written above it
    planned = json.loads((result.version.path / "tunesmith.json").read_text())["plan"]
    assert planned["limited_by"] == "time budget" and planned["replans"] >= 1, logs
    assert any(line.startswith("Plan: up to 600 steps") for line in logs), logs  # before the first step
    assert any(line.startswith("Plan:") and "set by the 15 s budget" in line for line in logs), logs
    assert any(line.startswith("Re-planned at step") for line in logs), logs
    # 15 s of budget at >= 0.1 s a step: far fewer than the 600 steps of 100 epochs, and it ended on the plan.
    history = json.loads((result.version.path / "metrics.json").read_text())
    steps_run = round(history["epochs_run"] * 6)  # 96 training texts: 6 steps an epoch
    assert 40 < steps_run == planned["total_steps"] == planned["steps_done"] < 150
    assert trained < 15 + 20  # the budget bounds training; loading, the baseline and the report come on top
    evaluations = [line for line in logs if line.startswith("epoch ") and "validation" in line]
    assert len(evaluations) == planned["evaluations"]  # on the planned cadence, the last at the planned end
    done, total = map(int, re.findall(r"(\d+)/(\d+) \[", bar)[-1])
    assert done == total == planned["total_steps"], bar[-300:]  # the bar counts to the plan, not to 100 epochs


def test_without_a_budget_the_evaluations_are_spread_over_the_epochs(train_tiny, support_csv: Path) -> None:
    result = train_tiny(support_csv, epochs=5, evaluations=4, train_on_small_validation=False, method="full")
    planned = json.loads((result.version.path / "tunesmith.json").read_text())["plan"]
    assert planned["total_steps"] == 30 and planned["limited_by"] == "epochs" and planned["eval_every"] == 8


def _train_watching(config: Any, tmp_path: Path) -> tuple[Any, list[str], dict[str, Any]]:
    """Train with a callback that records how the Trainer was set up."""
    from transformers import TrainerCallback

    from tunesmith.tasks import get_task

    seen: dict[str, Any] = {}

    class Watch(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seen.update(best_at_end=args.load_best_model_at_end, train_rows=len(kwargs["train_dataloader"].dataset))

    logs: list[str] = []
    result = get_task("text-classification").train(config, registry=tunesmith.Registry(tmp_path / "home"),
                                                    progress=False, log=logs.append, callbacks=[Watch()])  # fmt: skip
    return result, logs, seen


def test_small_data_trains_on_every_row_for_the_planned_steps_and_keeps_the_last_weights(
    tiny_model: str, support_csv: Path, tmp_path: Path
) -> None:  # fmt: skip
    # 120 texts: 12 validation rows, too few to stop on or to pick a checkpoint by, so they train the model too.
    config = tunesmith.load_config(None, {"data.train": str(support_csv), "name": "small", "train.base_model": tiny_model,
                                          "train.learning_rate": 5e-3, "train.batch_size": 16})  # fmt: skip
    result, logs, seen = _train_watching(config, tmp_path)
    meta = json.loads((result.version.path / "tunesmith.json").read_text())
    sizes = meta["data"]["sizes"]
    assert sizes["train"] == seen["train_rows"] == 120 - sizes["test"], sizes  # validation rows folded in
    assert seen["best_at_end"] is False
    assert any("too few to choose a checkpoint by" in line and "train the model too" in line for line in logs), logs
    assert any(line.startswith("No early stopping") and "keeps the last weights" in line for line in logs), logs
    assert json.loads((result.version.path / "metrics.json").read_text())["validation_trained_on"] is True
    planned = meta["plan"]
    assert planned["total_steps"] >= 300 and planned["limited_by"] == "epochs"  # the promised ~300 steps


def test_a_validation_file_given_is_never_trained_on(
    tiny_model: str, support_rows: list[tuple[str, str]], tmp_path: Path
) -> None:  # fmt: skip
    from conftest import write_csv

    train = write_csv(tmp_path / "train.csv", support_rows[:100])
    validation = write_csv(tmp_path / "validation.csv", support_rows[100:])
    config = tunesmith.load_config(None, {"data.train": str(train), "data.validation": str(validation), "name": "v",
                                          "train.base_model": tiny_model, "train.epochs": 2, "train.method": "full",
                                          "train.learning_rate": 5e-3, "train.batch_size": 16})  # fmt: skip
    result, logs, seen = _train_watching(config, tmp_path)
    sizes = json.loads((result.version.path / "tunesmith.json").read_text())["data"]["sizes"]
    assert sizes["validation"] == 20 and seen["train_rows"] == sizes["train"] == 100 - sizes["test"]
    assert not any("train the model too" in line for line in logs)
    assert json.loads((result.version.path / "metrics.json").read_text())["validation_trained_on"] is False
