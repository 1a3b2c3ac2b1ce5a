"""`tunesmith inspect`: each check finds what a test planted in a small file, and stays quiet on clean data."""

from __future__ import annotations

import hashlib
import json
import random
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

import tunesmith
from conftest import make_sentences, write_conll, write_csv
from test_cli import run
from tunesmith import pii

_VOCABULARIES = {
    "sports": "goal match team coach player league score referee stadium season trophy striker keeper pitch fans "
    "final tournament penalty captain defender",
    "cooking": "oven recipe flour butter sugar garlic onion simmer bake roast pepper salt sauce pan knife "
    "dough whisk kitchen spoon boil",
    "weather": "rain snow storm cloud wind sunny forecast thunder fog humid frost breeze drizzle hail chilly "
    "warm temperature umbrella lightning mild",
}
TOPICS = {topic: words.split() for topic, words in _VOCABULARIES.items()}


def clean_rows(per_class: int = 40, seed: int = 0) -> list[tuple[str, str]]:
    """English sentences about one topic each: no two share more than three of their six topic words, every
    label is predictable from the words."""
    rng = random.Random(seed)
    rows = []
    for topic, words in TOPICS.items():
        chosen: list[set[str]] = []
        while len(chosen) < per_class:
            w = rng.sample(words, 6)
            if any(len(set(w) & other) > 3 for other in chosen):
                continue
            chosen.append(set(w))
            rows.append((f"yesterday we talked about the {w[0]} and the {w[1]}, then I saw that the {w[2]} was near "
                         f"the {w[3]} while the {w[4]} and the {w[5]} were waiting for us", topic))  # fmt: skip
    return rows


FLIPPED = [3, 45, 87]  # rows whose label the planted file gets wrong (0-based)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("planted")
    rows = clean_rows()
    for i in FLIPPED:
        text, topic = rows[i]
        rows[i] = (text, "weather" if topic != "weather" else "sports")
    rows += [
        (rows[10][0].upper() + " !!", rows[10][1]),  # exact duplicate after normalising
        (rows[20][0], "weather"),  # the same text with another label: a conflict
        (rows[30][0].replace("for us", "for me"), rows[30][1]),  # a near-duplicate
        ("", "sports"), ("!!!! 1234 #### 5678", "sports"), ("http://example.com/some/page", "cooking"),
        ("<div><br/></div><p></p>", "cooking"), ("aaaaaaaaaaaaaaaaaaaa", "weather"),
        ("Je voudrais savoir quel temps il fera demain matin à Paris", "weather"),
        ("Das Wetter wird morgen sehr schlecht sein, sagt der Wetterbericht", "weather"),
        ("write to jane.doe@example.com about the match on saturday", "sports"),
        ("call me on +44 20 7946 0958 for the recipe", "cooking"),
        ("my card 4111 1111 1111 1111 was charged for the umbrella", "weather"),
        ("the " + " ".join(["forecast"] * 80), "weather"),  # long: over max_length 64
        ("the cricket bat", "cricket"), ("the cricket ball", "cricket"),  # a class too small to stratify
    ]  # fmt: skip
    train = write_csv(folder / "train.csv", rows)
    test_rows = clean_rows(per_class=5, seed=1) + [rows[5], rows[50]]  # two leaks from training
    test = write_csv(folder / "test.csv", test_rows)
    digest = hashlib.sha256(train.read_bytes()).hexdigest()
    result = tunesmith.inspect_data(train, test=str(test), output_dir=folder / "report", max_length=64)
    return {"folder": folder, "train": train, "test": test, "rows": rows, "digest": digest, "result": result}


def check(planted: dict, name: str) -> dict:
    return planted["result"].report["checks"][name]


def test_exact_duplicates_conflicts_and_near_duplicates_are_found(planted: dict) -> None:
    found = check(planted, "duplicates")
    assert found["exact"]["extra_rows"] == 2  # the upper-cased copy and the conflicting copy
    assert found["exact_conflicts"]["groups"] == 1
    assert found["exact_conflicts"]["examples"][0]["labels"] == ["sports", "weather"]
    assert found["near"]["groups"] == 1
    assert {r["row"] for r in found["near"]["examples"][0]["rows"]} == {31, 123}


def test_leaks_into_the_test_file_are_found(planted: dict) -> None:
    leaks = check(planted, "duplicates")["leaks"]
    assert leaks["exact_groups"] == 2 and leaks["by_splits"] == {"test-train": 2}
    assert sorted(r["row"] for g in leaks["examples"] for r in g["rows"] if r["split"] == "train") == [6, 51]


def test_planted_label_errors_are_flagged_with_the_right_suggestion(planted: dict) -> None:
    found = check(planted, "label_errors")
    flagged = {r["row"]: r for r in json.loads((planted["folder"] / "report/report.json").read_text())["checks"][
        "label_errors"]["all"]}  # fmt: skip
    for i in FLIPPED:
        assert i + 1 in flagged
        assert flagged[i + 1]["suggested"] == [clean_rows()[i][1]]
    assert found["flagged"] <= len(FLIPPED) + 4  # the flips, the conflict, a few junk rows at most


