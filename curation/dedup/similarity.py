"""Word n-gram Jaccard similarity: the ground truth MinHash estimates.

Words are runs of `\w` characters, lower-cased, close to the MinHash stage's normalisation
(`curation.dedup.shingles.normalize`: letters, digits and marks; punctuation separates). One
definition for the dedup evaluation, the demo corpus's truth and the ablation's leakage check.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+")


def normalise_line(line: str) -> str:
    """A line (or text) as the ablation's novel measure and the demo's held-out check compare it:
    whitespace runs as one space, stripped, casefolded."""
    return " ".join(line.split()).casefold()


def words(text: str) -> list[str]:
    """The lower-cased words of `text`."""
    return _WORD.findall(text.lower())


def word_ngrams(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """The set of lower-cased word n-grams of `text` (one shorter tuple for a text under n words)."""
    w = words(text)
    return {tuple(w[i:i + n]) for i in range(max(len(w) - n + 1, 1))} if w else set()


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|; two empty sets are identical (1.0)."""
    return len(a & b) / len(a | b) if a or b else 1.0


def text_jaccard(a: str, b: str, n: int = 5) -> float:
    """Jaccard similarity of the word n-gram sets of two texts."""
    return jaccard(word_ngrams(a, n), word_ngrams(b, n))
