"""Causal language models from GGUF files, as ordinary Hugging Face folders.

transformers reads GGUF files (llama, gemma3, qwen2, ...) and dequantises them to fp32 torch weights; doing
that on every load costs seconds and leaves a GGUF "quantizer" attached that makes `save_pretrained` and the
Trainer refuse the model although its weights are plain fp32. So a GGUF file is converted once: loaded, the
quantizer detached, saved as safetensors into the cache, under a folder named by the file's SHA-256. The
folder is written beside its final place and renamed into it, so a killed conversion never leaves a
half-written model; `source.json` inside records the checksum, and a folder whose checksum does not match
its GGUF file is converted anew.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from tunesmith.errors import ModelError

SOURCE = "source.json"


def cache_dir() -> Path:
    return Path(os.environ.get("TUNESMITH_CACHE", Path.home() / ".cache" / "tunesmith")) / "gguf"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hf_folder(gguf_file: str | Path, cache: Path | None = None) -> Path:
    """The Hugging Face folder converted from `gguf_file` (converted now if the cache has none)."""
    source = Path(gguf_file)
    if not source.is_file():
        raise ModelError(f"GGUF file {source} does not exist.")
    checksum = sha256_of(source)
    target = (cache or cache_dir()) / f"{source.stem}-{checksum[:16]}"
    recorded = target / SOURCE
    if recorded.is_file() and json.loads(recorded.read_text())["sha256"] == checksum:
        return target
    if target.exists():  # converted from other bytes, or damaged: convert again
        shutil.rmtree(target)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        convert(source, partial)
        (partial / SOURCE).write_text(json.dumps({"gguf": str(source), "sha256": checksum}, indent=2))
        partial.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(partial, target)
        except OSError:  # another process finished the same conversion first
            if not (target / SOURCE).is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


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
