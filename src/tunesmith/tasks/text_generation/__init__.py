"""Instruction tuning of small causal language models, with chat and streaming generation."""

from tunesmith.tasks.text_generation.task import DEFAULT_BASE, TextGeneration

__all__ = ["DEFAULT_BASE", "TextGeneration"]