def test_balance_lengths_junk_languages_and_pii(planted: dict) -> None:
    balance = check(planted, "balance")
    assert balance["cannot_stratify"] == ["cricket"] and "cricket" in balance["too_few_to_learn"]
    lengths = check(planted, "lengths")
    assert lengths["truncated"] == 1 and lengths["max_length"] == 64
    assert check(planted, "junk")["counts"] == {
        "empty": 1, "mostly_non_text": 1, "url_only": 1, "markup": 1, "repeated_characters": 1,
    }  # fmt: skip
    languages = check(planted, "languages")
    assert languages["main"] == "en" and {e["language"] for e in languages["examples"]} == {"fr", "de"}
    found = check(planted, "pii")
    assert found["counts"] == {"email": 1, "phone": 1, "card": 1}
    shown = " ".join(e["text"] for e in found["examples"])
    assert "jane.doe" not in shown and "4111" not in shown and "[EMAIL]" in shown  # the report never repeats it


def test_every_check_is_quiet_on_clean_data(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "clean.csv", clean_rows())
    test = write_csv(tmp_path / "test.csv", clean_rows(per_class=5, seed=1))
    result = tunesmith.inspect_data(train, test=str(test))
    assert result.findings == []


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.headings: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])
        self._in_h2 = tag == "h2"

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


def test_html_report_renders_its_sections_and_links_its_plots(planted: dict) -> None:
    import base64

    folder = planted["folder"] / "report"
    page = _Page()
    page.feed((folder / "report.html").read_text(encoding="utf-8"))
    assert {"Class balance", "Likely label errors", "Personal data", "Languages"} <= set(page.headings)
    plots = [link for link in page.links if link.startswith("plots/")]
    assert sorted(plots) == ["plots/class_balance.png", "plots/languages.png", "plots/lengths.png"]
    for link in plots:
        assert (folder / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for src in page.images:  # embedded, so the page stands alone
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
    assert len(page.images) == 3


def test_fix_writes_a_cleaned_copy_and_never_touches_the_input(planted: dict, tmp_path: Path) -> None:
    import pandas as pd

    from tunesmith.quality import write_fixed

    train = planted["train"]
    before = (train.stat().st_mtime_ns, hashlib.sha256(train.read_bytes()).hexdigest())
    out = tmp_path / "cleaned.csv"
    counts = write_fixed(planted["result"], ["dedupe", "drop-conflicts", "drop-leaks", "mask-pii"], out)
    assert before == (train.stat().st_mtime_ns, planted["digest"])
    assert counts == {"dedupe": 1, "drop-conflicts": 2, "drop-leaks": 2, "mask-pii": 3}
    cleaned = pd.read_csv(out, keep_default_na=False)
    assert len(cleaned) == len(planted["rows"]) - 5
    assert not cleaned["text"].str.contains("jane.doe|4111|7946", regex=True).any()
    assert cleaned["text"].str.contains(r"\[EMAIL\]").sum() == 1
    with pytest.raises(tunesmith.ConfigError, match="never changes its input"):
        write_fixed(planted["result"], ["dedupe"], train)
    assert hashlib.sha256(train.read_bytes()).hexdigest() == planted["digest"]


def test_cli_inspect_with_fix_and_unknown_fix(
    planted: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "masked.jsonl"
    code, stdout, stderr = run(capsys, "inspect", str(planted["train"]), "--report", str(tmp_path / "r"), "--mask-pii",
                               "--output", str(out), "--skip", "label_errors,languages", "--no-progress")  # fmt: skip
    assert code == 0, stderr
    assert "personal data" in stdout and "is unchanged" in stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(planted["rows"]) and any("[PHONE]" in r["text"] for r in records)
    code, _, stderr = run(capsys, "inspect", str(planted["train"]), "--fix", "dedup")
    assert code == 1 and "Unknown fix(es) dedup. Fixes: dedupe:" in stderr and "Traceback" not in stderr
    # One spelling for checks and fixes (hyphens; underscores are read too), and a mistyped check is refused.
    code, _, stderr = run(capsys, "inspect", str(planted["train"]), "--skip", "label-error")
    assert code == 1 and "Unknown check(s) label-error. Checks: duplicates, label-errors, balance" in stderr


def test_ner_inspect_finds_duplicates_and_token_label_errors(tmp_path: Path) -> None:
    sentences = make_sentences(120)
    wrong = next(i for i, s in enumerate(sentences) if i > 4 and s.tags[0] == "B-PER" and s.tokens[1] == "flew")
    sentences[wrong].tags[0] = "O"  # a person left untagged
    sentences += [sentences[1], sentences[2]]
    train = write_conll(tmp_path / "train.conll", sentences)
    result = tunesmith.inspect_data(train, task="token-classification", output_dir=tmp_path / "r")
    found = result.report["checks"]
    assert found["duplicates"]["exact"]["extra_rows"] >= 2
    assert found["balance"]["counts"].keys() == {"PER", "LOC"}
    flagged = {e["row"]: e for e in found["label_errors"]["examples"]}
    assert flagged[wrong + 1]["tokens"] == [{"token": sentences[wrong].tokens[0], "position": 0, "tag": "O",
                                             "suggested": "B-PER"}]  # fmt: skip
    assert len(flagged) <= 3


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("mail jane@example.org now", ["email"]),
        ("card 4111-1111-1111-1111", ["card"]),
        ("order 4111-1111-1111-1112", []),  # fails the Luhn check: an order number, not a card
        ("iban DE89 3704 0044 0532 0130 00", ["iban"]),
        ("ssn 123-45-6789", ["id_number"]),
        ("ring (415) 555-2671 today", ["phone"]),
        ("host 10.0.0.1 is down", ["ip_address"]),
        ("I paid 12.50 on 2024-01-05 for 3 items", []),
        # Newswire tables that libphonenumber or Luhn accept (seen flagged on CoNLL-2003): not personal data.
        ("Seattle 44 82 .349 28 1", []),
        ("Barcelona 3 1 0 2 5 6 3", []),
        ("Fall of wickets: 1-106 2-239 3-334 4-334", []),
        ("Detroit 212 555 1234 12", []),
        # How people write real numbers, in sentences.
        ("London newsroom +44 20 7946 0958", ["phone"]),
        ("call 212 555 1234 after six", ["phone"]),
        ("fax 212.859.1600", ["phone"]),
        ("amex 3782 822463 10005 expired", ["card"]),
        ("card no 4111111111111111", ["card"]),
    ],
)
def test_pii_kinds(text: str, kinds: list[str]) -> None:
    assert [m.kind for m in pii.find(text)] == kinds
    if kinds:
        assert f"[{kinds[0].upper()}]" in pii.mask(text)


