"""Text-level checks: duplicates (exact and near), leakage between splits, class balance, lengths, junk rows,
languages.

Every check takes the rows of all splits at once (`Rows`), so duplicates inside a split and leaks across
splits come out of one pass. Each returns a plain dict that goes into `report.json` as it is; `findings`
in each dict are the lines a person reads first.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tunesmith.data import MIN_PER_CLASS_TO_STRATIFY

Tick = Callable[[int], None]  # advances a progress bar by n rows

EXAMPLES = 20  # examples kept per finding: enough to judge it, small enough to read
NEAR_THRESHOLD = 0.8  # Jaccard similarity of character 5-gram sets
NUM_PERM = 64  # MinHash permutations: the LSH misses few pairs at 0.8 and costs ~60 us per text
TOO_FEW_TO_LEARN = 10  # below this many examples a class is rarely learnt by fine-tuning (few-shot is the tool)


@dataclass
class Rows:
    """The rows of every split, in file order. `row` is the 1-based data row in its file."""

    texts: list[str] = field(default_factory=list)
    labels: list[tuple[str, ...] | None] = field(default_factory=list)  # None: no label (unlabeled rows)
    split: list[str] = field(default_factory=list)
    row: list[int] = field(default_factory=list)

    def add(self, text: str, labels: tuple[str, ...] | None, split: str, row: int) -> None:
        self.texts.append(text)
        self.labels.append(labels)
        self.split.append(split)
        self.row.append(row)

    def __len__(self) -> int:
        return len(self.texts)

    def where(self, i: int) -> dict[str, Any]:
        """How a report points at row i."""
        return {"split": self.split[i], "row": self.row[i], "text": self.texts[i][:300]}


_NON_WORD = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    """The form two texts are compared in: Unicode-compatible, case-folded, punctuation and spacing dropped."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


# -- duplicates and leakage ---------------------------------------------------------------------------


def _shingles(norm: str, size: int = 5) -> np.ndarray:
    """The text's character 5-grams, as sorted unique 32-bit hashes (crc32: the same in every process)."""
    padded = f" {norm} ".encode()
    grams = [padded] if len(padded) <= size else [padded[i : i + size] for i in range(len(padded) - size + 1)]
    return np.unique(np.fromiter((zlib.crc32(g) for g in grams), dtype=np.uint32, count=len(grams)))


def _identity(value: int) -> int:
    return value


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


