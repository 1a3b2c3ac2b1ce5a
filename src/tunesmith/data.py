"""Load, validate and split labeled text data.

`read_table` turns a CSV, TSV, JSONL, JSON or Parquet file into a DataFrame with messages that
say what is wrong and how to fix it. `load_classification_data` detects the text and label
columns, checks the rows, and returns stratified train/validation/test splits. Problems that can
be worked around are reported as warnings (`DataIssue`) and the affected rows are left out;
problems that cannot are raised as `DataError`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from tunesmith.config import DataConfig
from tunesmith.errors import DataError

Item = TypeVar("Item")

if TYPE_CHECKING:  # pandas loads only when a table is read: a server never needs it
    import pandas as pd

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}
TEXT_COLUMN_NAMES = (
    "text", "sentence", "content", "review", "message", "utterance", "query", "question", "document",
    "body", "comment", "tweet", "input", "prompt", "description", "title", "sentence1",
)  # fmt: skip
# Inputs published in two columns that a classifier must read together: GLUE's pair tasks, SNLI, PAWS, and texts
# with a title. A file with either name reads both, in this order.
TEXT_PAIRS = (
    ("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"), ("question", "sentence"),
    ("text_a", "text_b"), ("sentence_a", "sentence_b"), ("#1 string", "#2 string"), ("title", "text"),
    ("title", "body"), ("title", "content"), ("title", "description"), ("title", "review"), ("summary", "text"),
)  # fmt: skip
# Between the parts of a text read from several columns: a visible boundary for the model, a word break for TF-IDF.
TEXT_SEPARATOR = " | "
JOINED = " + "  # in the name of a text column built from several: "title + body", as a model records it
LABEL_COLUMN_NAMES = (
    "label", "labels", "category", "categories", "class", "intent", "target", "tag", "tags", "sentiment",
    "emotion", "emotions", "topic", "y", "label_desc", "output",
)  # fmt: skip
DELIMITERS = (",", "|", ";")
# A class needs one example in each of train, validation and test to be stratified.
MIN_PER_CLASS_TO_STRATIFY = 3


@dataclass
class DataIssue:
    """A problem found in the data, with what was done about it."""

    level: Literal["error", "warning"]
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


@dataclass
class Split:
    texts: list[str]
    # Single-label: one class id per row. Multi-label: a list of class ids per row.
    labels: list[Any]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class ClassificationData:
    train: Split
    validation: Split
    test: Split
    label_names: list[str]
    multi_label: bool
    text_column: str
    label_column: str
    issues: list[DataIssue] = field(default_factory=list)
    fingerprint: str = ""


# --------------------------------------------------------------------------------------------
# Reading files


def detect_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    for suffix in reversed(suffixes):
        if suffix in FORMATS:
            return FORMATS[suffix]
    known = ", ".join(sorted(FORMATS))
    raise DataError(
        f"Cannot tell the format of {str(path)!r} from its extension {path.suffix or '(none)'!r}. "
        f"Supported extensions: {known}. Rename the file to one of them."
    )


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        hint = ""
        if path.parent.is_dir():
            near = sorted(p.name for p in path.parent.iterdir() if p.suffix.lower() in FORMATS)[:5]
            hint = f" Data files in {str(path.parent)!r}: {', '.join(near)}." if near else ""
        raise DataError(f"Data file {str(path)!r} does not exist.{hint}")
    if path.is_dir():
        raise DataError(f"{str(path)!r} is a folder; pass a data file inside it.")
    return path


def read_text(path: str | Path) -> str:
    """The text of a data file (UTF-8, a BOM dropped), or a `DataError` saying where it is not UTF-8 and how to
    convert it: every reader, tables and each task's own formats, goes through here."""
    path = _existing_file(path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(
            f"{str(path)!r} is not UTF-8: byte 0x{raw[exc.start]:02x} at line {line}, column {column} "
            f"cannot be decoded. Re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} "
            f"> fixed{path.suffix}`."
        ) from None


def _looks_like_data(header: Sequence[str]) -> bool:
    # Real headers are short names; a first row holding a number or a sentence is data.
    return any(cell.strip().lstrip("-").replace(".", "", 1).isdigit() or len(cell) > 40 for cell in header)


def _read_delimited(path: Path, text: str, sep: str) -> pd.DataFrame:
    import pandas as pd

    # GLUE-style TSV files hold unescaped quotes inside texts: only CSV gets quote handling.
    quoting = csv.QUOTE_MINIMAL if sep == "," else csv.QUOTE_NONE
    first_line = text.split("\n", 1)[0]
    header = next(csv.reader([first_line], delimiter=sep, quoting=quoting), [])
    no_header = _looks_like_data(header)
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            quoting=quoting,
            header=None if no_header else "infer",
            dtype=str,
            keep_default_na=False,
            encoding="utf-8-sig",
            on_bad_lines="error",
        )
    except pd.errors.ParserError as exc:
        raise DataError(
            f"{str(path)!r} could not be parsed as {'CSV' if sep == ',' else 'TSV'}: {exc}. "
            "Check that every row has the same number of fields and that quotes are closed."
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{str(path)!r} is empty. Add a header and labeled rows.") from None
    if no_header:
        frame.columns = [f"column{i}" for i in range(frame.shape[1])]
    return frame


def _read_jsonl(path: Path, text: str) -> pd.DataFrame:
    import pandas as pd

    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{str(path)!r} line {number} is not valid JSON ({exc.msg}, column {exc.colno}). "
                "Each line of a JSONL file must be one JSON object."
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"{str(path)!r} line {number} holds a {type(record).__name__}, expected a JSON object "
                'such as {"text": "...", "label": "..."}.'
            )
        records.append(record)
    return pd.DataFrame.from_records(records)


