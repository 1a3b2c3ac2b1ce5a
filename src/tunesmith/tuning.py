"""Automatic hyperparameter search with Optuna: TPE sampling, pruning on the per-epoch validation metric.

- The study lives in the registry database (Optuna's RDB storage on the same SQLAlchemy URL), so an
  interrupted search resumes where it stopped, and several processes, or machines sharing a PostgreSQL
  registry, can run trials of one study at once. Heartbeats mark the trials of a killed process as failed.
- Trial 0 is the method's defaults, so the search reports its gain over them and never returns worse.
- Each trial is a normal training run into a scratch registry (`<home>/tuning/<study>/`); every epoch's
  validation selection score is reported to Optuna, and the pruner (median or Hyperband) stops trials
  that trail. Only the best trial's artifact is kept; at the end it is registered under the study's name,
  with the trials table and the optimisation-history and parameter-importance plots inside.
- Selection is on the validation split only; test metrics are recorded but never used to choose.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunesmith import methods as training_methods
from tunesmith.config import TRIALS, RunConfig, TrainConfig, dump_config
from tunesmith.errors import ConfigError
from tunesmith.paths import MAX_NAME, check_name, confine
from tunesmith.registry import ModelVersion, Registry
from tunesmith.runs import default_name
from tunesmith.tasks.catalog import TASKS
from tunesmith.training import SELECTION_METRIC

HEARTBEAT_SECONDS = 10


@dataclass
class Param:
    """One dimension of the search space, used by the methods it names (all when `methods` is empty)."""

    kind: str  # "float", "int" or "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None
    methods: tuple[str, ...] = ()


# Learning rates differ by an order of magnitude between methods (adapters and heads learn from scratch).
DEFAULT_SPACE: dict[str, Param] = {
    "learning_rate@full": Param("float", 2e-5, 3e-4, log=True, methods=("full",)),
    "learning_rate@lora": Param("float", 1e-4, 3e-3, log=True, methods=("lora", "adalora")),
    "learning_rate@ia3": Param("float", 5e-4, 1e-2, log=True, methods=("ia3", "frozen")),
    "learning_rate@fewshot": Param("float", 5e-6, 1e-4, log=True, methods=("fewshot",)),
    "batch_size": Param("categorical", choices=[8, 16, 32]),
    "epochs": Param("int", 2, 10, methods=("full", "lora", "adalora", "ia3", "frozen")),
    "warmup_ratio": Param("float", 0.0, 0.2, methods=("full", "lora", "adalora", "ia3", "frozen")),
    "weight_decay": Param("float", 0.0, 0.1, methods=("full", "lora", "adalora", "ia3", "frozen")),
    "lora_r": Param("categorical", choices=[4, 8, 16, 32], methods=("lora", "adalora")),
    "lora_alpha": Param("categorical", choices=[8, 16, 32, 64], methods=("lora", "adalora")),
    "lora_dropout": Param("float", 0.0, 0.3, methods=("lora", "adalora")),
}


@dataclass
class TuneResult:
    version: ModelVersion | None
    best: dict[str, Any]  # number, value, params of the best trial
    default_value: float | None  # the validation metric of the defaults (trial 0), if it completed
    trials: list[dict[str, Any]] = field(default_factory=list)
    study: str = ""


def parse_duration(text: str | float | None) -> float | None:
    """Seconds from '30m', '2h', '90s', '1h30m' or a number of seconds."""
    if text is None or isinstance(text, int | float):
        return None if text is None else float(text)
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or parts is None or not any(parts.groups()):
        raise ConfigError(f"Cannot read the duration {text!r}: write e.g. 30m, 2h, 1h30m or 90s.")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def load_space(path: str | Path) -> dict[str, Param]:
    """A search space from YAML: `name: {low, high, log}` (float/int) or `name: {choices: [...]}`; names are
    training settings, optionally `@method` to apply to one method only (e.g. `learning_rate@lora`)."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the search space must be a mapping of setting names to ranges.")
    space = {}
    for key, spec in raw.items():
        setting, _, method = str(key).partition("@")
        if setting not in TrainConfig.model_fields:
            raise ConfigError(f"{path}: {setting!r} is not a training setting; see docs/configuration.md.")
        if not isinstance(spec, dict) or not ({"choices"} <= set(spec) or {"low", "high"} <= set(spec)):
            raise ConfigError(f"{path}: {key!r} needs either choices: [...] or low: and high:.")
        if "choices" in spec:
            space[key] = Param("categorical", choices=list(spec["choices"]), methods=(method,) if method else ())
        else:
            kind = "int" if isinstance(spec["low"], int) and isinstance(spec["high"], int) else "float"
            space[key] = Param(
                kind, spec["low"], spec["high"], bool(spec.get("log")), methods=(method,) if method else ()
            )
    return space


