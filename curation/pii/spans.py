"""Character spans of a document: regions snapped to whole words."""

from __future__ import annotations


def snap_to_words(text: str, start: int, end: int) -> tuple[int, int]:
    """[start, end) widened to whitespace on both sides, so a region never cuts a word (patterns
    anchor on word boundaries; NER needs whole tokens)."""
    start, end = max(0, start), min(len(text), end)
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while end < len(text) and not text[end].isspace():
        end += 1
    return start, end