def _read_json(path: Path, text: str) -> pd.DataFrame:
    import pandas as pd

    try:
        content = json.loads(text)
    except json.JSONDecodeError as exc:
        if "Extra data" in exc.msg:  # a JSONL file named .json (CLUE ships them so)
            return _read_jsonl(path, text)
        raise DataError(
            f"{str(path)!r} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})."
        ) from None
    if isinstance(content, dict):
        lists = [k for k, v in content.items() if isinstance(v, list)]
        if len(lists) == 1 and all(isinstance(r, dict) for r in content[lists[0]]):
            content = content[lists[0]]  # {"data": [{...}, ...]}
        elif lists and all(isinstance(v, list) for v in content.values()):
            return pd.DataFrame(content)  # {"text": [...], "label": [...]}
    if not isinstance(content, list) or not all(isinstance(r, dict) for r in content):
        raise DataError(
            f"{str(path)!r} must hold a list of objects such as "
            '[{"text": "...", "label": "..."}], or an object with one such list.'
        )
    if content and all("data" in r and "annotations" in r for r in content):
        return _from_label_studio(content)
    return pd.DataFrame.from_records(content)


def _from_label_studio(tasks: list[dict[str, Any]]) -> pd.DataFrame:
    """A Label Studio JSON export: each task's text, and the choices of its latest annotation that was not
    cancelled (several choices make a multi-label row; a task nobody labelled has no label)."""
    import pandas as pd

    records = []
    for task in tasks:
        data = task["data"] if isinstance(task["data"], dict) else {}
        text = data.get("text", next((v for v in data.values() if isinstance(v, str)), ""))
        label: Any = None
        for annotation in task["annotations"] or []:
            if annotation.get("was_cancelled"):
                continue
            choices = [c for r in annotation.get("result", []) if r.get("type") == "choices"
                       for c in r.get("value", {}).get("choices", [])]  # fmt: skip
            if choices:
                label = choices[0] if len(choices) == 1 else choices
        records.append({"text": text, "label": label, "id": task.get("id")})
    return pd.DataFrame.from_records(records)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a data file into a DataFrame, or raise a `DataError` that says how to fix it."""
    import pandas as pd

    path = _existing_file(path)
    kind = detect_format(path)
    if kind == "parquet":
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
            raise DataError(f"{str(path)!r} is not a readable Parquet file: {exc}") from None
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{str(path)!r} is empty. Add labeled rows.")
    if kind in ("csv", "tsv"):
        return _read_delimited(path, text, "," if kind == "csv" else "\t")
    if kind == "jsonl":
        return _read_jsonl(path, text)
    return _read_json(path, text)


# --------------------------------------------------------------------------------------------
# Columns and labels


def _find_column(frame: pd.DataFrame, wanted: str | None, names: Sequence[str], role: str, flag: str) -> str:
    columns = [str(c) for c in frame.columns]
    if wanted is not None:
        if wanted in columns:
            return wanted
        raise DataError(
            f"The {role} column {wanted!r} is not in the data. Columns found: {columns}. Pass one of them with {flag}."
        )
    by_lower = {c.lower(): c for c in columns}
    for name in names:
        if name in by_lower:
            return by_lower[name]
    return ""


def guess_text_column(frame: pd.DataFrame, exclude: set[str]) -> str:
    # The text is the string column with the longest values.
    best, best_len = "", 0.0
    for column in frame.columns:
        if column in exclude:
            continue
        values = frame[column].dropna()
        if len(values) == 0 or not all(isinstance(v, str) for v in values.head(100)):
            continue
        mean_len = values.astype(str).str.len().mean()
        if mean_len > best_len:
            best, best_len = str(column), mean_len
    return best


def read_text_column(
    path: str | Path, wanted: str | None = None, trained_on: str | None = None
) -> tuple[pd.DataFrame, str]:
    """A file of texts to predict on, and its text column: `wanted`, else the column the model was trained on,
    else a usual name, else the column that looks most like text."""
    frame = read_table(path)
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if wanted:
        parts = _named_parts(wanted, columns)
        if parts is None:
            raise DataError(f"No column {wanted!r} in {str(path)!r}. Columns found: {columns}.")
        return frame, join_text_columns(frame, parts)
    if trained_on and ensure_text_column(frame, trained_on):
        return frame, trained_on
    lower = {c.lower(): c for c in columns}
    for candidate in ([trained_on] if trained_on else []) + list(TEXT_COLUMN_NAMES):
        if candidate.lower() in lower:
            return frame, lower[candidate.lower()]
    guess = guess_text_column(frame, set())
    if not guess:
        raise DataError(f"Could not find a text column in {str(path)!r}. Columns: {columns}. Pass --text-column.")
    return frame, guess


def _guess_label_column(frame: pd.DataFrame, exclude: set[str]) -> str:
    # The label is the column with the fewest distinct values, provided values repeat at all.
    best, best_unique = "", math.inf
    for column in frame.columns:
        if column in exclude:
            continue
        values = frame[column].dropna()
        try:
            unique = values.astype(str).nunique()
        except TypeError:
            unique = values.map(repr).nunique()
        if 1 < unique < 0.5 * max(len(values), 1) + 2 and unique < best_unique:
            best, best_unique = str(column), unique
    return best


def _sentence_like(values: pd.Series) -> bool:
    # Free text rather than ids, codes, dates or categories: several words a value, mostly distinct values.
    values = values.dropna().head(500)
    if len(values) == 0 or not all(isinstance(v, str) for v in values):
        return False
    return bool(values.str.split().str.len().mean() >= 3 and values.nunique() >= 0.5 * len(values))


def joined_from(name: str) -> list[str]:
    """The columns a text column named by `join_text_columns` was built from; one when it was not built."""
    return name.split(JOINED)


def trained_text_column(meta: dict[str, Any]) -> str:
    """The text column a model was trained on, as its artifact records it ("title + body" when it was built from
    several: `joined_from`); empty when it records none."""
    name = (meta.get("data") or {}).get("text_column")
    return name if isinstance(name, str) else ""


def join_parts(parts: Sequence[object]) -> str:
    """One text from the parts of a row's text columns: the non-empty ones, stripped, joined by `TEXT_SEPARATOR`.
    Training, files and the server's requests all join this way, so a model reads its inputs as it was trained."""
    return TEXT_SEPARATOR.join(p for p in (str(c).strip() for c in parts) if p)