def _suggest(trial: Any, space: dict[str, Param], methods: list[str]) -> dict[str, Any]:
    method = trial.suggest_categorical("method", methods) if len(methods) > 1 else methods[0]
    params: dict[str, Any] = {"method": method}
    for key, p in space.items():
        if p.methods and method not in p.methods:
            continue
        setting = key.partition("@")[0]
        if p.kind == "categorical":
            params[setting] = trial.suggest_categorical(key, p.choices)
        elif p.kind == "int":
            params[setting] = trial.suggest_int(key, int(p.low), int(p.high), log=p.log)  # type: ignore[arg-type]
        else:
            params[setting] = trial.suggest_float(key, float(p.low), float(p.high), log=p.log)  # type: ignore[arg-type]
    return params


def _defaults(config: RunConfig, space: dict[str, Param], methods: list[str]) -> dict[str, Any]:
    """Trial 0: the first method's defaults, written in the space's parameter names where they fit."""
    method = methods[0]
    values: dict[str, Any] = {"method": method} if len(methods) > 1 else {}
    settings = config.train.model_copy(update={"method": method})
    for key, p in space.items():
        setting = key.partition("@")[0]
        if p.methods and method not in p.methods:
            continue
        value = training_methods.learning_rate(settings) if setting == "learning_rate" else getattr(settings, setting)
        if value is None:
            continue
        if p.kind == "categorical" and value not in (p.choices or []):
            continue
        if p.kind != "categorical" and not (p.low <= value <= p.high):  # type: ignore[operator]
            continue
        values[key] = value
    return values


def _pruning_callback(trial: Any) -> Any:
    import optuna
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        def __init__(self) -> None:
            self.reported: set[int] = set()

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                        **kwargs: Any) -> None:  # fmt: skip
            metrics = metrics or {}
            value = metrics.get(f"eval_{SELECTION_METRIC}")
            if value is None and "eval_loss" in metrics and "eval_selection_score" not in metrics:
                value = -metrics["eval_loss"]  # a language model is selected by its validation loss
            if value is None:
                return
            step = state.global_step
            if step in self.reported:  # a final evaluate() after training repeats the last evaluation's
                return
            self.reported.add(step)
            trial.report(float(value), step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"step {step}: validation score {value:.4f} trails the other trials")

    return Report()