def _near_pairs(norms: list[str], keys: list[int], tick: Tick) -> list[tuple[int, int, float]]:
    """Pairs of rows (among `keys`, one per distinct normalised text) whose texts are near-duplicates.

    MinHash LSH (datasketch) proposes candidates in time linear in the rows; each candidate is then
    confirmed on the exact Jaccard similarity of its shingle sets, so the LSH's false positives never
    reach the report. Memory: one uint32 array of shingle hashes per distinct text.
    """
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=NEAR_THRESHOLD, num_perm=NUM_PERM)
    shingles: dict[int, np.ndarray] = {}
    pairs = []
    chunk = 2000
    for start in range(0, len(keys), chunk):
        batch = keys[start : start + chunk]
        sets = [_shingles(norms[k]) for k in batch]
        # The shingles are hashed already: datasketch takes them as they are instead of SHA-1 of bytes.
        hashes = MinHash.bulk([s.tolist() for s in sets], num_perm=NUM_PERM, hashfunc=_identity)
        for k, s, h in zip(batch, sets, hashes, strict=True):
            for other in lsh.query(h):
                similarity = _jaccard(s, shingles[other])
                if similarity >= NEAR_THRESHOLD:
                    pairs.append((other, k, similarity))
            lsh.insert(k, h)
            shingles[k] = s
        tick(len(batch))
    return pairs


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def duplicates_and_leaks(rows: Rows, near: bool = True, tick: Tick = lambda _n: None) -> dict[str, Any]:
    """Exact and near duplicates within each split, conflicting labels among them, and leaks across splits.

    Exact means equal after `normalize` (so "Refund me!" and "refund me" are exact duplicates). A group
    of duplicates that spans splits is a leak: the model is scored on texts it trained on.
    """
    norms = [normalize(t) for t in rows.texts]
    by_norm: dict[str, list[int]] = defaultdict(list)
    for i, norm in enumerate(norms):
        if norm:
            by_norm[norm].append(i)
    exact_groups = [members for members in by_norm.values() if len(members) > 1]

    near_groups: list[list[int]] = []
    similarity: dict[int, float] = {}
    if near:
        firsts = [members[0] for members in by_norm.values()]
        pairs = _near_pairs(norms, firsts, tick)
        uf = _UnionFind()
        for a, b, sim in pairs:
            uf.union(a, b)
            similarity[a] = max(similarity.get(a, 0), sim)
            similarity[b] = max(similarity.get(b, 0), sim)
        components: dict[int, list[int]] = defaultdict(list)
        for first in uf.parent:
            components[uf.find(first)].append(first)
        for heads in components.values():  # expand each distinct text back to all its rows
            near_groups.append(sorted(i for head in heads for i in by_norm[norms[head]]))
    else:
        tick(len(rows))

    def describe(members: list[int]) -> dict[str, Any]:
        labels = sorted({"/".join(rows.labels[i]) for i in members if rows.labels[i] is not None})
        return {"size": len(members), "labels": labels, "splits": sorted({rows.split[i] for i in members}),
                "rows": [rows.where(i) for i in members[:10]]}  # fmt: skip

    def conflicting(members: list[int]) -> bool:
        return len({rows.labels[i] for i in members if rows.labels[i] is not None}) > 1

    def leaking(members: list[int]) -> bool:
        return len({rows.split[i] for i in members}) > 1

    def repeats(members: list[int]) -> list[int]:
        """Members after the first of their split: what de-duplicating a split drops."""
        seen: set[str] = set()
        extra = [i for i in members if rows.split[i] in seen or seen.add(rows.split[i])]  # type: ignore[func-returns-value]
        return extra

    exact_leaks = [g for g in exact_groups if leaking(g)]
    exact_groups = [g for g in exact_groups if repeats(g)]  # duplicates within a split; across splits is a leak
    exact_extra = sum(len(repeats(g)) for g in exact_groups)
    exact_conflicts = [g for g in exact_groups if conflicting(g)]
    near_conflicts = [g for g in near_groups if conflicting(g)]
    near_leaks = [g for g in near_groups if leaking(g)]
    leak_pairs: Counter[str] = Counter()
    for g in exact_leaks + near_leaks:
        splits = sorted({rows.split[i] for i in g})
        for a in range(len(splits)):
            for b in range(a + 1, len(splits)):
                leak_pairs[f"{splits[a]}-{splits[b]}"] += 1
    # Rows whose removal from training ends each leak: the training members of every leaking group.
    leak_rows = sorted({i for g in exact_leaks + near_leaks for i in g if rows.split[i] == "train"})
    # One row of each exact group is kept; the rest are droppable repeats (conflicts are handled apart).
    repeat_rows = sorted(i for g in exact_groups if not conflicting(g) for i in repeats(g))
    conflict_rows = sorted(i for g in exact_conflicts for i in g)

    findings = []
    if exact_groups:
        findings.append(f"{exact_extra} row(s) repeat another row's text ({len(exact_groups)} groups of exact "
                        "duplicates after normalising case, punctuation and spacing).")  # fmt: skip
    if exact_conflicts:
        findings.append(f"{len(exact_conflicts)} group(s) of identical texts carry different labels: the model is "
                        "taught both answers. Decide on one label each (--fix drop-conflicts drops them).")  # fmt: skip
    if near_groups:
        findings.append(f"{sum(len(g) for g in near_groups)} row(s) in {len(near_groups)} group(s) are near-"
                        f"duplicates (character 5-gram Jaccard >= {NEAR_THRESHOLD}).")  # fmt: skip
    if near_conflicts:
        findings.append(f"{len(near_conflicts)} near-duplicate group(s) carry different labels: check whether the "
                        "small difference really changes the label.")  # fmt: skip
    if exact_leaks or near_leaks:
        findings.append(f"{len(exact_leaks)} exact and {len(near_leaks)} near-duplicate group(s) span splits "
                        f"({dict(leak_pairs)}): test scores are inflated by texts seen in training. "
                        "--fix drop-leaks drops their training rows.")  # fmt: skip

    def top(groups: list[list[int]]) -> list[dict[str, Any]]:
        return [describe(g) for g in sorted(groups, key=len, reverse=True)[:EXAMPLES]]

    return {
        "findings": findings,
        "exact": {"groups": len(exact_groups), "extra_rows": exact_extra, "examples": top(exact_groups)},
        "exact_conflicts": {"groups": len(exact_conflicts), "examples": top(exact_conflicts)},
        "near": {"groups": len(near_groups), "rows": sum(len(g) for g in near_groups), "threshold": NEAR_THRESHOLD,
                 "checked": near, "examples": top(near_groups)},
        "near_conflicts": {"groups": len(near_conflicts), "examples": top(near_conflicts)},
        "leaks": {"exact_groups": len(exact_leaks), "near_groups": len(near_leaks), "by_splits": dict(leak_pairs),
                  "train_rows": len(leak_rows), "examples": top(exact_leaks + near_leaks)},
        "_fix_rows": {"dedupe": repeat_rows, "drop-conflicts": conflict_rows, "drop-leaks": leak_rows},
    }