def _named_parts(wanted: str, columns: Sequence[str]) -> list[str] | None:
    """The columns `wanted` names: one, or several separated by commas (or joined as a trained model records
    them); None when one of them is missing."""
    if wanted in columns:
        return [wanted]
    parts = joined_from(wanted) if JOINED in wanted else [p.strip() for p in wanted.split(",")]
    return parts if all(p in columns for p in parts) else None


def join_text_columns(frame: pd.DataFrame, parts: Sequence[str]) -> str:
    """The name of one text column made of `parts` (added to `frame`, each row's non-empty parts joined by
    `TEXT_SEPARATOR`); a single part is returned as it is."""
    if len(parts) == 1:
        return parts[0]
    name = JOINED.join(parts)
    cells = frame[list(parts)].astype(object).where(frame[list(parts)].notna(), "")
    frame[name] = [join_parts(row) for row in cells.itertuples(index=False)]
    return name


def ensure_text_column(frame: pd.DataFrame, name: str) -> bool:
    """Whether `frame` has the text column `name`, building it first when `name` joins several columns
    ("title + body"): how a model trained on joined columns reads new files."""
    if name in frame.columns:
        return True
    parts = joined_from(name)
    if len(parts) > 1 and all(p in frame.columns for p in parts):
        join_text_columns(frame, parts)
        return True
    return False


