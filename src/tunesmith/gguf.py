"""Causal language models from GGUF files, as ordinary Hugging Face folders.

transformers reads GGUF files (llama, gemma3, qwen2, ...) and dequantises them to fp32 torch weights; doing
that on every load costs seconds and leaves a GGUF "quantizer" attached that makes `save_pretrained` and the
Trainer refuse the model although its weights are plain fp32. So a GGUF file is converted once
(`tunesmith.conversion`): loaded, the quantizer detached, saved as safetensors into the cache.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.conversion import cache_dir, converted_folder
from tunesmith.errors import ModelError


def hf_folder(gguf_file: str | Path, cache: Path | None = None) -> Path:
    """The Hugging Face folder converted from `gguf_file` (converted now if the cache has none)."""
    return converted_folder(gguf_file, cache or cache_dir("gguf"), convert)


def convert(source: Path, folder: Path) -> None:
    """Load `source` through transformers' GGUF reader and save it as a plain fp32 safetensors folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # one line per tensor otherwise
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"transformers cannot read {source} as a GGUF model: {exc}") from None
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()
    detach_quantizer(model)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def detach_quantizer(model: object) -> None:
    """Forget the GGUF quantizer transformers attaches to a model loaded from GGUF (its weights are fp32 already)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    config = getattr(model, "config", None)
    if config is not None:
        config._is_quantized = False
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
