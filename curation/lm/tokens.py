"""The token unit of the perplexity models: one function for training and scoring alike.

A KenLM model only means something for text tokenised exactly as its training text was, so
`train_lm` and the perplexity stage both call `tokenize_lines` with the kind recorded next to
the model. The prose normalisation follows cc_net's `text_normalizer.normalize`: lower-case,
strip accents, every digit -> 0, unicode punctuation -> ASCII, control characters -> space
(cc_net deletes them, which glues tab-separated words). cc_net then
applies SentencePiece; we split words from punctuation instead, which needs no trained model.
Code keeps its case (identifiers differ by case) and accents, but digits and punctuation are
treated the same way, so `foo(x+1)` is `foo ( x + 0 )`.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections.abc import Iterator
from typing import Literal

TokenizerKind = Literal["prose", "code"]
TOKENIZER_KINDS: tuple[TokenizerKind, ...] = ("prose", "code")

# cc_net's table of unicode punctuation and its ASCII stand-ins.
_UNICODE_PUNCT = {
    "，": ",", "。": ".", "、": ",", "„": '"', "”": '"', "“": '"', "«": '"', "»": '"',
    "１": '"', "」": '"', "「": '"', "《": '"', "》": '"', "´": "'", "∶": ":", "：": ":",
    "？": "?", "！": "!", "（": "(", "）": ")", "；": ";", "–": "-", "—": " - ", "．": ". ",
    "～": "~", "’": "'", "…": "...", "━": "-", "〈": "<", "〉": ">", "【": "[", "】": "]",
    "％": "%", "►": "-",
}
_UNICODE_PUNCT_RE = re.compile("[" + "".join(_UNICODE_PUNCT) + "]")
# Control characters (C0 but the newline, DEL, C1) become spaces: a tab separates words.
_NON_PRINTING_RE = re.compile("[" + "".join(map(chr, [*range(0, 10), *range(11, 32), *range(127, 160)])) + "]")
_DIGIT_RE = re.compile(r"\d")
# A token is a run of word characters or one other non-space character.
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


@functools.cache
def _nonspacing_marks() -> re.Pattern:
    """Every code point of category Mn (combining accents), as one character class.

    NOTE: built once per process (~0.2 s) so that stripping accents is one C-level `sub`
    instead of a Python loop over each character.
    """
    ranges, start = [], None
    for cp in range(sys.maxunicode + 2):
        is_mn = cp <= sys.maxunicode and unicodedata.category(chr(cp)) == "Mn"
        if is_mn and start is None:
            start = cp
        elif not is_mn and start is not None:
            ranges.append(f"{re.escape(chr(start))}-{re.escape(chr(cp - 1))}")
            start = None
    return re.compile("[" + "".join(ranges) + "]")


def _strip_accents(text: str) -> str:
    """Decompose (NFD) and drop the combining marks, as cc_net; a no-op when nothing decomposes.

    (Text that arrives already decomposed keeps its marks: rare, and tokenised the same way in
    training and scoring, so the models stay consistent.)
    """
    nfd = unicodedata.normalize("NFD", text)
    return text if nfd == text else _nonspacing_marks().sub("", nfd)


def normalize_text(text: str, kind: TokenizerKind = "prose") -> str:
    """cc_net's normalisation (prose), or its case- and accent-keeping variant (code).

    Works on a whole document at once (newlines are kept): one pass of each step per document
    instead of per line is most of the tokenizer's speed.
    """
    if kind == "prose":
        text = text.lower()
    if not text.isascii():  # the punctuation table and accents are all non-ASCII
        if kind == "prose":
            text = _strip_accents(text)
        text = _UNICODE_PUNCT_RE.sub(lambda m: _UNICODE_PUNCT[m.group()], text)
    text = _DIGIT_RE.sub("0", text)
    return _NON_PRINTING_RE.sub(" ", text)


def tokenize_line(line: str, kind: TokenizerKind = "prose") -> list[str]:
    """Tokens of one line, as the language model sees them (never `<s>`, `</s>` or spaces)."""
    return _TOKEN_RE.findall(normalize_text(line, kind))


def tokenize_lines(text: str, kind: TokenizerKind = "prose") -> Iterator[list[str]]:
    """Token lists of the non-blank lines of `text` (a line is cc_net's sentence unit).

    Same tokens as `tokenize_line` on each line: normalisation never adds or removes a newline.
    """
    for line in normalize_text(text, kind).split("\n"):
        tokens = _TOKEN_RE.findall(line)
        if tokens:
            yield tokens


def default_kind(domain: str) -> TokenizerKind:
    """Tokenizer for a domain when a model carries no record of its own (e.g. built by lmplz)."""
    return "code" if domain == "code" else "prose"