def _text_parts(frame: pd.DataFrame, wanted: str | None, label: str) -> list[str]:
    columns = list(frame.columns)
    if wanted is not None:
        parts = _named_parts(wanted, columns)
        if parts is not None:
            return parts
        raise DataError(
            f"The text column {wanted!r} is not in the data. Columns found: {columns}. Pass one of them with "
            "--text-column, or several separated by commas (--text-column title,body) to read them as one text."
        )
    found = _find_column(frame, None, TEXT_COLUMN_NAMES, "text", "--text-column")
    if found and found != label:
        by_lower = {c.lower(): c for c in columns}
        for pair in TEXT_PAIRS:
            if found.lower() in pair and all(p in by_lower for p in pair):
                return [by_lower[p] for p in pair]
        return [found]
    guess = guess_text_column(frame, {label})
    if not guess:
        return []
    # A file without usual names (a header-less CSV such as AG News' class, title, description; QQP's question1,
    # question2) is read whole: every column of free text, in the file's order.
    return [c for c in columns if c == guess or (c != label and _sentence_like(frame[c]))]


def detect_columns(frame: pd.DataFrame, config: DataConfig) -> tuple[str, str]:
    """Return the (text, label) column names, from the settings or from common names. Several columns of text
    are joined into one new column of `frame` (see `join_text_columns`), whose name is returned."""
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    label = _find_column(frame, config.label_column, LABEL_COLUMN_NAMES, "label", "--label-column")
    parts = _text_parts(frame, config.text_column, label)
    if label and label in parts:
        label = ""
    if not label:
        label = _guess_label_column(frame, set(parts))
    if not parts or not label:
        missing = " and ".join(r for r, c in (("text", parts), ("label", label)) if not c)
        raise DataError(
            f"Could not find the {missing} column. Columns found: {columns}. "
            "Name them 'text' and 'label', or pass --text-column NAME --label-column NAME."
        )
    return join_text_columns(frame, parts), label


