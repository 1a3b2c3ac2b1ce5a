"""The plan of a training run: how many steps, where the learning rate warms up and decays, when to evaluate.

A schedule planned for the epochs asked for is wrong whenever something else ends the run first: with a
15-minute budget on 67k texts, wave 1's 10 % warmup of 8 planned epochs took most of the 1.2 epochs that
fitted, and the learning rate never decayed. Here the plan is made from whichever ends first (the epochs,
the step limit or the time budget), with the time budget turned into steps from the measured speed of the
first steps and of the first evaluation, and made again whenever the measured speed drifts. The learning
rate follows the plan that holds at each step (linear warmup, then linear decay to zero at the planned
end), and evaluations are spread evenly over it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

Log = Callable[[str], None]

CALIBRATION_STEPS = 8  # steps timed (after the first, which pays for warm-up) before the time budget is planned
REPLAN_DRIFT = 0.1  # re-plan when the steps that fit move by more than this share (length-grouped batches vary)
REPLAN_EVERY = 50  # the speed is checked this many times over a plan (and at least every CALIBRATION_STEPS)
BUDGET_MARGIN = 0.03  # of the budget, kept for the last evaluation's save and the best checkpoint's reload
# At most this share of the budget goes to evaluating; the evaluations asked for are thinned to fit. On a
# slow CPU ten evaluations of a QA validation split cost more than a 15-minute budget, and a plan that kept
# them all trained 10 steps.
EVALUATION_SHARE = 0.2
LONG_RUN_MINUTES = 30  # an unbounded run longer than this is announced with a hint to bound it


@dataclass
class Plan:
    """The run's schedule; `fit_budget` changes `total_steps` as speed is measured."""

    examples: int
    batch_size: int
    epochs: float
    max_steps: int | None
    budget_seconds: float | None
    warmup_ratio: float
    evaluations: int
    eval_examples: int
    # Padded tokens in an average step over the run (`padded_tokens_per_step`); with it the speed is timed per
    # token, since length-grouped batches come longest first and the first steps are the slowest.
    tokens_per_step: float | None = None
    total_steps: int = 0
    limited_by: str = "epochs"
    asked_evaluations: int = 0  # what the settings asked for; `evaluations` is what the budget leaves room for
    seconds_per_step: float | None = None
    seconds_per_evaluation: float | None = None
    # Where the decay starts from: (step, learning-rate factor). Re-planning after warmup moves it to the step
    # of the re-plan, so the learning rate bends towards the new end instead of jumping.
    anchor: tuple[int, float] | None = None
    replans: int = 0
    evaluations_done: int = 0
    steps_done: int = 0  # trained so far; at the end, what the run trained, whatever ended it
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.asked_evaluations = self.asked_evaluations or self.evaluations
        if not self.total_steps:
            self.total_steps = self.bound_steps
            self.limited_by = "step limit" if self.max_steps and self.max_steps < self.epoch_steps else "epochs"

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.examples / self.batch_size))

    @property
    def epoch_steps(self) -> int:
        return max(1, math.ceil(self.steps_per_epoch * self.epochs))

    @property
    def bound_steps(self) -> int:
        """The steps the epochs and the step limit allow, whatever the time."""
        return min(self.epoch_steps, self.max_steps) if self.max_steps else self.epoch_steps

    @property
    def warmup_steps(self) -> int:
        return math.ceil(self.warmup_ratio * self.total_steps)

    @property
    def eval_every(self) -> int:
        return max(1, math.ceil(self.total_steps / max(1, self.evaluations)))

    def evaluates_at(self, step: int) -> bool:
        """Whether to evaluate after `step`: the k-th of the run's evaluations falls at k/evaluations of the plan
        as it stands, so a re-plan moves the ones still to come and the count stays as asked."""
        due = math.ceil((self.evaluations_done + 1) * self.total_steps / max(1, self.evaluations))
        return step >= self.total_steps or step >= due

    def lr_factor(self, step: int) -> float:
        """The learning rate at `step` as a share of the peak: linear warmup, then linear decay to 0 at the end."""
        warmup = self.warmup_steps
        if step < warmup and (self.anchor is None or step < self.anchor[0]):
            return step / max(1, warmup)
        start, factor = self.anchor if self.anchor is not None else (warmup, 1.0)
        if step <= start:
            return factor
        return factor * max(0.0, self.total_steps - step) / max(1, self.total_steps - start)

    def expected_seconds(self, steps: int | None = None) -> float | None:
        """Training and evaluation time of `steps` (default: the plan), from the speeds measured so far."""
        if self.seconds_per_step is None:
            return None
        steps = self.total_steps if steps is None else steps
        evaluations = min(self.evaluations, steps) if self.evaluations else 1
        return steps * self.seconds_per_step + evaluations * self._evaluation_seconds()

    def _evaluation_seconds(self) -> float:
        if self.seconds_per_evaluation is not None:
            return self.seconds_per_evaluation
        # Until one is timed: a forward pass costs about a third of a training step per example.
        per_example = (self.seconds_per_step or 0.0) / self.batch_size
        return self.eval_examples * per_example / 3

    def fit_budget(self, step: int, elapsed: float) -> bool:
        """Set `total_steps` to what fits in the budget from `step`, `elapsed` seconds in; True if it changed
        by more than the drift allowed (the first call always counts)."""
        if self.seconds_per_step is None:
            return False
        target = self.bound_steps
        limited_by = self.limited_by if self.limited_by != "time budget" else "epochs"
        if self.budget_seconds is not None:
            left = self.budget_seconds * (1 - BUDGET_MARGIN) - elapsed
            evaluation = self._evaluation_seconds()
            wanted = self.asked_evaluations
            if evaluation > 0:  # of the whole budget, so the count holds steady as the run goes on
                wanted = min(wanted, max(1, int(EVALUATION_SHARE * self.budget_seconds / evaluation)))
            evaluations_left = max(1, wanted - self.evaluations_done)  # the last one always happens: it scores
            self.evaluations = self.evaluations_done + evaluations_left  # the weights the run ends with
            fits = step + int(max(0.0, left - evaluations_left * evaluation) / self.seconds_per_step)
            if fits < target:
                target, limited_by = max(step + 1, fits), "time budget"
        first = not self.history
        changed = first or abs(target - self.total_steps) > REPLAN_DRIFT * max(1, self.total_steps)
        if changed and target != self.total_steps:
            if step >= self.warmup_steps or (self.anchor is not None and step >= self.anchor[0]):
                self.anchor = (step, self.lr_factor(step))  # bend the decay from where the rate is now
            self.total_steps = target
            self.limited_by = limited_by
            if not first:
                self.replans += 1
        if changed:
            self.history.append({"step": step, "total_steps": self.total_steps,
                                 "seconds_per_step": round(self.seconds_per_step, 4)})  # fmt: skip
        return changed

    def describe(self, now: float | None = None) -> str:
        """One paragraph a person reads before a long run."""
        epochs = self.total_steps / self.steps_per_epoch
        seconds = self.expected_seconds()
        if self.limited_by == "time budget":
            why = f"the {_minutes(self.budget_seconds or 0)} budget"
        elif self.limited_by == "step limit":
            why = f"the limit of {self.max_steps or 0:,} steps"
        else:
            why = f"{self.epochs:g} epochs"
        if seconds is None and self.budget_seconds is not None:
            return (f"Plan: up to {self.total_steps:,} steps of {self.batch_size} ({why} of {self.examples:,} "
                    f"examples); the {_minutes(self.budget_seconds)} budget becomes steps once the first steps "
                    "are timed.")  # fmt: skip
        thinned = ""
        if self.evaluations < self.asked_evaluations:
            thinned = (f" (of {self.asked_evaluations} asked: one takes about {_minutes(self._evaluation_seconds())}, "
                       f"and at most {EVALUATION_SHARE:.0%} of the budget goes to evaluating)")  # fmt: skip
        text = (f"Plan: {self.total_steps:,} steps of {self.batch_size} ({epochs:.2f} epochs of {self.examples:,} "
                f"examples), set by {why}; warmup {self.warmup_steps:,} steps, then linear decay to 0; "
                f"{self.evaluations} evaluations{thinned} (every {self.eval_every:,} steps) on {self.eval_examples:,} "
                "validation examples.")  # fmt: skip
        if seconds is None:
            return text
        end = datetime.fromtimestamp((now or time.time()) + seconds).strftime("%H:%M")
        text += f" {self.seconds_per_step:.2f} s a step: about {_minutes(seconds)}, ending about {end}."
        if self.limited_by == "time budget":
            unbounded = self.expected_seconds(self.bound_steps) or 0
            text += f" Without the budget: {self.bound_steps:,} steps, {_minutes(unbounded)}."
        return text

    def long_run_warning(self) -> str | None:
        seconds = self.expected_seconds()
        if self.budget_seconds is not None or seconds is None or seconds < LONG_RUN_MINUTES * 60:
            return None
        return (f"warning: this run will take about {_minutes(seconds)}. --max-minutes bounds it, and the "
                "schedule is then planned for the steps that fit (warmup and decay included).")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("anchor")
        data["warmup_steps"] = self.warmup_steps
        data["eval_every"] = self.eval_every
        return data


