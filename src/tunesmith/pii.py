"""Personal data in texts: e-mail addresses, phone numbers, payment card numbers, IBANs, ID-like numbers and
IP addresses — found, counted and masked.

Card numbers and IBANs are confirmed by their check digits (Luhn, ISO 7064 mod 97), so order numbers and
amounts are not flagged; phone numbers are confirmed by Google's libphonenumber rules (`phonenumbers`).
Check digits and number plans are not enough on tables: newswire's sports standings ("44 82 .349 28 1") parse
as phone numbers and one in ten score lines ("1-106 2-239 3-334 4-334") passes Luhn. So a number must also be
written the way such numbers are written: a card as one run of digits or in the groups printed on cards
(4-4-4-4, 4-6-5, ...) with an issuer's first digit; a phone number in groups of two or more digits (a lone
digit only as the country code or trunk prefix), one kind of separator, and, when spaces are its only
separators, not inside a row of other numbers. bench/pii.py measures precision and recall on planted numbers.
What the report shows is already masked: it never repeats the personal data it found.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

KINDS = {
    "email": "e-mail addresses",
    "phone": "phone numbers",
    "card": "payment card numbers",
    "iban": "IBANs",
    "id_number": "ID-like numbers (US SSN pattern)",
    "ip_address": "IP addresses",
}
MASKS = {kind: f"[{kind.upper()}]" for kind in KINDS}

# Bounded parts (RFC 5321: a local part of at most 64 characters, labels of at most 63): with unbounded `+`
# every word boundary in a long run such as "a.a.a.…" rescanned the rest of the text, quadratic in its length.
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,63}\b")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])")
_DIGITS = re.compile(r"\d")
PHONE_REGION = "US"  # numbers without a country code are read as US numbers; "+CC ..." numbers as written


@dataclass(frozen=True)
class Match:
    kind: str
    start: int
    end: int


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# Groups as cards print them (Visa/Mastercard/Discover 4-4-4-4 and longer, Amex 4-6-5, Diners 4-6-4); a single
# run of digits is written by forms and logs. Issuers' first digits: 2 and 5 Mastercard, 3 Amex/JCB/Diners,
# 4 Visa, 6 Discover/UnionPay/Maestro.
_CARD_GROUPS = re.compile(r"\d{4}(?:[ -]\d{4}){2}[ -]\d{1,4}(?:[ -]\d{1,3})?|\d{4}[ -]\d{6}[ -]\d{4,5}")
_CARD_ISSUERS = set("23456")
_NUMBER_TOKEN = re.compile(r"^[-+(]?\d[\d.,:/-]*[)%]?$")


def _card_ok(raw: str, number: str) -> bool:
    if number[0] not in _CARD_ISSUERS or not 13 <= len(number) <= 19 or not luhn_valid(number):
        return False
    if raw.isdigit():
        return True
    separators = set(re.sub(r"\d", "", raw))
    return len(separators) == 1 and _CARD_GROUPS.fullmatch(raw) is not None


def _phone_ok(text: str, start: int, end: int) -> bool:
    raw = text[start:end]
    groups = re.findall(r"\d+", raw)
    separators = [s.strip() or " " for s in re.split(r"\d+", raw)[1:-1]]
    international = raw.startswith("+")
    if len(groups) > (6 if international else 5):
        return False
    if any(len(g) < 2 for g in groups[1:]) or (len(groups[0]) < 2 and not (international or groups[0] in "10")):
        return False
    marks = {s for s in separators if s not in {"(", ")", ") ", "(0)"}}
    if "." in "".join(marks) and len(marks) > 1:
        return False  # "82 .349": a decimal in a table, not a separator
    if international or "(" in raw or any(s != " " for s in separators):
        return True
    # Spaces only: fine in a sentence, not in a row of figures ("Seattle 212 555 1234 12").
    before, after = text[:start].split(), text[end:].split()
    neighbours = before[-1:] + after[:1]
    return not any(_NUMBER_TOKEN.match(token) for token in neighbours)


def _iban_ok(candidate: str) -> bool:
    compact = candidate.replace(" ", "")
    moved = compact[4:] + compact[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:
        return False


def find(text: str) -> list[Match]:
    """Non-overlapping personal-data spans in `text`, left to right."""
    found: list[Match] = []
    found += [Match("email", m.start(), m.end()) for m in _EMAIL.finditer(text)]
    found += [Match("iban", m.start(), m.end()) for m in _IBAN.finditer(text) if _iban_ok(m.group())]
    digits = len(_DIGITS.findall(text))
    if digits >= 4:  # everything below needs digits; most texts have few
        for m in _CARD.finditer(text):
            if _card_ok(m.group(), re.sub(r"\D", "", m.group())):
                found.append(Match("card", m.start(), m.end()))
        found += [Match("id_number", m.start(), m.end()) for m in _SSN.finditer(text)]
        found += [Match("ip_address", m.start(), m.end()) for m in _IPV4.finditer(text)]
    if digits >= 7:
        import phonenumbers

        for m in phonenumbers.PhoneNumberMatcher(text, PHONE_REGION, leniency=phonenumbers.Leniency.VALID):
            if _phone_ok(text, m.start, m.end):
                found.append(Match("phone", m.start, m.end))
    # Earlier kinds in this order win overlaps (a card number also parses as a long phone number).
    priority = {kind: i for i, kind in enumerate(("email", "iban", "card", "id_number", "ip_address", "phone"))}
    kept: list[Match] = []
    for match in sorted(found, key=lambda m: (priority[m.kind], m.start)):
        if all(match.end <= k.start or match.start >= k.end for k in kept):
            kept.append(match)
    return sorted(kept, key=lambda m: m.start)


def mask(text: str, matches: list[Match] | None = None) -> str:
    """`text` with each personal-data span replaced by its kind, e.g. "[EMAIL]"."""
    matches = find(text) if matches is None else matches
    out, last = [], 0
    for m in matches:
        out.append(text[last : m.start])
        out.append(MASKS[m.kind])
        last = m.end
    out.append(text[last:])
    return "".join(out)


def scan(texts: list[str], where: Any, examples: int = 20) -> dict[str, Any]:
    """Counts of each kind of personal data over `texts`, with masked examples; `where(i)` locates row i."""
    counts: Counter[str] = Counter()
    rows: Counter[str] = Counter()
    shown: list[dict[str, Any]] = []
    flagged: list[int] = []
    for i, text in enumerate(texts):
        matches = find(text)
        if not matches:
            continue
        flagged.append(i)
        kinds = Counter(m.kind for m in matches)
        counts.update(kinds)
        rows.update(kinds.keys())
        if len(shown) < examples:
            shown.append({**where(i), "text": mask(text, matches)[:300], "kinds": sorted(kinds)})
    findings = []
    if counts:
        listed = ", ".join(f"{n} {KINDS[k]}" for k, n in counts.most_common())
        findings.append(f"{len(flagged)} row(s) hold personal data: {listed}. Masking them before training "
                        "(--mask-pii) keeps a model from learning and repeating them.")  # fmt: skip
    return {
        "findings": findings,
        "counts": dict(counts),
        "rows_by_kind": dict(rows),
        "rows": len(flagged),
        "examples": shown,
    }
