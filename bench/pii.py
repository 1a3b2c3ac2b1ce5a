"""Precision and recall of the personal-data check on real text with planted numbers and on tables.

    python bench/pii.py [--rows 4000] [--seed 0]

Carriers are real texts: Banking77's customer messages and WNUT-17's tweets. Into a third of them a real
number is planted at a random word boundary: US and UK phone numbers in the ways people write them
(valid by libphonenumber, so a miss is the check's and not a made-up number's), and card numbers with an
issuer's prefix and a valid Luhn digit, grouped or not. A third are left as they are, and a third are
replaced by rows of newswire tables (sports standings, score lines, golf cards, market tables, results)
with numbers drawn at random: Luhn passes on a tenth of such digit runs, and libphonenumber's US plan
accepts many of them. A planted number counts as found when a match of its kind covers it; every other
match is a false positive. Writes bench/results/pii.json.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

from _common import require_shared_data, save
from tunesmith import pii

AREA_CODES = ["212", "213", "312", "415", "617", "202", "305", "404", "713", "206", "646", "718"]
TEAMS = ["Seattle", "Boston", "New York", "Toronto", "Detroit", "Chicago", "Baltimore", "Oakland", "Texas", "Kansas City"]


def carriers(data: Path) -> list[str]:
    with (data / "banking77" / "train.csv").open(encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    sentence: list[str] = []
    for line in (data / "wnut17" / "emerging.dev.conll").read_text(encoding="utf-8").splitlines():
        if line.strip():
            sentence.append(line.split("\t")[0])
        elif sentence:
            texts.append(" ".join(sentence))
            sentence = []
    return texts


def luhn_complete(prefix: str, rng: random.Random, length: int) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    for check in "0123456789":
        if pii.luhn_valid(body + check):
            return body + check
    raise AssertionError("unreachable")


def phone(rng: random.Random) -> str:
    import phonenumbers

    while True:
        area, exchange, line = rng.choice(AREA_CODES), str(rng.randint(201, 989)), f"{rng.randint(0, 9999):04d}"
        if phonenumbers.is_valid_number(phonenumbers.parse(f"+1{area}{exchange}{line}")):
            break
    uk = f"+44 20 7{rng.randint(100, 999)} {rng.randint(1000, 9999)}"
    return rng.choice([f"({area}) {exchange}-{line}", f"{area}-{exchange}-{line}", f"{area}.{exchange}.{line}",
                       f"{area} {exchange} {line}", f"+1 {area} {exchange} {line}", f"+1-{area}-{exchange}-{line}",
                       f"{area}{exchange}{line}", uk])  # fmt: skip


def card(rng: random.Random) -> str:
    if rng.random() < 0.2:
        number = luhn_complete(rng.choice(["34", "37"]), rng, 15)
        return rng.choice([number, f"{number[:4]} {number[4:10]} {number[10:]}"])
    number = luhn_complete(rng.choice(["4", "51", "52", "55", "6011"]), rng, 16)
    groups = [number[i : i + 4] for i in range(0, 16, 4)]
    return rng.choice([number, " ".join(groups), "-".join(groups)])


def table_row(rng: random.Random) -> str:
    def n(a: int, b: int) -> str:
        return str(rng.randint(a, b))

    kind = rng.randrange(6)
    if kind == 0:  # baseball standings: W L PCT GB
        return f"{rng.choice(TEAMS)} {n(30, 99)} {n(30, 99)} .{n(300, 700)} {n(1, 30)} {rng.choice(['', '1/2'])}".strip()
    if kind == 1:  # cricket: fall of wickets
        return " ".join(f"{i}-{rng.randint(10 * i, 60 * i)}" for i in range(1, rng.randint(4, 10)))
    if kind == 2:  # soccer table: P W D L F A Pts
        return f"{rng.choice(TEAMS)} " + " ".join(n(0, 9) for _ in range(7))
    if kind == 3:  # golf: four rounds and the total
        rounds = [rng.randint(64, 76) for _ in range(4)]
        return f"{rng.choice(TEAMS)} " + " ".join(map(str, rounds)) + f" {sum(rounds)}"
    if kind == 4:  # market table: open high low close volume
        price = rng.uniform(5, 500)
        return (f"{rng.choice(['ABC', 'XYZ', 'IBM', 'GM'])} {price:.2f} {price * 1.02:.2f} {price * 0.98:.2f} "
                f"{price * 1.01:.2f} {rng.randint(1000, 9_999_999):,}")  # fmt: skip
    return f"{n(1, 12)}. {rng.choice(TEAMS)} {n(1, 4)}:{n(10, 59)}.{n(10, 99)} {n(100, 999)} {n(100, 999)} {n(1000, 9999)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    texts = carriers(require_shared_data())
    rng.shuffle(texts)
    stats = {kind: {"planted": 0, "found": 0, "false_positives": 0} for kind in ("phone", "card")}
    table_flags = 0
    for i in range(args.rows):
        role = i % 3
        planted: tuple[str, int, int] | None = None
        if role == 0:
            kind = "phone" if rng.random() < 0.6 else "card"
            number = phone(rng) if kind == "phone" else card(rng)
            words = texts[i % len(texts)].split()
            at = rng.randint(0, len(words))
            head = " ".join(words[:at])
            text = f"{head} {number} {' '.join(words[at:])}".strip() if head else f"{number} {' '.join(words)}"
            start = text.index(number)
            planted = (kind, start, start + len(number))
            stats[kind]["planted"] += 1
        elif role == 1:
            text = texts[i % len(texts)]
        else:
            text = table_row(rng)
        for match in pii.find(text):
            if match.kind not in stats:
                continue
            if planted and match.kind == planted[0] and match.start <= planted[1] and match.end >= planted[2]:
                stats[match.kind]["found"] += 1
            else:
                stats[match.kind]["false_positives"] += 1
                table_flags += role == 2
    rows = []
    for kind, s in stats.items():
        flagged = s["found"] + s["false_positives"]
        s["precision"] = round(s["found"] / flagged, 4) if flagged else 1.0
        s["recall"] = round(s["found"] / s["planted"], 4) if s["planted"] else 1.0
        rows.append((kind, s["planted"], s["found"], s["false_positives"], s["precision"], s["recall"]))
    print(f"{'kind':6} {'planted':>8} {'found':>6} {'false +':>8} {'precision':>10} {'recall':>7}")
    for row in rows:
        print(f"{row[0]:6} {row[1]:8d} {row[2]:6d} {row[3]:8d} {row[4]:10.3f} {row[5]:7.3f}")
    print(f"false positives on table rows: {table_flags} of {args.rows // 3}")
    path = save("pii", {"rows": args.rows, "seed": args.seed, "kinds": stats, "table_false_positives": table_flags})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
