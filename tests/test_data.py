"""One test per validation rule, each with a bad file, plus every input format and the split."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from conftest import write_csv, write_jsonl
from tunesmith.config import DataConfig
from tunesmith.data import check_lengths, check_unknown_tokens, load_classification_data, read_table
from tunesmith.errors import DataError


def load(path: Path, **settings: object):
    return load_classification_data(DataConfig(train=str(path), **settings), seed=1)


def codes(data) -> set[str]:
    return {issue.code for issue in data.issues}


def balanced(n_per_class: int = 10, classes: tuple[str, ...] = ("a", "b", "c")) -> list[tuple[str, str]]:
    return [(f"sample text number {i} for class {c}", c) for c in classes for i in range(n_per_class)]


# -- errors -------------------------------------------------------------------------------------


def test_missing_file_names_nearby_data_files(tmp_path: Path) -> None:
    write_csv(tmp_path / "train.csv", balanced())
    with pytest.raises(DataError, match=r"does not exist.*train\.csv"):
        read_table(tmp_path / "trian.csv")


def test_unknown_format_lists_supported_extensions(tmp_path: Path) -> None:
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match=r"Cannot tell the format.*\.csv.*\.jsonl"):
        read_table(path)


def test_not_utf8_says_where(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\nfine row,a\ncaf\u00e9 au lait,b\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"not UTF-8: byte 0xe9 at line 3, column 4.*iconv"):
        read_table(path)


def test_missing_columns_lists_those_found(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [(f"row {i}", f"{i}") for i in range(30)], header=("body", "ident"))
    with pytest.raises(DataError, match=r"label column.*Columns found: \['body', 'ident'\].*--label-column"):
        load(path)


def test_named_column_that_does_not_exist(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", balanced())
    with pytest.raises(DataError, match=r"text column 'review' is not in the data.*\['text', 'label'\]"):
        load(path, text_column="review")


def test_one_class_only(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [(f"text {i}", "spam") for i in range(20)])
    with pytest.raises(DataError, match=r"same label 'spam'.*at least two classes"):
        load(path)


def test_invalid_jsonl_line_is_located(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok", "label": "a"}\n{"text": "broken", "label": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2 is not valid JSON"):
        read_table(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="is empty"):
        read_table(path)


def test_no_usable_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [("", "a"), ("  ", "b")])
    with pytest.raises(DataError, match="no row has both a text"):
        load(path)


# -- warnings: the rows concerned are left out, the rest trains --------------------------------


def test_empty_texts_are_dropped_with_row_numbers(tmp_path: Path) -> None:
    rows = balanced() + [("   ", "a"), ("", "b")]
    data = load(write_csv(tmp_path / "d.csv", rows))
    issue = next(i for i in data.issues if i.code == "empty_text")
    assert "2 row(s)" in issue.message and "31, 32" in issue.message
    assert len(data.train) + len(data.validation) + len(data.test) == 30


def test_missing_labels_are_dropped(tmp_path: Path) -> None:
    rows = balanced() + [("a text without label", ""), ("another one", "")]
    data = load(write_csv(tmp_path / "d.csv", rows))
    assert "missing_label" in codes(data)
    all_texts = data.train.texts + data.validation.texts + data.test.texts
    assert "a text without label" not in all_texts


def test_class_too_small_to_stratify_stays_in_training(tmp_path: Path) -> None:
    rows = balanced() + [("the only rare example", "rare"), ("the second rare example", "rare")]
    data = load(write_csv(tmp_path / "d.csv", rows))
    assert "class_too_small" in codes(data)
    rare = data.label_names.index("rare")
    assert data.train.labels.count(rare) == 2
    assert rare not in data.validation.labels + data.test.labels


def test_duplicate_rows_are_dropped_before_splitting(tmp_path: Path) -> None:
    rows = balanced() + balanced()[:5]
    data = load(write_csv(tmp_path / "d.csv", rows))
    issue = next(i for i in data.issues if i.code == "duplicates")
    assert "5 row(s)" in issue.message
    texts = data.train.texts + data.validation.texts + data.test.texts
    assert len(texts) == len(set(texts)) == 30


def test_conflicting_labels_are_reported(tmp_path: Path) -> None:
    rows = [*balanced(), ("sample text number 0 for class a", "b")]
    data = load(write_csv(tmp_path / "d.csv", rows))
    assert "conflicting_labels" in codes(data)


def test_imbalance_is_reported(tmp_path: Path) -> None:
    rows = balanced(80, ("big",)) + balanced(5, ("small",)) + balanced(80, ("other",))
    data = load(write_csv(tmp_path / "d.csv", rows))
    assert "imbalance" in codes(data)


def test_texts_over_the_token_limit_are_counted() -> None:
    issue = check_lengths(["a", "b", "c"], [10, 300, 700], max_length=256)
    assert issue is not None and "2 of 3 training texts are longer than 256 tokens (longest: 700)" in issue.message
    assert check_lengths(["a"], [10], max_length=256) is None


def test_clean_data_raises_no_issue(tmp_path: Path) -> None:
    data = load(write_csv(tmp_path / "d.csv", balanced(20)))
    assert data.issues == []


# -- formats ------------------------------------------------------------------------------------


def test_formats_load_the_same_rows(tmp_path: Path) -> None:
    rows = balanced()
    records = [{"sentence": t, "label": y} for t, y in rows]
    write_jsonl(tmp_path / "d.jsonl", records)
    (tmp_path / "d.json").write_text(json.dumps({"data": records}), encoding="utf-8")
    pd.DataFrame(records).to_parquet(tmp_path / "d.parquet")
    (tmp_path / "d.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    for suffix in ("jsonl", "json", "parquet", "tsv"):
        data = load(tmp_path / f"d.{suffix}")
        assert data.text_column == "sentence", suffix
        assert sorted(data.train.texts + data.validation.texts + data.test.texts) == sorted(t for t, _ in rows)


def test_glue_style_tsv_keeps_quotes_inside_texts(tmp_path: Path) -> None:
    lines = ["sentence\tlabel"] + [f'he said "hi {i} there\t{i % 2}' for i in range(30)]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    frame = read_table(tmp_path / "train.tsv")
    assert len(frame) == 30 and frame["sentence"][0] == 'he said "hi 0 there'


def test_headerless_csv_is_detected(tmp_path: Path) -> None:
    # AG News ships as "class","title","description" rows with no header.
    rows = [
        (str(1 + i % 3), f"Title {i}", f"A longer description of news item number {i} goes here") for i in range(60)
    ]
    path = tmp_path / "news.csv"
    path.write_text("".join(f'"{c}","{t}","{d}"\n' for c, t, d in rows), encoding="utf-8")
    data = load(path)
    assert (data.text_column, data.label_column) == ("column2", "column0")
    assert data.label_names == ["1", "2", "3"]


def test_json_object_of_lists(tmp_path: Path) -> None:
    rows = balanced()
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"text": [t for t, _ in rows], "label": [y for _, y in rows]}), encoding="utf-8")
    assert load(path).label_names == ["a", "b", "c"]


def test_clue_style_jsonl_named_json(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    rows = [{"label": str(100 + i % 3), "label_desc": f"news_{i % 3}", "sentence": f"headline {i}"} for i in range(30)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    data = load(path, label_column="label_desc")
    assert data.text_column == "sentence" and len(data.label_names) == 3


# -- multi-label ----------------------------------------------------------------------------------


def test_multi_label_from_list_column(tmp_path: Path) -> None:
    records = [
        {"text": f"text {i}", "labels": ["x", "y"] if i % 3 == 0 else ["x" if i % 2 else "z"]} for i in range(60)
    ]
    data = load(write_jsonl(tmp_path / "d.jsonl", records))
    assert data.multi_label and data.label_names == ["x", "y", "z"]
    assert all(isinstance(lab, list) for lab in data.train.labels)


def test_multi_label_delimiter_is_detected(tmp_path: Path) -> None:
    # GoEmotions-style: most rows one label id, some "2,15".
    rows = [(f"comment {i}", "2,15" if i % 4 == 0 else str([2, 15, 27][i % 3])) for i in range(60)]
    data = load(write_csv(tmp_path / "d.csv", rows))
    assert data.multi_label and data.label_names == ["15", "2", "27"]


def test_commas_inside_single_labels_are_not_taken_for_a_delimiter(tmp_path: Path) -> None:
    rows = [(f"text {i}", ["card, lost", "refund", "top up"][i % 3]) for i in range(30)]
    data = load(write_csv(tmp_path / "d.csv", rows))
    assert not data.multi_label and "card, lost" in data.label_names


# -- split ----------------------------------------------------------------------------------------


def test_split_is_stratified_seeded_and_disjoint(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", balanced(20, ("a", "b", "c", "d")))
    first, second = load(path), load(path)
    assert first.train.texts == second.train.texts and first.test.texts == second.test.texts
    for split in (first.validation, first.test):
        assert set(Counter(split.labels)) == {0, 1, 2, 3}  # every class present
    sets = [set(s.texts) for s in (first.train, first.validation, first.test)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert (len(first.train), len(first.validation), len(first.test)) == (64, 8, 8)


def test_explicit_test_file_is_used_as_is(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", balanced(20))
    test = write_csv(tmp_path / "test.csv", balanced(3) + balanced(1))  # duplicates kept in a test file
    data = load(train, test=str(test))
    assert len(data.test) == 12 and len(data.train) + len(data.validation) == 60


def test_test_file_with_other_columns(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", balanced(20))
    test = write_csv(tmp_path / "test.csv", balanced(2), header=("body", "label"))
    with pytest.raises(DataError, match=r"test file.*lacks the columns 'text' and 'label'"):
        load(train, test=str(test))


def test_unseen_test_labels_are_reported(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", balanced(20))
    test = write_csv(tmp_path / "test.csv", [*balanced(2), ("something new", "zzz")])
    assert "unseen_labels" in codes(load(train, test=str(test)))


def test_text_the_vocabulary_cannot_read_is_reported() -> None:
    unk = 100
    issue = check_unknown_tokens([[unk, unk, 5], [unk, 7]], unk, "embedded:all-MiniLM-L6-v2")
    assert issue is not None and "60% of the training tokens are unknown" in issue.message
    assert check_unknown_tokens([[1, 2, 3]] * 30, unk, "m") is None


@pytest.mark.parametrize(
    "reader",
    ["tunesmith.tasks.token_classification.sentences:read_sentences",
     "tunesmith.tasks.question_answering.examples:read_examples",
     "tunesmith.tasks.text_generation.conversations:read_conversations"],
)
def test_every_task_reader_says_where_a_file_is_not_utf8_and_reads_a_bom(reader: str, tmp_path: Path) -> None:
    import importlib

    module, name = reader.split(":")
    read = getattr(importlib.import_module(module), name)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"text": "ok"}\n{"text": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"not UTF-8: byte 0xe9 at line 2, column 14.*iconv"):
        read(latin)
    with pytest.raises(DataError, match=r"does not exist"):
        read(tmp_path / "missing.jsonl")
    bom = tmp_path / "bom.jsonl"
    record = {"tokens": ["bob", "ran"], "tags": ["B-PER", "O"], "question": "who ran?", "context": "bob ran",
              "answers": {"text": ["bob"], "answer_start": [0]}, "instruction": "who ran?", "output": "bob"}
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(record).encode())
    assert read(bom)  # the byte-order mark some editors write is not taken for data


# -- texts in several columns ---------------------------------------------------------------------


def test_a_headerless_file_is_read_with_every_text_column(tmp_path: Path) -> None:
    # AG News as distributed: "class","title","description"; the title carries the topic as much as the body.
    rows = [(str(1 + i % 3), f"Headline number {i} of the day", f"A longer description of news item {i} goes here",
             f"id{i}") for i in range(60)]  # fmt: skip
    path = tmp_path / "news.csv"
    path.write_text("".join(f'"{c}","{t}","{d}","{n}"\n' for c, t, d, n in rows), encoding="utf-8")
    data = load(path)
    assert (data.text_column, data.label_column) == ("column1 + column2", "column0")
    assert sorted(data.train.texts + data.validation.texts + data.test.texts)[0] == (
        "Headline number 0 of the day | A longer description of news item 0 goes here"
    )


def test_paired_columns_are_read_together_in_every_file(tmp_path: Path) -> None:
    # QNLI: index, question, sentence, label; "sentence" alone is a usual text name, but the pair is the input.
    header = ("index", "question", "sentence", "label")
    rows = [(i, f"what is thing {i}?", f"thing {i} is a kind of object", "entailment" if i % 2 else "not_entailment")
            for i in range(40)]  # fmt: skip
    train, test = write_csv(tmp_path / "train.csv", rows, header), write_csv(tmp_path / "dev.csv", rows[:6], header)
    data = load(train, test=str(test))
    assert data.text_column == "question + sentence"
    assert data.test.texts[0] == "what is thing 0? | thing 0 is a kind of object"


def test_a_usual_text_name_is_read_alone(tmp_path: Path) -> None:
    rows = [(f"sample text {i}", f"an annotator wrote a long note number {i}", "ab"[i % 2]) for i in range(40)]
    data = load(write_csv(tmp_path / "d.csv", rows, ("text", "notes", "label")))
    assert data.text_column == "text" and data.train.texts[0].startswith("sample text")


def test_text_column_may_name_several_columns(tmp_path: Path) -> None:
    rows = [(f"title {i}", f"body {i}", "ab"[i % 2]) for i in range(40)]
    path = write_csv(tmp_path / "d.csv", rows, ("head", "main", "label"))
    data = load(path, text_column="head,main")
    assert data.text_column == "head + main" and data.train.texts[0].count(" | ") == 1
    with pytest.raises(DataError, match=r"'head,nope' is not in the data.*separated by commas"):
        load(path, text_column="head,nope")
