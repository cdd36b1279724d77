"""Where to run NER: name candidates, and the windows of text around them.

spaCy's NER costs ~20 microseconds a token here (~50 KB/s a core), 20x the rest of the PII
stage, and nearly all text holds no name. So NER runs only on short windows around *name
candidates*, and only entities that contain a candidate are kept:

- A candidate is a word written with a capital (`Werner`, `Okafor`, `JOHN`) whose capitalised
  form is how the word is usually written: P(Title) / (P(Title) + P(lower)) >= `threshold`,
  from spaCy's English word-frequency table (`spacy-lookups-data`, case-sensitive log
  probabilities of 1M word forms), or a word the table does not know. "John" is 0.95, "Smith"
  0.88, "Boston" 0.93; "The" 0.09, "License" 0.03, "However" < 0.01: sentence-initial and
  title-cased common words are not candidates, which is what a capitalisation test alone
  cannot tell. At the start of a sentence or line every word is capitalised, and words that
  usually open sentences ("However" 0.58, "Please" 0.51) score high: there the bar is
  `start_threshold` (0.8; "Marcus" 0.96, "Werner" 0.96).
- In a document written without case (all lower or all upper case), every word whose
  capitalised form passes the same test is a candidate, and the window is *truecased* for NER:
  the text spaCy sees has the candidates capitalised and the rest lower-cased, same length,
  so offsets map back one to one. spaCy finds few names in lower-cased text; truecased, it
  finds them as in normal text.
- A window is the candidate plus `margin` characters on each side, snapped to whitespace; the
  ner component's receptive field is ~4 tokens each side (tok2vec depth 4, window 1), so on
  real text windowed NER reproduces whole-document NER on ~99% of the entities that contain a
  candidate (benchmarks/pii.py measures it).
- One document, one answer per word (document-level label consistency, a standard NER
  device): NER reads the first `probes` occurrences of each candidate word; if it tagged them
  all, the word's later occurrences are that entity without another look, and if it tagged
  none, they are skipped; only words with mixed answers are read again. A name NER missed in
  one sentence is caught where it found it elsewhere, and "Python" in a manual costs two
  windows, not two hundred.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
from dataclasses import dataclass
from pathlib import Path

import regex

from curation.pii.spans import snap_to_words

# A word that starts with a capital letter: letters, marks and inner apostrophes or hyphens.
_CAPITALISED = regex.compile(r"(?<![\p{L}\p{M}\p{N}_])\p{Lu}[\p{L}\p{M}]*(?:['’\-][\p{L}\p{M}]+)*")
_PARTS = regex.compile(r"['’\- ]")
_CAMEL = regex.compile(r"(?<=\p{Ll})(?=\p{Lu})")
_WORD = regex.compile(r"(?<![\p{L}\p{M}\p{N}_])\p{L}[\p{L}\p{M}]*(?:['’\-][\p{L}\p{M}]+)*")
# A document is caseless when under 1% or over 90% of its cased letters are capitals.
_CASELESS_LOW, _CASELESS_HIGH = 0.01, 0.90
_MIN_CASED_LETTERS = 40
_CASE_SAMPLE_CHARS = 20_000  # the head of a long document tells how it is written
_UPPER, _LOWER = regex.compile(r"\p{Lu}"), regex.compile(r"\p{Ll}")
_MAX_ANSWERS = 1 << 17  # cached candidate answers (word, sentence start, caseless): ~25 MB at most


@functools.cache
def word_log_probs() -> dict[str, float]:
    """{form: log probability} of spaCy's English table: 1M case-sensitive word forms.

    Loaded once per process (~0.6 s, ~100 MB). NOTE: ratios are computed per word asked
    (`NameCandidates.title_ratio`), not for the table's 230k Title-case forms up front: that and a
    set of its lower-case forms cost another ~0.6 s of every PII actor's start, for the few
    thousand distinct words a run asks about (answers are cached per word).
    """
    import spacy_lookups_data  # spaCy's lookup tables (~1 s): loaded by the first name check

    path = Path(spacy_lookups_data.__file__).parent / "data" / "en_lexeme_prob.json.gz"
    with gzip.open(path, "rb") as f:
        return _json_loads(f.read())


def _json_loads(data: bytes):
    try:
        import orjson  # ~3x faster than json on the 1M-entry table
    except ImportError:
        return json.loads(data)
    return orjson.loads(data)


@dataclass(frozen=True)
class Window:
    start: int  # in the document
    end: int
    text: str  # what NER reads: the document's text, truecased when the document is caseless
    candidates: tuple[tuple[int, int], ...]  # candidate spans, relative to `start`


class NameCandidates:
    """Finds candidates and builds NER windows (see the module docstring)."""

    def __init__(self, threshold: float = 0.5, start_threshold: float = 0.8, margin: int = 16, probes: int = 2):
        self.threshold = threshold
        self.start_threshold = max(threshold, start_threshold)
        self.margin = margin
        self.probes = probes
        self.logp = word_log_probs()
        self._answers: dict[tuple[str, bool, bool], bool] = {}

    def title_ratio(self, title: str) -> float | None:
        """P(Title) / (P(Title) + P(lower)) of a Title-case form in the table ("John" 0.95), else None."""
        p = self.logp.get(title)
        if p is None or not (len(title) > 1 and title[0].isupper() and title[1:].islower()):
            return None
        return 1.0 / (1.0 + math.exp(self.logp.get(title.lower(), -1e9) - p))

    def usually_capitalised(self, word: str, sentence_start: bool = False) -> bool:
        title = word[:1].upper() + word[1:].lower()
        r = self.title_ratio(title)
        if r is None:
            # Unknown as a capitalised form: a candidate unless it is a known lower-case word.
            lower = title.lower()
            return not (lower.islower() and lower in self.logp)
        return r >= (self.start_threshold if sentence_start else self.threshold)

    def is_candidate(self, word: str, sentence_start: bool, caseless: bool) -> bool:
        # NOTE: a document repeats its words; the answer depends on these three alone.
        key = (word, sentence_start, caseless)
        known = self._answers.get(key)
        if known is None:
            if len(self._answers) >= _MAX_ANSWERS:
                self._answers.clear()
            known = self._answers[key] = self._is_candidate(word, sentence_start, caseless)
        return known

    def _is_candidate(self, word: str, sentence_start: bool, caseless: bool) -> bool:
        # Parts: "Jean-Luc", "O'Brien", and camel case ("McDonald": Mc + Donald; "ValueError":
        # Value + Error, an identifier, not a name).
        parts = [p for p in _PARTS.split(_CAMEL.sub(" ", word)) if len(p) > 1]
        if not caseless and word.isupper():
            # Capitals in a cased document: a form's heading, or shouting ("NONINFRINGEMENT",
            # "HOWEVER" in a licence). Only known names pass, at the sentence-start bar.
            return any(self.title_ratio(p.capitalize()) is not None and self.usually_capitalised(p, True)
                       for p in parts)
        return any(self.usually_capitalised(p, sentence_start) for p in parts)

    def candidates(self, text: str) -> tuple[list[tuple[int, int]], bool]:
        """(candidate spans, whether the document is caseless)."""
        caseless = is_caseless(text)
        pattern = _WORD if caseless else _CAPITALISED
        spans = []
        for m in pattern.finditer(text):
            word = m.group()
            if len(word) > 1 and not _in_code(text, *m.span()) and self.is_candidate(
                    word, not caseless and _opens_sentence(text, m.start()), caseless):
                spans.append(m.span())
        return spans, caseless

    def windows(self, text: str, around: list[tuple[int, int]] | None = None,
                candidates: list[tuple[int, int]] | None = None, caseless: bool | None = None) -> list[Window]:
        """NER windows around the spans `around` (default: every candidate), each listing the
        candidates (default: all of the text's) that fall inside it."""
        if candidates is None or caseless is None:
            candidates, caseless = self.candidates(text)
        around = candidates if around is None else around
        merged: list[list[int]] = []  # [start, end]
        for s, e in around:
            a, b = snap_to_words(text, s - self.margin, e + self.margin)
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(b, merged[-1][1])
            else:
                merged.append([a, b])
        out, k = [], 0
        for a, b in merged:
            while k < len(candidates) and candidates[k][0] < a:
                k += 1
            inside = []
            while k < len(candidates) and candidates[k][1] <= b:
                inside.append((candidates[k][0] - a, candidates[k][1] - a))
                k += 1
            view = truecase(text[a:b], inside) if caseless else text[a:b]
            out.append(Window(a, b, view, tuple(inside)))
        return out


def _in_code(text: str, start: int, end: int) -> bool:
    """An identifier, not a word of prose: `Matrix`, Matrix(...), sympy.Matrix, Matrix.eye."""
    before = text[start - 1] if start else " "
    after = text[end:end + 2] or " "  # ("" is `in` every string: a word ending the text is prose)
    return before in "`._/" or after[:1] in "`([_" or (after[:1] == "." and after[1:2].isalnum())


def _opens_sentence(text: str, i: int) -> bool:
    """Whether the word at i starts the text, a line or a sentence (after . ! ? : and quotes)."""
    j = i - 1
    while j >= 0 and text[j] in " \t\"'“‘([":
        j -= 1
    return j < 0 or text[j] in "\n.!?:;•*-–—#>|"


def is_caseless(text: str) -> bool:
    head = text[:_CASE_SAMPLE_CHARS]
    upper, cased = _cased_letters(head)
    if cased < _MIN_CASED_LETTERS:
        return False
    share = upper / cased
    return share < _CASELESS_LOW or share > _CASELESS_HIGH


_ASCII_UPPER, _ASCII_LOWER = bytes(range(65, 91)), bytes(range(97, 123))


def _cased_letters(text: str) -> tuple[int, int]:
    """(capitals, cased letters) in `text`.

    NOTE: two Unicode regex scans cost ~0.3 ms per document, a tenth of finding candidates; on
    ASCII text (most documents) `bytes.translate` counts the same letters ~20x faster."""
    if text.isascii():
        data = text.encode("ascii")
        upper = len(data) - len(data.translate(None, _ASCII_UPPER))
        return upper, upper + len(data) - len(data.translate(None, _ASCII_LOWER))
    upper = len(_UPPER.findall(text))
    return upper, upper + len(_LOWER.findall(text))


def truecase(text: str, candidates: list[tuple[int, int]]) -> str:
    """`text` lower-cased with each candidate capitalised, or unchanged if that would change
    its length (a few characters change length with case: offsets must map one to one)."""
    out = text.lower()
    for s, e in candidates:
        word = out[s:e]
        out = out[:s] + word[:1].upper() + word[1:] + out[e:]
    return out if len(out) == len(text) else text
