"""The embedding model as one torch module: encoder -> pooling -> L2 normalisation.

What is exported to ONNX and run on the PyTorch backend: the graph's output is the finished embedding, so a
server running the export needs neither torch nor sentence-transformers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import ModelOutput

POOLINGS = ("mean", "cls", "max")


@dataclass
class EmbeddingOutput(ModelOutput):
    sentence_embedding: torch.Tensor | None = None


class PooledEncoder(torch.nn.Module):
    """A Hugging Face encoder with sentence-transformers' pooling, its output L2-normalised."""

    def __init__(self, encoder: Any, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        self.encoder, self.pooling, self.config = encoder, pooling, encoder.config

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: Any) -> EmbeddingOutput:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(1).values
        else:
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return EmbeddingOutput(sentence_embedding=torch.nn.functional.normalize(pooled.float(), dim=-1))
