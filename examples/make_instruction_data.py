"""Write examples/support_extraction.jsonl: support messages and the fields a model should pull out of them,
in one fixed format (`order=...; product=...; issue=...`): the instruction-tuning sample.

    python examples/make_instruction_data.py [--n 300]

The base model answers such requests in free prose; after a few minutes of LoRA tuning it answers in the
format, which is easy to check with exact match.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

PRODUCTS = ["desk lamp", "phone case", "office chair", "coffee grinder", "rain jacket", "yoga mat", "kettle",
            "bookshelf", "headphones", "backpack", "water bottle", "table fan"]  # fmt: skip
ISSUES = {
    "late": ["has not arrived yet", "is a week late", "still shows as in transit", "never arrived"],
    "damaged": ["arrived broken", "came with a cracked part", "was damaged in the box", "stopped working on day one"],
    "refund": ["should be refunded", "was charged twice", "needs to be returned for my money back"],
    "wrong_item": ["is not what I ordered", "came in the wrong colour", "was swapped for another product"],
}
OPENERS = ["", "Hi, ", "Hello team, ", "Good morning. ", "Hey, "]
PATTERNS = [
    "{o}my order {n} for the {p} {i}.",
    "{o}the {p} from order #{n} {i}. Please help.",
    "{o}order number {n}: the {p} {i}!",
    "{o}I am writing about the {p} (order {n}); it {i}.",
]
INSTRUCTION = "Extract the order number, the product and the issue (late, damaged, refund or wrong_item)."


def make_pairs(n: int = 300, seed: int = 5) -> list[dict[str, str]]:
    rng = random.Random(seed)
    pairs, seen = [], set()
    while len(pairs) < n:
        issue = rng.choice(sorted(ISSUES))
        number, product = str(rng.randint(10000, 99999)), rng.choice(PRODUCTS)
        opener = rng.choice(OPENERS)
        body = rng.choice(PATTERNS).format(o="", n=number, p=product, i=rng.choice(ISSUES[issue]))
        if not opener or opener.endswith(". "):  # a sentence starts here
            body = body[0].upper() + body[1:]
        message = opener + body
        if message in seen:
            continue
        seen.add(message)
        pairs.append({"instruction": INSTRUCTION, "input": message,
                      "output": f"order={number}; product={product}; issue={issue}"})  # fmt: skip
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    path = Path(__file__).with_name("support_extraction.jsonl")
    path.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(args.n)), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
