"""`tunesmith watch NAME`: the loop that keeps a served model current, off until started.

Each pass looks at where the model stands and takes the next step:

1. **watching**: counts the feedback that can train (outside the held-out fifth) received since the last
   retrain, and runs `tunesmith monitor` over the traffic of the last `since`. It retrains when there is at
   least `min_feedback` of it, or when monitoring raised an alert (drift, a falling estimated accuracy) and
   there is at least `drift_min_feedback` (a drifting model with no corrections has nothing new to learn);
2. **retraining**: `retrain` on the feedback up to a fixed id, then the export and the regression gate; a
   failed gate ends the round (the feedback counts as used: the next round waits for more);
3. **canary**: a passing candidate gets `canary_share` of the traffic (the server picks the split up); once it
   has answered `canary_min_requests` logged requests and `canary_minutes` have passed, it is promoted to
   production (through the gate check); a split the server rolled back ends the round.

The state is a JSON file in the registry home (`watch/NAME.json`), written before each step starts and after
it ends, and every step is logged to `watch/NAME.log.jsonl`: a killed loop started again resumes where it
stopped (an interrupted training run from its last checkpoint; a candidate that was registered before the
kill is found by its lineage instead of being trained twice).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError, DataError

Log = Callable[[str], None]


@dataclass
class WatchSettings:
    strategy: str = "rehearsal"
    min_feedback: int = 200  # new training feedback rows that start a retrain by themselves
    drift_min_feedback: int = 50  # enough when monitoring raised an alert
    since: str = "24h"  # the traffic monitoring compares
    canary_share: float = 0.1  # 0: a passing candidate is promoted at once, without a canary
    canary_min_requests: int = 200
    canary_minutes: float = 60.0
    overrides: tuple[str, ...] = ()  # settings for the retrain (`--set`)


class Watch:
    """One model's loop: `step()` takes the next step and returns what it did."""

    def __init__(self, registry: Any, name: str, settings: WatchSettings | None = None, log: Log = print) -> None:
        self.registry, self.name, self.settings, self.say = registry, name, settings or WatchSettings(), log
        folder = registry.inside(Path(registry.home) / "watch")
        self.state_file = folder / f"{name}.json"
        self.log_file = folder / f"{name}.log.jsonl"

    # -- state ------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        if not self.state_file.is_file():
            return {"step": "watching", "used_feedback": 0}
        return dict(json.loads(self.state_file.read_text(encoding="utf-8")))

    def _save(self, state: dict[str, Any]) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.state_file.with_suffix(".partial")
        partial.write_text(json.dumps(state, indent=2), encoding="utf-8")
        partial.replace(self.state_file)  # a kill mid-write leaves the previous state, never half of one

    def _event(self, event: str, **details: Any) -> dict[str, Any]:
        record = {"ts": time.time(), "model": self.name, "event": event, **details}
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")
        self.say(f"watch {self.name}: {event}" + "".join(f", {k} {v}" for k, v in details.items() if k != "report"))
        return record

    # -- the loop ---------------------------------------------------------------------------------------

    def step(self) -> dict[str, Any]:
        state = self.state()
        if state["step"] == "retraining":
            return self._retrain(state)
        if state["step"] == "canary":
            return self._canary(state)
        return self._watch(state)

    def run(self, interval: float, passes: int | None = None) -> None:
        done = 0
        while passes is None or done < passes:
            self.step()
            done += 1
            if passes is None or done < passes:
                time.sleep(interval)

    def _watch(self, state: dict[str, Any]) -> dict[str, Any]:
        from tunesmith.monitoring.feedback import read_feedback

        fresh = [f for f in read_feedback(self.registry.home, self.name)
                 if f["id"] > state["used_feedback"] and f["input"] is not None and not f["held_out"]]  # fmt: skip
        alerts = self._alerts()
        s = self.settings
        if len(fresh) < s.min_feedback and not (alerts and len(fresh) >= s.drift_min_feedback):
            return self._event("waiting", new_feedback=len(fresh), alerts=len(alerts))
        until = max(f["id"] for f in fresh)
        state = {**state, "step": "retraining", "feedback_until": until, "alerts": alerts, "started_at": time.time()}
        self._save(state)
        self._event("retrain_started", new_feedback=len(fresh), alerts=alerts, feedback_until=until)
        return self._retrain(state)

    def _alerts(self) -> list[str]:
        from tunesmith.monitoring.report import monitor

        try:
            result = monitor(self.registry, f"{self.name}@production", since=self.settings.since)
        except DataError:
            return []  # no traffic logged in the period: nothing drifted
        return list(result.report["alerts"])

    def _retrain(self, state: dict[str, Any]) -> dict[str, Any]:
        from tunesmith.retraining import judge, retrain

        parent = self.registry.resolve(f"{self.name}@production")
        candidate = self._registered(parent.ref, state["feedback_until"])
        if candidate is None:
            outcome = retrain(self.registry, self.name, strategy=self.settings.strategy, feedback_until=state["feedback_until"],
                              overrides=list(self.settings.overrides), gate=False, resume=True, progress=False,
                              log=self.say)  # fmt: skip
            candidate = outcome.result.version.ref
        else:
            self._event("candidate_found", candidate=candidate)  # registered before the loop was stopped
        verdict = judge(self.registry, candidate, parent.ref, log=self.say)
        report = verdict.to_dict()
        if not verdict.passed:
            self._save({"step": "watching", "used_feedback": state["feedback_until"]})
            failed = [c["name"] for c in report["criteria"] if c["passed"] is False]
            return self._event("gate_failed", candidate=candidate, failed=failed, report=report)
        if self.settings.canary_share <= 0:
            return self._promote({**state, "candidate": candidate}, "promoted")
        self.registry.promote(candidate, "candidate")
        self.registry.start_canary(self.name, "candidate", self.settings.canary_share)
        self._save({**state, "step": "canary", "candidate": candidate, "canary_started_at": time.time()})
        return self._event("canary_started", candidate=candidate, share=self.settings.canary_share)

    def _registered(self, parent: str, feedback_until: int) -> str | None:
        """A version already trained for this round (the loop was stopped after registering it)."""
        from tunesmith.artifact import read_meta

        for version in reversed(self.registry.versions(self.name)):
            lineage = read_meta(version.path).get("lineage") or {}
            if lineage.get("parent") == parent and lineage.get("feedback_until") == feedback_until:
                return str(version.ref)
        return None

    def _canary(self, state: dict[str, Any]) -> dict[str, Any]:
        from tunesmith.monitoring.predictions import read_predictions

        split = self.registry.canary_table().get(self.name)
        if split is None:  # the server rolled it back, or a person ended it
            events = self.registry.canary_events(self.name, limit=1)
            self._save({"step": "watching", "used_feedback": state["feedback_until"]})
            last = events[0] if events else {"event": "ended", "detail": ""}
            return self._event("canary_" + str(last["event"]), candidate=state["candidate"], detail=last["detail"])
        started = float(state["canary_started_at"])
        window = f"{int(time.time() - started) + 60}s"  # only the log segments since the canary started are read
        answered = sum(1 for r in read_predictions(self.registry.home, self.name, window)
                       if r["ts"] >= started and r["variant"] == split["alias"])  # fmt: skip
        minutes = (time.time() - started) / 60
        if answered < self.settings.canary_min_requests or minutes < self.settings.canary_minutes:
            return self._event("canary_running", candidate=state["candidate"], answered=answered,
                               minutes=round(minutes, 1))  # fmt: skip
        return self._promote(state, "canary_promoted", answered=answered)

    def _promote(self, state: dict[str, Any], event: str, **details: Any) -> dict[str, Any]:
        from tunesmith.gating import check_promotion

        check_promotion(self.registry, state["candidate"], "production")
        self.registry.promote(state["candidate"], "production")
        self.registry.stop_canary(self.name, "promoted", f"{state['candidate']} promoted to production by watch")
        self._save({"step": "watching", "used_feedback": state["feedback_until"]})
        return self._event(event, candidate=state["candidate"], **details)


def check_settings(settings: WatchSettings) -> WatchSettings:
    from tunesmith.retraining import STRATEGIES

    if settings.strategy not in STRATEGIES:
        raise ConfigError(f"--strategy {settings.strategy}: choose {', '.join(STRATEGIES)}.")
    if not 0 <= settings.canary_share <= 1:
        raise ConfigError(f"--canary-share {settings.canary_share}: give a share in [0, 1] (0: no canary).")
    return settings

