"""Write examples/support_tickets.csv: synthetic customer-support messages over six intents.

The messages are built from templates, product names and phrasings, with some overlap between
intents (e.g. a late order and a refund can share words) so the task is not trivially separable.
Run: python examples/make_support_data.py   (deterministic: the same file every time)
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

PRODUCTS = ["headphones", "coffee grinder", "running shoes", "desk lamp", "phone case", "backpack",
            "blender", "yoga mat", "keyboard", "water bottle", "winter jacket", "smart watch"]  # fmt: skip
OPENERS = ["", "", "", "Hi, ", "Hello, ", "Hey there. ", "Good morning, ", "Hi team, ", "Excuse me, "]
CLOSERS = ["", "", "", ". Thanks.", ". Thank you!", ". Please help.", ". Any update would be great.", ", cheers"]

INTENTS: dict[str, list[str]] = {
    "order_status": [
        "where is my order for the {p}?",
        "my {p} was supposed to arrive {day} and it still hasn't come",
        "can you tell me when my {p} will be delivered",
        "the tracking number for my {p} shows no movement since {day}",
        "I ordered a {p} {ago} and have no shipping update",
        "is my order #{n} on its way?",
        "how long does delivery usually take, I'm waiting on a {p}",
        "package with the {p} says delivered but I never got it",
        "where is my {pkg}? it was due {day}",
        "any news on my {pkg}? still waiting",
        "my {pkg} is late, when will it arrive",
        "has my {pkg} shipped yet",
        "the courier never showed up with my {pkg}",
        "what is the estimated delivery date for order #{n}",
    ],
    "refund_request": [
        "I want my money back for the {p}",
        "please refund order #{n}, the {p} is not what I expected",
        "how do I return the {p} and get a refund",
        "I was charged twice for the {p}, I need a refund",
        "can I get a refund, the {p} arrived {ago} and I don't like it",
        "the refund for my {p} hasn't reached my card yet",
        "I'd like to send back the {p} for a full refund",
        "you billed me for a {p} I cancelled, refund please",
        "I was charged twice, please give the money back",
        "I returned the {p} {ago}, when do I get reimbursed",
        "please credit my card for the {pkg} I sent back",
        "give me a refund, I'm not happy with the {p}",
        "the {p} was too small, I want to return it for my money",
        "how long do refunds take to process",
    ],
    "cancel_subscription": [
        "please cancel my subscription",
        "how do I stop the monthly plan before it renews {day}",
        "I want to end my membership, it's too expensive",
        "cancel auto renewal on my account please",
        "stop charging me every month, I no longer use the service",
        "I'd like to unsubscribe from the premium plan",
        "how can I close my subscription without fees",
        "don't renew my plan next month",
        "I want to quit the service and delete my plan",
        "please terminate my membership effective today",
        "turn off the recurring payment for my subscription",
        "how do I downgrade to free and stop paying",
        "end my trial before it converts to paid",
        "I'm leaving, cancel everything on my account",
    ],
    "change_address": [
        "I need to change the delivery address for order #{n}",
        "can you ship the {p} to my office instead of home",
        "I moved {ago}, please update my shipping address",
        "wrong address on my order for the {p}, how do I fix it",
        "update my address to {street} before the {p} ships",
        "please send the package to {street}",
        "can I edit the address on an order that already shipped",
        "my zip code is wrong on order #{n}",
        "I typed the wrong street, please correct it to {street}",
        "deliver my {pkg} to my neighbour's address instead",
        "change the shipping destination to {street}",
        "I'm not home next week, can you redirect the {pkg}",
        "please add my apartment number to the delivery address",
        "my new address is {street}, update it on my account",
    ],
    "login_problem": [
        "I can't log in to my account",
        "the password reset email never arrives",
        "my account is locked after too many attempts",
        "it says my password is wrong but I just changed it {ago}",
        "two factor code doesn't work when I sign in",
        "I forgot my username, how do I get into my account",
        "the app logs me out every time I open it",
        "I can't sign in with my email since {day}",
        "I can't access my account since I changed my password",
        "the login page keeps saying invalid credentials",
        "I never receive the verification code to log in",
        "help, I'm locked out of my profile",
        "reset my password please, the link is expired",
        "my account got hacked and I can't get back in",
    ],
    "damaged_item": [
        "my {p} arrived broken",
        "the {p} stopped working after {ago}",
        "the box was crushed and the {p} is damaged",
        "one part of the {p} is missing from the package",
        "the {p} I received has a crack in it",
        "my {p} is defective, the button doesn't work",
        "received a scratched {p}, what can you do",
        "the {p} came with a torn seam and a stain",
        "the {p} arrived with a cracked base",
        "the screen of the {p} is shattered",
        "my {p} makes a grinding noise and won't turn on",
        "the {p} is leaking, it must be faulty",
        "the {p} broke the first time I used it",
        "the {p} you sent me is damaged and unusable",
    ],
}
PACKAGES = ["order", "package", "parcel", "delivery", "shipment"]
DAYS = ["yesterday", "on Monday", "last Friday", "two days ago", "this morning", "on the 3rd", "last week"]
AGOS = ["a week ago", "three days ago", "last month", "two weeks ago", "yesterday", "10 days ago"]
STREETS = ["12 Oak Street", "48 River Road, Apt 5", "7 Hill Lane", "230 Market Ave", "9 Station Square"]


def _typo(text: str, rng: random.Random) -> str:
    # A few messages get a swapped letter pair, as real users type.
    if len(text) < 12 or rng.random() > 0.15:
        return text
    i = rng.randrange(1, len(text) - 2)
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


def make_rows(per_intent: int = 100, seed: int = 7) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows: set[tuple[str, str]] = set()
    for intent, templates in INTENTS.items():
        made = 0
        while made < per_intent:
            body = rng.choice(templates).format(
                p=rng.choice(PRODUCTS), pkg=rng.choice(PACKAGES), day=rng.choice(DAYS), ago=rng.choice(AGOS),
                n=rng.randint(10000, 99999), street=rng.choice(STREETS),
            )  # fmt: skip
            opener = rng.choice(OPENERS)
            body = body[0].upper() + body[1:] if not opener else body
            closer = rng.choice(CLOSERS)
            if body[-1] in "?!." and closer[:1] in ".,":
                closer = closer[1:]
            text = _typo(opener + body + closer, rng)
            if (text, intent) not in rows:
                rows.add((text, intent))
                made += 1
    ordered = sorted(rows)
    rng.shuffle(ordered)
    return ordered


def main() -> None:
    path = Path(__file__).with_name("support_tickets.csv")
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(make_rows())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