# -- class balance --------------------------------------------------------------------------------------


def balance(rows: Rows) -> dict[str, Any]:
    """Examples per class in training; classes too small to stratify or to learn; the imbalance ratio."""
    counts: Counter[str] = Counter()
    for labels, split in zip(rows.labels, rows.split, strict=True):
        if split == "train" and labels:
            counts.update(labels)
    if not counts:
        return {"findings": [], "counts": {}}
    largest, smallest = max(counts.values()), min(counts.values())
    cannot_stratify = sorted(c for c, n in counts.items() if n < MIN_PER_CLASS_TO_STRATIFY)
    too_few = sorted(c for c, n in counts.items() if n < TOO_FEW_TO_LEARN)
    findings = []
    if smallest * 10 <= largest:
        rare = min(counts, key=lambda k: counts[k])
        findings.append(f"Classes are imbalanced {largest / smallest:.0f}:1 ({rare!r} has {smallest} examples, the "
                        f"largest class {largest}). Consider --class-weights, or more examples of the rare "
                        "classes.")  # fmt: skip
    if cannot_stratify:
        findings.append(f"{len(cannot_stratify)} class(es) have fewer than {MIN_PER_CLASS_TO_STRATIFY} examples and "
                        f"cannot be split into train/validation/test: {cannot_stratify[:8]}.")  # fmt: skip
    if too_few:
        findings.append(f"{len(too_few)} class(es) have fewer than {TOO_FEW_TO_LEARN} examples, too few to learn "
                        f"reliably: {too_few[:8]}. Label more, or try --method fewshot.")  # fmt: skip
    return {
        "findings": findings,
        "counts": dict(counts.most_common()),
        "classes": len(counts),
        "imbalance_ratio": largest / smallest,
        "cannot_stratify": cannot_stratify,
        "too_few_to_learn": too_few,
    }


# -- lengths --------------------------------------------------------------------------------------------


def lengths(rows: Rows, tokenizer: Any, max_length: int, tick: Tick = lambda _n: None) -> dict[str, Any]:
    """Token counts with the model's tokenizer, and how many texts `max_length` truncates."""
    counts: list[int] = []
    special = tokenizer.num_special_tokens_to_add()
    chunk = 5000
    for start in range(0, len(rows), chunk):
        ids = tokenizer(rows.texts[start : start + chunk], add_special_tokens=False)["input_ids"]
        counts.extend(len(x) + special for x in ids)
        tick(min(chunk, len(rows) - start))
    array = np.asarray(counts)
    over = np.flatnonzero(array > max_length)
    findings = []
    if over.size:
        findings.append(f"{over.size} text(s) ({over.size / max(1, len(rows)):.1%}) are longer than {max_length} "
                        f"tokens and will be truncated (longest {array.max()}).")  # fmt: skip
    pct = {f"p{p}": int(np.percentile(array, p)) for p in (50, 90, 99)} if array.size else {}
    longest = over[np.argsort(-array[over])][:EXAMPLES]
    return {
        "findings": findings,
        "max_length": max_length,
        "truncated": int(over.size),
        "tokens": {"min": int(array.min(initial=0)), "max": int(array.max(initial=0)),
                   "mean": float(array.mean()) if array.size else 0.0, **pct},
        "examples": [{**rows.where(int(i)), "tokens": int(array[i])} for i in longest],
        "_counts": counts,
    }