def _minutes(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes >= 90:
        return f"{int(minutes // 60)} h {int(minutes % 60):02d} min"
    return f"{minutes:.1f} min" if minutes < 10 else f"{minutes:.0f} min"


def planning_callback(plan: Plan, log: Log, clock: Callable[[], float] = time.monotonic) -> Any:
    """A Trainer callback that times the steps and evaluations, keeps `plan` true to them, evaluates and saves
    at the planned steps, and ends training at the planned end (evaluating and saving there too)."""
    from transformers import TrainerCallback

    class Planner(TrainerCallback):
        def __init__(self) -> None:
            self.start = clock()
            self.first_step_end: float | None = None
            self.overhead = 0.0  # seconds spent evaluating and saving, not stepping
            self.evaluation_started: float | None = None
            self.first_step = 0
            self.first_tokens = 0
            self.announced = False

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = clock()
            self.first_step = state.global_step  # > 0 when resuming

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step, now = state.global_step, clock()
            plan.steps_done = step
            tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)  # padded, counted by the Trainer
            if self.first_step_end is None:
                self.first_step_end = now  # the first step pays for allocation and warm-up; time the rest
                self.first_tokens = tokens
            stepped = step - self.first_step - 1
            every = max(CALIBRATION_STEPS, plan.total_steps // REPLAN_EVERY)
            if stepped >= CALIBRATION_STEPS and (not self.announced or stepped % every == 0):
                seconds, seen = now - self.first_step_end - self.overhead, tokens - self.first_tokens
                if plan.tokens_per_step and seen > 0:
                    plan.seconds_per_step = seconds / seen * plan.tokens_per_step
                else:
                    plan.seconds_per_step = seconds / stepped
                if plan.fit_budget(step, now - self.start) or not self.announced:
                    if not self.announced:
                        log(plan.describe())
                        warning = plan.long_run_warning()
                        if warning:
                            log(warning)
                    else:
                        log(f"Re-planned at step {step:,}: {plan.total_steps:,} steps "
                            f"({plan.seconds_per_step:.2f} s a step).")  # fmt: skip
                    self.announced = True
            elif plan.budget_seconds is not None and now - self.start > plan.budget_seconds and step < plan.total_steps:
                plan.total_steps, plan.limited_by = step, "time budget"  # never past the budget, measured or not
            if plan.evaluates_at(step):
                plan.evaluations_done += 1
                control.should_evaluate = True
                control.should_save = True
                self.evaluation_started = now
            if step >= plan.total_steps:
                control.should_training_stop = True

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.evaluation_started is not None:
                spent = clock() - self.evaluation_started  # the evaluation and the checkpoint it saves
                self.overhead += spent
                plan.seconds_per_evaluation = spent if plan.seconds_per_evaluation is None else (
                    0.5 * plan.seconds_per_evaluation + 0.5 * spent)  # fmt: skip
                self.evaluation_started = None

    return Planner()


def padded_tokens_per_step(lengths: Sequence[int], batch_size: int, grouped: bool, seed: int = 0) -> float | None:
    """Tokens in an average batch once padded to its longest row, for one epoch batched as the Trainer batches
    (its own length-grouped order, or a random one). None without lengths."""
    if not lengths or batch_size < 1:
        return None
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    generator = torch.Generator().manual_seed(seed)
    order = (get_length_grouped_indices(list(lengths), batch_size, generator=generator) if grouped
             else torch.randperm(len(lengths), generator=generator).tolist())  # fmt: skip
    batches = [[lengths[i] for i in order[j : j + batch_size]] for j in range(0, len(order), batch_size)]
    return sum(max(b) * len(b) for b in batches) / len(batches)


def planned_scheduler(plan: Plan, optimizer: Any) -> Any:
    """A LambdaLR that reads the plan at every step; a plain function, so checkpoints don't try to save it."""
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(optimizer, lambda step: plan.lr_factor(step))