def as_label_list(value: Any, delimiter: str | None) -> list[str] | None:
    """One row's labels as a list of strings, or None when the row has no label."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, list | tuple | np.ndarray):
        items = [str(v).strip() for v in value]
    elif isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            try:
                parsed = json.loads(stripped)
                return [str(v).strip() for v in parsed if str(v).strip()]
            except json.JSONDecodeError:
                pass
        items = stripped.split(delimiter) if delimiter else [stripped]
        items = [i.strip() for i in items]
    elif isinstance(value, float) and value.is_integer():
        items = [str(int(value))]
    else:
        items = [str(value)]
    items = [i for i in items if i]
    return items or None


def _detect_delimiter(values: pd.Series) -> str | None:
    """Find a separator that joins labels which also occur alone (e.g. GoEmotions' '2,15')."""
    strings = [v.strip() for v in values if isinstance(v, str) and v.strip()]
    if not strings:
        return None
    alone = set(strings)
    for delimiter in DELIMITERS:
        joined = [s for s in strings if delimiter in s]
        if not joined:
            continue
        parts = [p.strip() for s in joined for p in s.split(delimiter)]
        if sum(p in alone for p in parts) >= 0.5 * len(parts):
            return delimiter
    return None


# --------------------------------------------------------------------------------------------
# Checks, split and the public entry point


def _rows(indices: Sequence[int], limit: int = 5) -> str:
    shown = ", ".join(str(i + 1) for i in indices[:limit])
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


def _clean_frame(
    frame: pd.DataFrame,
    text_col: str,
    label_col: str,
    delimiter: str | None,
    source: str,
    issues: list[DataIssue],
    drop_duplicates: bool,
) -> tuple[list[str], list[list[str]]]:
    """Rows with a non-empty text and at least one label, duplicates dropped; issues recorded."""
    texts: list[str] = []
    labels: list[list[str]] = []
    empty, unlabeled = [], []
    for index, (text, label) in enumerate(zip(frame[text_col], frame[label_col], strict=True)):
        text = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
        parsed = as_label_list(label, delimiter)
        if not text.strip():
            empty.append(index)
        elif parsed is None:
            unlabeled.append(index)
        else:
            texts.append(text.strip())
            labels.append(parsed)
    if empty:
        issues.append(DataIssue("warning", "empty_text", (
            f"{source}: {len(empty)} row(s) have an empty or whitespace-only {text_col!r} (data rows "
            f"{_rows(empty)}); they were left out. Fill in or delete them to silence this."
        )))  # fmt: skip
    if unlabeled:
        issues.append(DataIssue("warning", "missing_label", (
            f"{source}: {len(unlabeled)} row(s) have no {label_col!r} (data rows {_rows(unlabeled)}); "
            "they were left out. Label them, or keep them aside for `tunesmith predict`."
        )))  # fmt: skip
    if not texts:
        raise DataError(
            f"{source}: no row has both a text in {text_col!r} and a label in {label_col!r}. "
            "Check the column names (--text-column, --label-column)."
        )

    keys = [(t, tuple(sorted(lab))) for t, lab in zip(texts, labels, strict=True)]
    counts = Counter(keys)
    duplicates = sum(c - 1 for c in counts.values() if c > 1)
    if duplicates:
        if drop_duplicates:
            action = "kept only once, so the same text cannot land in both training and test"
        else:
            action = "kept as they are"
        issues.append(DataIssue("warning", "duplicates", (
            f"{source}: {duplicates} row(s) repeat an earlier row exactly; they were {action}."
        )))  # fmt: skip
        if drop_duplicates:
            seen: set[tuple[str, tuple[str, ...]]] = set()
            keep = [k not in seen and not seen.add(k) for k in keys]  # type: ignore[func-returns-value]
            texts = [t for t, k in zip(texts, keep, strict=True) if k]
            labels = [lab for lab, k in zip(labels, keep, strict=True) if k]
    by_text: dict[str, set[tuple[str, ...]]] = {}
    for text, lab in zip(texts, labels, strict=True):
        by_text.setdefault(text, set()).add(tuple(sorted(lab)))
    conflicts = [t for t, labs in by_text.items() if len(labs) > 1]
    if conflicts:
        example = conflicts[0]
        issues.append(DataIssue("warning", "conflicting_labels", (
            f"{source}: {len(conflicts)} text(s) appear with different labels, e.g. {example[:60]!r} as "
            f"{sorted('/'.join(x) for x in by_text[example])}. Decide on one label for each."
        )))  # fmt: skip
    return texts, labels


def _stratify_key(labels: list[list[str]], counts: Counter[str]) -> list[str]:
    # Multi-label rows are stratified by their rarest label: an approximation of iterative
    # stratification that keeps every label present in each split when it has enough examples.
    return [min(lab, key=lambda name: (counts[name], name)) for lab in labels]


def _split(
    texts: list[str], labels: list[list[str]], share: float, seed: int, issues: list[DataIssue], what: str
) -> tuple[tuple[list[str], list[list[str]]], tuple[list[str], list[list[str]]]]:
    """Hold out `share` of the rows, stratified; classes too small to split stay in the first part."""
    from sklearn.model_selection import train_test_split

    counts = Counter(name for lab in labels for name in lab)
    keys = _stratify_key(labels, counts)
    key_counts = Counter(keys)
    small = sorted(k for k, c in key_counts.items() if c < MIN_PER_CLASS_TO_STRATIFY)
    if small:
        issues.append(DataIssue("warning", "class_too_small", (
            f"{len(small)} class(es) have fewer than {MIN_PER_CLASS_TO_STRATIFY} examples and cannot be "
            f"spread over train, validation and test: {small[:8]}. They stay in training only and go "
            f"unmeasured in the {what} split. Add more examples of them."
        )))  # fmt: skip
    index = np.arange(len(texts))
    fixed = np.array([keys[i] in small for i in index], dtype=bool)
    movable = index[~fixed]
    n_hold = max(1, round(share * len(texts)))
    n_classes = len({keys[i] for i in movable})
    stratify = [keys[i] for i in movable] if n_hold >= n_classes and len(movable) - n_hold >= n_classes else None
    if stratify is None:
        issues.append(DataIssue("warning", "unstratified", (
            f"The {what} split ({n_hold} rows) is smaller than the number of classes ({n_classes}), so it "
            "could not be stratified. Add data or pass an explicit file."
        )))  # fmt: skip
    if len(movable) <= n_hold:
        raise DataError(
            f"Only {len(texts)} usable rows: too few to hold out a {what} split. Add more data, or pass --{what} FILE."
        )
    keep, hold = train_test_split(movable, test_size=n_hold, random_state=seed, stratify=stratify)
    keep = np.sort(np.concatenate([keep, index[fixed]]))
    hold = np.sort(hold)
    return (
        ([texts[i] for i in keep], [labels[i] for i in keep]),
        ([texts[i] for i in hold], [labels[i] for i in hold]),
    )


def holdout(
    items: Sequence[Item], given: dict[str, list[Item]], config: DataConfig, seed: int, *, minimum: int, what: str
) -> tuple[list[Item], list[Item], list[Item]]:
    """Split `items` into train, validation and test at random (`config`'s sizes, at least one item each), unless
    `given` already holds a validation or test list (from --validation / --test), which is then used as it is."""
    import random

    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = 0 if "validation" in given else max(1, round(len(order) * config.validation_size))
    n_test = 0 if "test" in given else max(1, round(len(order) * config.test_size))
    if len(order) - n_val - n_test < minimum:
        raise DataError(f"{config.train} has {len(order)} {what}: too few to split off validation and test. Add data "
                        "or pass --validation and --test files.")  # fmt: skip
    validation = given.get("validation", [items[i] for i in order[:n_val]])
    test = given.get("test", [items[i] for i in order[n_val : n_val + n_test]])
    return [items[i] for i in order[n_val + n_test :]], validation, test


def fingerprint(texts: Sequence[str], labels: Sequence[Any]) -> str:
    """A stable hash of a labeled split, stored with each model to tell which data trained it."""
    digest = hashlib.sha256()
    for text, label in zip(texts, labels, strict=True):
        digest.update(json.dumps([text, label], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return "sha256:" + digest.hexdigest()


@dataclass
class _Layout:
    """Where the labels are in a table and how they are written."""

    text_column: str
    label_column: str
    multi_label: bool
    delimiter: str | None


def read_layout(path: str, config: DataConfig) -> tuple[pd.DataFrame, _Layout]:
    frame = read_table(path)
    if frame.empty:
        raise DataError(f"{path!r} has a header but no rows. Add labeled rows.")
    text_col, label_col = detect_columns(frame, config)
    delimiter = config.label_delimiter
    is_list = frame[label_col].map(lambda v: isinstance(v, list | tuple | np.ndarray)).any()
    multi_label = config.multi_label
    if multi_label is None:
        if not is_list and delimiter is None:
            delimiter = _detect_delimiter(frame[label_col])
        multi_label = bool(is_list or delimiter)
    elif multi_label and not is_list and delimiter is None:
        delimiter = _detect_delimiter(frame[label_col]) or ","
    return frame, _Layout(text_col, label_col, multi_label, delimiter if multi_label else None)


def load_labeled_file(
    path: str | Path, config: DataConfig | None = None
) -> tuple[list[str], list[list[str]], list[DataIssue]]:
    """Every usable row of one labeled file, as (texts, label lists, issues), without splitting or de-duplicating.

    Used to score a trained model on new labeled data.
    """
    config = (config or DataConfig()).model_copy(update={"train": str(path)})
    issues: list[DataIssue] = []
    frame, layout = read_layout(str(path), config)
    texts, labels = _clean_frame(
        frame, layout.text_column, layout.label_column, layout.delimiter, Path(path).name, issues, False
    )
    return texts, labels, issues


def load_classification_data(config: DataConfig, seed: int = 42) -> ClassificationData:
    """Load, check and split a text-classification dataset as described by `config`."""
    if not config.train:
        raise DataError("No training file given. Pass the data file, e.g. `tunesmith train data.csv`.")
    issues: list[DataIssue] = []
    frame, layout = read_layout(config.train, config)
    text_col, label_col, multi_label, delimiter = (
        layout.text_column, layout.label_column, layout.multi_label, layout.delimiter
    )  # fmt: skip

    def clean(table: pd.DataFrame, source: str, dedupe: bool) -> tuple[list[str], list[list[str]]]:
        return _clean_frame(table, text_col, label_col, delimiter, source, issues, dedupe)

    texts, labels = clean(frame, Path(config.train).name, config.drop_duplicates)
    extra: dict[str, tuple[list[str], list[list[str]]]] = {}
    for what in ("validation", "test"):
        path = getattr(config, what)
        if path:
            table = read_table(path)
            table.columns = [str(c) for c in table.columns]
            if not ensure_text_column(table, text_col) or label_col not in table.columns:
                raise DataError(
                    f"The {what} file {path!r} lacks the columns {text_col!r} and {label_col!r} found in "
                    f"the training file. Columns found: {list(table.columns)}."
                )
            # An explicit evaluation file is scored as given, so figures compare with published ones.
            extra[what] = clean(table, Path(path).name, dedupe=False)

    classes = sorted({name for lab in labels for name in lab})
    if len(classes) < 2:
        raise DataError(
            f"All training rows have the same label {classes[0]!r}: a classifier needs at least two classes. "
            f"Check the label column ({label_col!r}) or add examples of other classes."
        )
    if not multi_label and any(len(lab) > 1 for lab in labels):
        raise DataError("Some rows hold several labels but multi-label is off. Pass --multi-label.")

    if "test" in extra:
        test = extra["test"]
    else:
        (texts, labels), test = _split(texts, labels, config.test_size, seed, issues, "test")
    if "validation" in extra:
        validation = extra["validation"]
    else:
        share = config.validation_size / (1 - (0 if "test" in extra else config.test_size))
        (texts, labels), validation = _split(texts, labels, share, seed + 1, issues, "validation")

    train_classes = {name for lab in labels for name in lab}
    for what, (_, split_labels) in (("validation", validation), ("test", test)):
        unseen = sorted({n for lab in split_labels for n in lab} - train_classes)
        if unseen:
            issues.append(DataIssue("warning", "unseen_labels", (
                f"The {what} data holds label(s) absent from training: {unseen[:8]}. The model cannot "
                "predict them; those rows count as errors."
            )))  # fmt: skip
    _warn_imbalance(labels, issues)

    label_names = sorted(train_classes | {n for _, s in (validation, test) for lab in s for n in lab})
    to_id = {name: i for i, name in enumerate(label_names)}

    def encode(split: tuple[list[str], list[list[str]]]) -> Split:
        split_texts, split_labels = split
        if multi_label:
            return Split(split_texts, [[to_id[n] for n in lab] for lab in split_labels])
        return Split(split_texts, [to_id[lab[0]] for lab in split_labels])

    train_split = encode((texts, labels))
    return ClassificationData(
        train=train_split,
        validation=encode(validation),
        test=encode(test),
        label_names=label_names,
        multi_label=multi_label,
        text_column=text_col,
        label_column=label_col,
        issues=issues,
        fingerprint=fingerprint(train_split.texts, train_split.labels),
    )


def _warn_imbalance(labels: list[list[str]], issues: list[DataIssue]) -> None:
    counts = Counter(name for lab in labels for name in lab)
    largest, smallest = max(counts.values()), min(counts.values())
    if smallest * 10 <= largest:
        rare = min(counts, key=lambda k: counts[k])
        issues.append(DataIssue("warning", "imbalance", (
            f"Classes are imbalanced: {rare!r} has {smallest} training examples against {largest} for the "
            "largest class. Consider --class-weights, or collect more examples of the rare classes."
        )))  # fmt: skip


def check_lengths(texts: Sequence[str], lengths: Sequence[int], max_length: int) -> DataIssue | None:
    """Warn when texts exceed the token limit and would be truncated."""
    over = [i for i, n in enumerate(lengths) if n > max_length]
    if not over:
        return None
    longest = max(lengths)
    return DataIssue("warning", "truncated", (
        f"{len(over)} of {len(texts)} training texts are longer than {max_length} tokens (longest: "
        f"{longest}) and will be truncated. Raise train.max_length (up to the model's limit) if their "
        "ends matter."
    ))  # fmt: skip


def check_unknown_tokens(token_ids: Sequence[Sequence[int]], unk_id: int | None, model: str) -> DataIssue | None:
    """Warn when the model's vocabulary cannot represent much of the text (e.g. Chinese on an English model)."""
    if unk_id is None:
        return None
    total = sum(len(ids) for ids in token_ids)
    unknown = sum(1 for ids in token_ids for i in ids if i == unk_id)
    if not total or unknown / total < 0.05:
        return None
    return DataIssue("warning", "unknown_tokens", (
        f"{unknown / total:.0%} of the training tokens are unknown to {model}'s vocabulary, so the model sees "
        "little of the text. Is the data in another language or script? Use a model that covers it "
        "(--model PATH_OR_HUB_ID), e.g. the embedded multilingual encoder: --model embedded:multilingual-e5-small."
    ))  # fmt: skip
