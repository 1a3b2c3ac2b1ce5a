"""Training methods: how much of the pretrained model a run changes.

- `full`: every weight (the default; the best accuracy when there is enough data and time);
- `lora`, `adalora`, `ia3`: `peft` adapters on the attention (and, for IA3, feed-forward) layers, plus the
  new task head; a fraction of a percent to a few percent of the weights train, so steps are cheaper in
  memory and the artifact stores only the adapter (a few hundred KB to a few MB) and the name of its base;
- `frozen`: only the new head (and the pooler) trains: a linear probe, the cheapest and the weakest.

Few-shot (SetFit-style) training is its own path: see `tunesmith.fewshot`.

Prefix tuning is refused: peft implements it through past key values, which BERT-style encoders do not
take in transformers 5 ("Model does not support past key values"). A PEFT artifact is loaded by
rebuilding the base model, applying the adapter and merging it (`merge_and_unload`), so prediction,
export and serving run a plain model, as fast as a fully tuned one.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.artifact import read_meta
from tunesmith.errors import ConfigError

if TYPE_CHECKING:
    from tunesmith.tasks.base import Task

ADAPTER_DIR = "adapter"
PEFT_METHODS = ("lora", "adalora", "ia3")
UNAVAILABLE = {  # methods the settings accept but no task can train yet, and why
    "prefix": "--method prefix is not available: peft's prefix tuning feeds past key values, which BERT-style "
    "encoders do not accept in transformers 5. Use --method lora (or ia3, adalora).",
}
# Adapters and heads learn from scratch, so they want a larger step than weights that only need nudging.
# AdaLoRA's ranks change as it prunes: a checkpoint from before the final rank pattern does not load into the
# final model, so these methods keep their last weights instead of the best evaluation's.
LAST_WEIGHTS_ONLY = ("adalora",)
DEFAULT_LEARNING_RATES = {"full": 1e-4, "lora": 1e-3, "adalora": 1e-3, "ia3": 3e-3, "frozen": 3e-3}


def learning_rate(settings: Any) -> float:
    """The configured learning rate, or the method's default."""
    return float(settings.learning_rate or DEFAULT_LEARNING_RATES.get(settings.method, 1e-4))


def prepare(model: Any, settings: Any, task: Task, total_steps: int) -> Any:
    """`model` made ready for `settings.method`: wrapped with a peft adapter, partly frozen, or as it is."""
    method = settings.method
    if method == "full":
        freeze_embeddings(model, settings.freeze_embeddings)
        return model
    if method in UNAVAILABLE:
        raise ConfigError(UNAVAILABLE[method])
    if method == "frozen":
        for name, parameter in model.base_model.named_parameters():
            parameter.requires_grad = "pooler" in name  # a random or NSP-trained pooler must adapt too
        return model
    if method not in PEFT_METHODS:
        raise ConfigError(f"Unknown method {method!r} for {task.name}; choose {', '.join(task.methods)}.")
    import peft

    common: dict[str, Any] = {"task_type": task.peft_task_type, "target_modules": settings.target_modules}
    if task.reads_pooler and getattr(model.base_model, "pooler", None) is not None:
        common["modules_to_save"] = ["pooler.dense"]  # the classification head reads the pooler's output
    if method == "lora":
        config: Any = peft.LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha,
                                      lora_dropout=settings.lora_dropout, **common)  # fmt: skip
    elif method == "adalora":
        # AdaLoRA starts at 1.5x the rank and prunes to the target between 10% and 80% of the steps.
        config = peft.AdaLoraConfig(
            init_r=max(2, settings.lora_r * 3 // 2), target_r=settings.lora_r, lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout, total_step=max(total_steps, 10), tinit=total_steps // 10,
            tfinal=max(1, total_steps // 5), deltaT=max(1, total_steps // 50), **common,
        )  # fmt: skip
    else:
        config = peft.IA3Config(**common)
    try:
        return peft.get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError(
            f"peft cannot apply {method} to {type(model).__name__}: {exc} Name the layers to adapt with "
            '--set train.target_modules=\'["query","value"]\' (the names of its attention projections).'
        ) from None


def freeze_embeddings(model: Any, wanted: bool | None) -> bool:
    """Fix the input word embeddings in place when `wanted` (a task's default fills in None). A language model
    whose output layer shares that matrix would stop learning its head too, so there it is never done
    implicitly. True when frozen."""
    embeddings = model.get_input_embeddings()
    if not wanted or embeddings is None:
        return False
    embeddings.weight.requires_grad_(False)
    return True


def callbacks(model: Any) -> list[Any]:
    """Trainer callbacks a method needs: AdaLoRA reallocates its rank budget after every optimizer step."""
    if not hasattr(getattr(model, "base_model", None), "update_and_allocate"):
        return []
    from transformers import TrainerCallback

    class AllocateRank(TrainerCallback):
        # Called after optimizer.step() and before the gradients are zeroed: AdaLoRA's importance scores
        # are computed from them.
        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            model.base_model.update_and_allocate(state.global_step)

    return [AllocateRank()]


def parameter_counts(model: Any) -> dict[str, int]:
    """Trainable and total parameters (for a peft model, as peft counts them)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
    return {"trainable": int(trainable), "total": int(total)}


def is_adapter(model: Any) -> bool:
    return hasattr(model, "peft_config")


def save(model: Any, folder: Path) -> None:
    """Write the trained weights: a peft model's adapter (+ its base's config) or the whole model."""
    if is_adapter(model):
        model.save_pretrained(folder / ADAPTER_DIR, safe_serialization=True)
        model.get_base_model().config.save_pretrained(folder / "model")
    else:
        model.save_pretrained(folder / "model", safe_serialization=True)


def load(auto_class: Any, path: Path, **kwargs: Any) -> Any:
    """The model of artifact `path`: its own weights, or its base with the adapter applied and merged."""
    path = Path(path)
    if not (path / ADAPTER_DIR).is_dir():
        return auto_class.from_pretrained(path / "model", **kwargs)
    from peft import PeftModel
    from transformers import AutoConfig

    from tunesmith.models import load_with_new_head

    meta = read_meta(path)
    config = AutoConfig.from_pretrained(path / "model")
    base = load_with_new_head(auto_class, meta["base_model"], config=config, **kwargs)
    with warnings.catch_warnings():
        # AdaLoRA adapters are saved already cut to their rank pattern, whose keys peft then fails to match
        # on load and reports; the weights load correctly (tested: the same test metrics after reloading).
        warnings.filterwarnings("ignore", message="The following rank_pattern keys did not match")
        return PeftModel.from_pretrained(base, path / ADAPTER_DIR).merge_and_unload()