def tune(
    config: RunConfig,
    *,
    trials: int = TRIALS,
    timeout: float | None = None,
    methods: list[str] | None = None,
    pruner: str = "median",
    space: dict[str, Param] | None = None,
    registry: Registry | None = None,
    study_name: str | None = None,
    seed: int = 42,
    log: Any = print,
) -> TuneResult:
    """Search settings for `config`'s task and data; register the best trial's model under the study's name."""
    import optuna

    registry = registry or Registry()
    task = TASKS[config.task]
    config = task.resolve(config)
    methods = methods or [config.train.method]
    for method in methods:
        task.check_method(method)
    if pruner not in ("median", "hyperband"):
        raise ConfigError(f"Unknown pruner {pruner!r}: use median or hyperband.")
    space = space or DEFAULT_SPACE
    name = config.name or default_name(config)
    study_name = check_name(study_name or f"tune-{name}"[:MAX_NAME], "study name")
    scratch = registry.inside(Path("tuning") / study_name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats, failed-trial retries and the matplotlib plots are marked experimental; they are what we want.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = optuna.storages.RDBStorage(
        registry.engine.url.render_as_string(hide_password=False),
        heartbeat_interval=HEARTBEAT_SECONDS, grace_period=3 * HEARTBEAT_SECONDS,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
    )  # fmt: skip
    study = optuna.create_study(
        study_name=study_name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0) if pruner == "median"
        else optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3),
    )  # fmt: skip
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished_states))
    if not study.trials:
        study.enqueue_trial(_defaults(config, space, methods), user_attrs={"defaults": True})
        study.set_user_attr("task", config.task)
        study.set_user_attr("config", config.model_dump(mode="json"))
    elif done:
        log(f"Resuming study {study_name!r}: {done} of {trials} trials already finished.")
    metric = task.main_metric

    deadline = None if timeout is None else time.perf_counter() + timeout

    def objective(trial: Any) -> float:
        params = _suggest(trial, space, methods)
        update = dict(params)
        if deadline is not None:
            # Optuna's timeout only stops new trials from starting; cutting the running trial at the deadline
            # (it keeps its best checkpoint so far) makes --timeout the budget a user can plan around.
            left = max(0.5, (deadline - time.perf_counter()) / 60)
            if config.train.max_minutes is None or left < config.train.max_minutes:
                update["max_minutes"] = left
                trial.set_user_attr("budget_minutes", round(left, 2))
        settings = config.train.model_copy(update=update)
        # The data is the same in every trial (checked once), and validation, which ranks the trials, is held out.
        quiet = config.data.model_copy(update={"inspect": False, "train_on_small_validation": False})
        run = config.model_copy(update={"train": settings, "data": quiet, "name": f"trial-{trial.number}"})
        trial_registry = Registry(scratch / "home", database_url=f"sqlite:///{scratch / 'trials.db'}")
        started = time.perf_counter()
        try:
            result = task.train(run, registry=trial_registry, progress=False, log=lambda _message: None,
                                callbacks=[_pruning_callback(trial)])  # fmt: skip
        finally:
            shutil.rmtree(trial_registry.home / "runs" / f"trial-{trial.number}", ignore_errors=True)
        evaluation = json.loads((result.version.path / "metrics.json").read_text(encoding="utf-8"))
        value = float(evaluation["validation"][metric])
        trial.set_user_attr("path", str(result.version.path))
        trial.set_user_attr("test", {k: v for k, v in result.metrics.items() if isinstance(v, float)})
        trial.set_user_attr("minutes", (time.perf_counter() - started) / 60)
        trial.set_user_attr("described", _describe(params))
        return value

    def keep_best(study: Any, trial: Any) -> None:
        # Said here, once the study has stored the trial: a search killed after the line keeps the trial.
        if trial.state == optuna.trial.TrialState.COMPLETE:
            log(f"trial {trial.number}: validation {metric} {trial.value:.4f} ({trial.user_attrs.get('described', '')})")
        if trial.state == optuna.trial.TrialState.PRUNED:
            log(f"trial {trial.number}: pruned at epoch {trial.last_step}")
        # Only the best finished trial's artifact is kept on disk.
        try:
            best = study.best_trial.number
        except ValueError:
            return
        for other in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            path = _trial_path(other, scratch)
            if other.number != best and path and path.exists():
                Path(path).chmod(0o755)
                for sub in Path(path).rglob("*"):
                    sub.chmod(0o755 if sub.is_dir() else 0o644)
                shutil.rmtree(path, ignore_errors=True)

    started = time.perf_counter()
    remaining = trials - done
    if remaining > 0:
        study.optimize(
            objective, timeout=timeout, gc_after_trial=True, catch=(),
            callbacks=[keep_best, optuna.study.MaxTrialsCallback(trials, states=finished_states)],
        )  # fmt: skip
    log(f"Search finished in {(time.perf_counter() - started) / 60:.1f} min.")
    return _finish(study, config, name, registry, scratch, metric, log)


