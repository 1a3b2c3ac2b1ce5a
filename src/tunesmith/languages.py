"""Which embedded encoder reads the training data: the English default, or the multilingual one.

The English default (all-MiniLM-L6-v2, uncased English WordPiece) turns Chinese into `[UNK]` and Cyrillic, Greek,
Arabic or Devanagari words into strings of single letters; fine-tuned on such text it ends below a TF-IDF
baseline. So when the user has not named a model, the training file's letters are counted by script, and text
whose letters are mostly not Latin is trained on the embedded multilingual-e5-small instead, with one line that
says so. Latin-script languages other than English keep the default (no script tells them apart from English);
`--model embedded:multilingual-e5-small` chooses it by hand. The same rule picks the encoder of a zero-shot
model from its label descriptions, and the one drift detection embeds traffic with.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunesmith.config import RunConfig
    from tunesmith.training import Log

SAMPLE_BYTES = 1 << 18  # the head of the training file read: enough letters to count, fast on any file
SAMPLE_VALUES = 2000  # string cells read from a Parquet file
NON_LATIN_SHARE = 0.3  # above it the English model cannot read the data
ESCAPED = re.compile(r"\\u([0-9a-fA-F]{4})")
KEY = re.compile(r'"(?:[^"\\]|\\.)*"\s*:')  # a JSON object's key: repeated on every line, not the data's language


def sample_text(path: str | Path) -> str:
    """Text from the head of the training file at `path`: its string cells for Parquet, its characters otherwise
    (for JSON, less the keys and with \\uXXXX escapes decoded: `json.dumps` writes non-ASCII text so by default).
    Empty if unreadable."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            table = pq.ParquetFile(path).read_row_group(0)
            values = [v for column in table.columns if column.type in ("string", "large_string")
                      for v in column.to_pylist()[:SAMPLE_VALUES] if isinstance(v, str)]  # fmt: skip
            return "\n".join(values)
        with path.open("rb") as handle:
            text = handle.read(SAMPLE_BYTES).decode("utf-8", errors="ignore")
    except (OSError, ValueError, ImportError):
        return ""
    if path.suffix.lower() not in (".json", ".jsonl"):
        return text
    return ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), KEY.sub(" ", text))


def non_latin_share(text: str) -> float:
    """The share of `text`'s letters that are not Latin (accented Latin letters count as Latin)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    latin = sum(1 for c in letters if c.isascii() or unicodedata.name(c, "").startswith("LATIN"))
    return 1 - latin / len(letters)


def encoder_for(texts: Iterable[str]) -> str:
    """The embedded encoder that reads `texts`: the multilingual one when most of their letters are not Latin."""
    return _encoder(non_latin_share("\n".join(texts)))


def _encoder(share: float) -> str:
    from tunesmith.config import DEFAULT_MODEL
    from tunesmith.models import MULTILINGUAL_MODEL

    return MULTILINGUAL_MODEL if share >= NON_LATIN_SHARE else DEFAULT_MODEL


def choose_encoder(config: RunConfig, log: Log) -> RunConfig:
    """`config` on the embedded multilingual encoder when the user left the English default to choose and the
    training data is mostly in another script; otherwise `config` as it is."""
    from tunesmith.config import DEFAULT_MODEL

    settings = config.train
    if "base_model" in settings.model_fields_set or settings.base_model != DEFAULT_MODEL or not config.data.train:
        return config
    share = non_latin_share(sample_text(config.data.train))
    chosen = _encoder(share)
    if chosen == DEFAULT_MODEL:
        return config
    log(f"{share:.0%} of the training text's letters are not Latin, which {DEFAULT_MODEL} (English) "
        f"cannot read: training on {chosen} (~100 languages) instead. --model chooses another.")  # fmt: skip
    return config.model_copy(update={"train": settings.model_copy(update={"base_model": chosen})})