# -- junk rows ------------------------------------------------------------------------------------------

_URL = re.compile(r"^\s*(?:https?://|www\.)\S+\s*$", re.IGNORECASE)
_MARKUP = re.compile(r"<[a-zA-Z/][^>]{0,200}>")
_REPEAT = re.compile(r"(.)\1{9,}")


def junk_kind(text: str) -> str | None:
    """Why a text is not usable as natural text, or None."""
    stripped = text.strip()
    if not stripped:
        return "empty"
    if _URL.match(stripped):
        return "url_only"
    visible = [c for c in stripped if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    if letters / len(visible) < 0.3:
        return "mostly_non_text"
    markup = sum(len(m) for m in _MARKUP.findall(stripped))
    if markup > 0.3 * len(stripped):
        return "markup"
    if _REPEAT.search(stripped) and len(set(stripped)) < 5:
        return "repeated_characters"
    return None


JUNK_DESCRIPTIONS = {
    "empty": "empty or whitespace-only",
    "url_only": "only a URL",
    "mostly_non_text": "under 30% letters (numbers, symbols, codes)",
    "markup": "mostly HTML/XML markup",
    "repeated_characters": "one character repeated",
}


def junk(rows: Rows) -> dict[str, Any]:
    """Empty, markup-only, URL-only, symbol-only or keyboard-mash rows."""
    found: dict[str, list[int]] = defaultdict(list)
    for i, text in enumerate(rows.texts):
        kind = junk_kind(text)
        if kind:
            found[kind].append(i)
    findings = [f"{len(v)} row(s) are {JUNK_DESCRIPTIONS[k]}." for k, v in found.items()]
    return {
        "findings": findings,
        "counts": {k: len(v) for k, v in found.items()},
        "examples": [{**rows.where(i), "kind": k} for k, v in found.items() for i in v[:EXAMPLES]],
        "_fix_rows": {"drop-junk": sorted(i for v in found.values() for i in v)},
    }


# -- languages ------------------------------------------------------------------------------------------

LANGUAGE_MIN_CHARS = 25  # shorter texts are identified too unreliably to count
LANGUAGE_MIN_CONFIDENCE = 0.99


def languages(rows: Rows, tick: Tick = lambda _n: None) -> dict[str, Any]:
    """Language of each long-enough text (py3langid); rows in other languages than the main one."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    detected: dict[int, str] = {}
    for i, text in enumerate(rows.texts):
        if sum(c.isalpha() for c in text) >= LANGUAGE_MIN_CHARS:
            language, confidence = identifier.classify(text)
            if confidence >= LANGUAGE_MIN_CONFIDENCE:
                detected[i] = language
        if i % 1000 == 999:
            tick(1000)
    tick(len(rows) % 1000)
    counts = Counter(detected.values())
    if not counts:
        return {"findings": [], "counts": {}, "identified": 0}
    main, _ = counts.most_common(1)[0]
    others = [i for i, lang in detected.items() if lang != main]
    findings = []
    if others:
        share = len(others) / len(detected)
        findings.append(f"{len(others)} text(s) ({share:.1%} of those identified) are not in the main language "
                        f"{main!r}: {dict(Counter(detected[i] for i in others).most_common(5))}. A model for "
                        f"{main!r} may read them poorly; translate, drop or use a multilingual model (--model "
                        "embedded:multilingual-e5-small).")  # fmt: skip
    return {
        "findings": findings,
        "main": main,
        "counts": dict(counts.most_common()),
        "identified": len(detected),
        "examples": [{**rows.where(i), "language": detected[i]} for i in others[:EXAMPLES]],
    }


def label_names(rows: Rows) -> list[str]:
    return sorted({name for labels in rows.labels if labels for name in labels})


def indices_of(rows: Rows, split: str) -> Sequence[int]:
    return [i for i, s in enumerate(rows.split) if s == split]