def _trial_path(trial: Any, scratch: Path) -> Path | None:
    """A trial's artifact folder as recorded in the study, if it lies inside this study's scratch folder: the
    study lives in a database others can write, so its paths are checked before anything is deleted or read."""
    recorded = trial.user_attrs.get("path")
    if not recorded:
        return None
    try:
        return confine(scratch, recorded)
    except ConfigError:
        return None


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _finish(study: Any, config: RunConfig, name: str, registry: Registry, scratch: Path, metric: str,
            log: Any) -> TuneResult:  # fmt: skip
    import optuna

    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                     "evaluations_reported": len(t.intermediate_values), "minutes": t.user_attrs.get("minutes"),
                     "test": t.user_attrs.get("test"), "defaults": bool(t.user_attrs.get("defaults")),
                     "budget_minutes": t.user_attrs.get("budget_minutes")})  # fmt: skip
    completed = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    if not completed:
        raise ConfigError("No trial completed: raise --trials or --timeout.")
    best = study.best_trial
    defaults = next((r["value"] for r in rows if r["defaults"] and r["state"] == "COMPLETE"), None)
    path = _trial_path(best, scratch)
    if path is None or not path.exists():
        raise ConfigError(f"The best trial's model ({path}) is gone; run the search again with another --study.")
    settings = config.train.model_copy(update=_params_of(best, config))
    final = config.model_copy(update={"train": settings, "name": name})
    with registry.staging() as staged:
        shutil.copytree(path, staged, dirs_exist_ok=True)
        for sub in [staged, *staged.rglob("*")]:
            sub.chmod(0o755 if sub.is_dir() else 0o644)
        meta = json.loads((staged / "tunesmith.json").read_text(encoding="utf-8"))
        meta.update(name=name, tuning={"study": study.study_name, "best_trial": best.number, "metric": metric,
                                       "validation_value": best.value, "defaults_value": defaults,
                                       "trials": len(rows)})  # fmt: skip
        (staged / "tunesmith.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        (staged / "config.yaml").write_text(dump_config(final), encoding="utf-8")
        (staged / "tuning").mkdir()
        (staged / "tuning" / "trials.json").write_text(json.dumps(rows, indent=2, default=str), encoding="utf-8")
        _plots(study, staged / "tuning", log)
        version = registry.register(name, staged, config.task, metrics=meta.get("metrics", {}))
    shutil.copytree(version.path / "tuning", scratch / "report", dirs_exist_ok=True)
    log(f"Best: trial {best.number}, validation {metric} {best.value:.4f}"
        + (f" (defaults: {defaults:.4f})" if defaults is not None else "") + f"; registered as {version.ref}.")  # fmt: skip
    noise = within_noise(best.value, defaults, (meta.get("data") or {}).get("sizes", {}).get("validation"))
    if noise:
        log(noise)
    best_row = {"number": best.number, "value": best.value, "params": best.params}
    return TuneResult(version, best_row, defaults, rows, study.study_name)


def within_noise(best: float, defaults: float | None, n: int | None) -> str | None:
    """A warning when the best trial's lead over the defaults is under two standard errors of one score on `n`
    validation examples (binomial, sqrt(p(1-p)/n); macro averages over rare classes vary more still): a
    search over many trials finds such a lead by chance, and it need not hold on new data."""
    if defaults is None or not n or not (0 <= best <= 1) or best <= defaults:
        return None
    error = math.sqrt(max(best * (1 - best), 1e-6) / n)
    if best - defaults >= 2 * error:
        return None
    return (f"Note: the best trial leads the defaults by {best - defaults:.4f} on {n} validation examples, under two "
            f"standard errors of one score on that many ({2 * error:.4f}): the lead may be chance. More "
            "validation data (--validation FILE or a larger data.validation_size) would tell.")


def _params_of(trial: Any, config: RunConfig) -> dict[str, Any]:
    params = {key.partition("@")[0]: value for key, value in trial.params.items()}
    return params if "method" in params else {**params, "method": config.train.method}


def _plots(study: Any, folder: Path, log: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    from tunesmith.errors import TunesmithError

    for file, draw in (("optimization_history.png", vis.plot_optimization_history),
                       ("param_importances.png", vis.plot_param_importances)):  # fmt: skip
        try:
            figure: Any = draw(study).figure
            figure.tight_layout()
            figure.savefig(folder / file, dpi=110)
            plt.close(figure)
        except (ValueError, RuntimeError, TunesmithError) as exc:  # importances need >= 2 completed trials
            log(f"note: no {file}: {exc}")


__all__ = ["DEFAULT_SPACE", "Param", "TuneResult", "load_space", "parse_duration", "tune"]
