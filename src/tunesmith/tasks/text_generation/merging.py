"""The export of a text-generation model: its adapter merged into the base, as one plain Hugging Face folder."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunesmith.artifact import write_export
from tunesmith.pointers import publishing
from tunesmith.tasks.base import Log
from tunesmith.tasks.text_generation.generator import Generator

MERGED_DIR = "merged"


def export(path: str | Path, log: Log = print, **_options: Any) -> dict[str, Any]:
    """Merge the artifact's adapter into its base and write `merged/`: a plain Hugging Face folder (fp32
    safetensors, tokenizer with its chat template) that any runtime takes. Published behind the `merged`
    pointer (`pointers.publishing`), so readers see the old folder or the new one."""
    path = Path(path)
    generator = Generator.from_artifact(path)  # adapters merged on load
    with publishing(path, MERGED_DIR) as work:
        generator.model.save_pretrained(work, safe_serialization=True)
        generator.tokenizer.save_pretrained(work)
        size = sum(p.stat().st_size for p in work.rglob("*") if p.is_file()) / 2**20
        record = {"format": "merged", "task": "text-generation", "created_at": datetime.now(UTC).isoformat(),
                  "path": str(path / MERGED_DIR), "size_mb": size, "base_model": generator.meta.get("base_model"),
                  "method": generator.meta.get("method")}  # fmt: skip
        write_export(work, record)
    log(f"Merged model written to {path / MERGED_DIR} ({size:.0f} MB).")
    return record