def test_train_starts_with_the_quick_checks(
    train_tiny, support_rows: list, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [*support_rows, ("please mail the invoice to jane.doe@example.com", "refund_request")]
    train = write_csv(tmp_path / "train.csv", rows[20:])
    test = write_csv(tmp_path / "test.csv", rows[:20] + rows[40:42])  # two training rows leak into the test file
    train_tiny(train, test=str(test), max_steps=2)
    out = capsys.readouterr().out
    assert "inspect: 1 row(s) hold personal data: 1 e-mail addresses" in out
    assert "span splits ({'test-train': 2})" in out
    assert "`tunesmith inspect" in out


def test_fix_drop_label_errors_drops_the_flagged_rows(planted: dict, tmp_path: Path) -> None:
    import pandas as pd

    from tunesmith.quality import write_fixed

    out = tmp_path / "relabelled.parquet"
    counts = write_fixed(planted["result"], ["drop-label-errors"], out)
    kept = set(pd.read_parquet(out)["text"])
    assert counts["drop-label-errors"] == check(planted, "label_errors")["flagged"]
    assert not {planted["rows"][i][0] for i in FLIPPED} & kept


@pytest.mark.parametrize("multi_label", [False, True])
def test_label_errors_with_the_large_data_set_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, multi_label: bool
) -> None:  # fmt: skip
    """Above `LARGE` rows the fast model uses word n-grams and fewer folds (and fits the one-vs-rest labels of
    multi-label data side by side): it must still find the flips."""
    from tunesmith.quality import label_errors

    monkeypatch.setattr(label_errors, "LARGE", 50)
    rows = clean_rows() + clean_rows(seed=1) + clean_rows(seed=2)  # three folds of 120 rows leave too few to learn
    for i in FLIPPED:
        rows[i] = (rows[i][0], "weather" if rows[i][1] != "weather" else "sports")
    if multi_label:  # one row with two labels makes the file multi-label
        rows.append((rows[0][0] + " and the rain", "sports,weather"))
    path = write_csv(tmp_path / "train.csv", rows)
    result = tunesmith.inspect_data(path, **({"label_delimiter": ","} if multi_label else {}))
    found = result.report["checks"]["label_errors"]
    assert found["folds"] == label_errors.LARGE_FOLDS and "(word n-grams)" in found["model"]
    flagged = {r["row"]: r for r in found["_all"]}
    for i in FLIPPED:
        assert i + 1 in flagged
        assert flagged[i + 1]["suggested"] == [clean_rows()[i][1]]
    assert found["flagged"] <= len(FLIPPED) + 2


@pytest.mark.parametrize("hostile", ["a." * 20_000, "a-" * 20_000, "a@" + "a." * 20_000])
def test_email_detection_is_linear(hostile: str) -> None:
    from tunesmith.pii import find

    started = time.perf_counter()
    find(hostile)
    assert time.perf_counter() - started < 0.2  # the unbounded pattern took ~1.3 s here (quadratic)
