"""A rule-based sentence splitter that returns character spans, so text can be cut exactly.

    split_sentences("Dr. Smith paid $3.50 for it, e.g. at the U.S. office. It rained.\\n")
    -> [(0, 55), (56, 67)]

Rules, in order:
- Lines are units first: a blank line always ends a sentence, and a line that looks like code
  is one sentence as it stands: indented by 4+ spaces or a tab; ending in `{`, `}` or `;`;
  starting with a comment/preprocessor/decorator marker, closing brackets, an import or an
  assignment; or starting with a keyword (`def`, `if`, `return`, ...) and ending in `:`, `(`,
  `)` or `=`. A line ending in `.`, `!` or `?` is prose.
- Inside a prose line, a sentence ends after `.`, `!`, `?` or `…` (with any closing quotes
  or brackets) followed by whitespace, unless the word before the period is a known
  abbreviation (e.g., i.e., Dr., Mr., St., etc., vs., Fig., No., Jan., Inc., ...), an initial
  ("J. Smith"), or a dotted acronym (U.S., U.K., a.m.), or the next word starts in lowercase
  or with a digit (then it was not an end: "approx. 5 km", "etc. and").
- Decimals ("3.14"), versions ("2.0.1"), URLs and e-mail addresses have no whitespace after
  their periods, so they never split.
- CJK: 。！？ (and full-width ．) end a sentence with no whitespace needed.
Spans exclude surrounding whitespace; lines inside a paragraph each end a sentence (web text
is mostly one paragraph per line; hard-wrapped prose then yields line fragments, which is still
deterministic and harmless for deduplication).
"""

from __future__ import annotations

import re

ABBREVIATIONS = frozenset("""
a.m p.m e.g i.e etc vs cf al approx ca esp incl viz resp
mr mrs ms dr prof sr jr st mt ft rev gen col lt sgt capt hon gov pres sen rep
inc ltd co corp llc dept univ assn bros est
no nos vol vols pp p fig figs eq eqs ch sec art ed eds ref refs tel ext
jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri sat sun
""".split())

# Anchored at the line's start (after indentation), so a long prose line costs one short match.
_CODE_START = re.compile(r"""(?:\#|//|/\*|\*\s|<!--|@\w          # comment, preprocessor, decorator
                               |[})\]]+[;,]?$                       # closing brackets
                               |(?:import|from)\s+[\w.]+(?:\s+import\s+.+)?$   # Python imports
                               |[\w.\[\]]+\s*(?:=|\+=|-=|:=)\s*\S)   # assignment
                          """, re.VERBOSE)
_CODE_KEYWORD = re.compile(r"""(?:def|class|return|if|elif|else|for|while|try|except|finally|with|
                                 function|var|let|const|public|private|static|void|int|package|func|fn|
                                 \#include|SELECT|INSERT|UPDATE)\b""", re.VERBOSE)
_END = re.compile(r"""([.!?…]+)(["'”’)\]»]*)(\s+)""")
_CJK_END = re.compile(r"""[。！？．]+["'”’」』）)]*""")
_DOTTED = re.compile(r"(?:[a-z]\.)+[a-z]")


def is_code_line(line: str) -> bool:
    stripped = line.strip()
    if not stripped or stripped[-1] in ".!?":
        return False
    if line.startswith(("    ", "\t")) or stripped[-1] in "{};":
        return True
    if _CODE_START.match(stripped):
        return True
    return stripped[-1] in ":()=" and bool(_CODE_KEYWORD.match(stripped))  # "if x:", "def f("


def _word_before(line: str, start: int, end: int) -> str:
    """The whitespace-delimited word ending at `end` (not before `start`)."""
    i = end
    while i > start and not line[i - 1].isspace():
        i -= 1
    return line[i:end]


def _is_abbreviation(word: str) -> bool:
    word = word.lstrip("(\"'“‘[")
    bare = word.rstrip(".").lower()
    if bare in ABBREVIATIONS:
        return True
    if len(bare) == 1 and bare.isalpha():  # an initial: "J. Smith"
        return True
    return bool(_DOTTED.fullmatch(bare))  # dotted acronym: u.s, u.k, e.g


def _split_prose(line: str, base: int, out: list[tuple[int, int]]) -> None:
    start = 0
    for m in _END.finditer(line):
        end = m.end(2)
        nxt = line[m.end():m.end() + 1]
        if m.group(1) == "." and (not nxt or nxt.islower() or nxt.isdigit()
                                  or _is_abbreviation(_word_before(line, start, m.start(1)))):
            continue
        if m.group(1) != "." and nxt and nxt.islower():  # "?" mid-sentence in quotes: "what?" she said
            continue
        _emit(line, start, end, base, out)
        start = m.end()
    _emit(line, start, len(line), base, out)


def _emit(text: str, start: int, end: int, base: int, out: list[tuple[int, int]]) -> None:
    """Append text[start:end] without surrounding whitespace, split after CJK enders."""
    piece = text[start:end]
    pos = 0
    for m in _CJK_END.finditer(piece):
        _append_stripped(piece, pos, m.end(), start + base, out)
        pos = m.end()
    _append_stripped(piece, pos, len(piece), start + base, out)


def _append_stripped(text: str, start: int, end: int, base: int, out: list[tuple[int, int]]) -> None:
    seg = text[start:end]
    lead = len(seg) - len(seg.lstrip())
    trail = len(seg.rstrip())
    if trail > lead:
        out.append((base + start + lead, base + start + trail))


def split_sentences(text: str) -> list[tuple[int, int]]:
    """[start, end) character spans of the sentences of `text`, in order."""
    out: list[tuple[int, int]] = []
    pos = 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        if body.strip():
            if is_code_line(body):
                _append_stripped(body, 0, len(body), pos, out)
            else:
                _split_prose(body, pos, out)
        pos += len(line)
    return out
