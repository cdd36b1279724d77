"""Scoring PII detections against gold spans, in the terms redaction cares about.

Light imports only (no Presidio, no spaCy): the benchmark, the tests and a notebook can score
predictions from any engine. Spans are `[start, end)` code-point offsets into a Python str.

What counts, and why:
- recall: a gold entity is *found* when the union of predicted spans of ANY type covers at least
  `COVERAGE` (80%) of its non-whitespace characters. Redaction is what matters: a phone number
  replaced as `<CREDIT_CARD>` has still left the text, and "+1 415 555 0132" redacted without
  its "+1" has lost nothing a reader could use. `recall_strict` asks the same of predictions of
  the gold entity's own type (the type does matter for the placeholder and the counts).
- precision: a predicted span is correct when it overlaps any gold span. A prediction that
  overlaps no gold span but touches an *ignore region* is not counted either way: ignore regions
  mark text whose PII status the evaluation set cannot vouch for (the real text around the demo
  corpus's planted sentences, a company name, a street line). A prediction nested inside another
  is not counted: the anonymizer drops it, so it is never redacted on its own.
- words kept: of the whitespace-separated words that overlap no gold span and no ignore region,
  the fraction that no predicted span (nested ones included) touches. This is the cost of
  over-redaction in tokens of training text, which precision hides when one span eats a line.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from curation.pii import OUR_TYPE

COVERAGE = 0.8
_WORD = re.compile(r"\S+")
ALL = "ALL"  # the row that pools every type


class Span(NamedTuple):
    """One entity: our type name (`curation.pii.ENTITIES`), offsets, optional free-form detail."""

    type: str
    start: int
    end: int
    detail: str = ""


def as_span(item: Any) -> Span:
    """A `Span` from a Span/tuple, a dict with type/start/end, or an object with those attributes
    (the engine's `Found`)."""
    if isinstance(item, Span):
        return item
    if isinstance(item, Mapping):
        return Span(item["type"], int(item["start"]), int(item["end"]), item.get("detail", "") or "")
    if isinstance(item, tuple):
        return Span(*item)
    return Span(item.type, int(item.start), int(item.end))


def from_presidio(results: Iterable[Any]) -> list[Span]:
    """Presidio `RecognizerResult`s -> `Span`s in our type names; types we do not redact are dropped."""
    return [Span(OUR_TYPE[r.entity_type], int(r.start), int(r.end)) for r in results if r.entity_type in OUR_TYPE]


def _overlaps(a0: int, a1: int, b0: int, b1: int) -> bool:
    return a0 < b1 and b0 < a1


def _coverage(text: str, start: int, end: int, spans: Sequence[tuple[int, int]]) -> float:
    """Fraction of the non-whitespace characters of text[start:end] inside some span."""
    positions = [i for i in range(start, end) if not text[i].isspace()]
    if not positions:
        return 1.0 if any(_overlaps(start, end, s, e) for s, e in spans) else 0.0
    covered = sum(1 for i in positions if any(s <= i < e for s, e in spans))
    return covered / len(positions)


def _counted_predictions(preds: Sequence[Span]) -> list[Span]:
    """Predictions not nested in another (ties on equal spans: the first one stays)."""
    out = []
    for i, p in enumerate(preds):
        nested = any(
            j != i and q.start <= p.start and p.end <= q.end
            and ((q.end - q.start) > (p.end - p.start) or j < i)
            for j, q in enumerate(preds))
        if not nested:
            out.append(p)
    return out


@dataclass
class EntityOutcome:
    """One gold entity and whether redaction got it."""

    gold: Span
    coverage: float  # by predictions of any type
    found: bool
    found_strict: bool  # by predictions of the gold type


@dataclass
class DocResult:
    entities: list[EntityOutcome]
    false_positives: list[Span]  # counted predictions overlapping no gold span and no ignore region
    correct: list[Span]  # counted predictions overlapping a gold span
    ignored: list[Span]  # counted predictions in ignore regions only
    other_words: int  # words outside gold spans and ignore regions
    other_words_lost: list[tuple[int, int, tuple[str, ...]]]  # (start, end, types of the predictions touching it)


def score_document(text: str, gold: Iterable[Any], predicted: Iterable[Any],
                   ignore: Iterable[Sequence[int]] = ()) -> DocResult:
    """Score one document; `gold`/`predicted` items are anything `as_span` takes."""
    gold = [as_span(g) for g in gold]
    preds = [as_span(p) for p in predicted]
    ignore = [(int(s), int(e)) for s, e in ignore]
    any_spans = [(p.start, p.end) for p in preds]
    outcomes = []
    for g in gold:
        cov = _coverage(text, g.start, g.end, any_spans)
        strict = _coverage(text, g.start, g.end, [(p.start, p.end) for p in preds if p.type == g.type])
        outcomes.append(EntityOutcome(g, cov, cov >= COVERAGE, strict >= COVERAGE))

    correct, fps, ignored = [], [], []
    for p in _counted_predictions(preds):
        if any(_overlaps(p.start, p.end, g.start, g.end) for g in gold):
            correct.append(p)
        elif any(_overlaps(p.start, p.end, s, e) for s, e in ignore):
            ignored.append(p)
        else:
            fps.append(p)

    blocked = [(g.start, g.end) for g in gold] + ignore
    n_other, lost = 0, []
    for m in _WORD.finditer(text):
        s, e = m.span()
        if any(_overlaps(s, e, b0, b1) for b0, b1 in blocked):
            continue
        n_other += 1
        touching = tuple(sorted({p.type for p in preds if _overlaps(s, e, p.start, p.end)}))
        if touching:
            lost.append((s, e, touching))
    return DocResult(outcomes, fps, correct, ignored, n_other, lost)


@dataclass
class Tally:
    """Counts summed over documents; `metrics()` turns them into rates, per type and pooled."""

    gold: Counter = field(default_factory=Counter)
    found: Counter = field(default_factory=Counter)
    found_strict: Counter = field(default_factory=Counter)
    predicted: Counter = field(default_factory=Counter)  # counted predictions, by predicted type
    correct: Counter = field(default_factory=Counter)
    ignored: Counter = field(default_factory=Counter)
    words_lost_by: Counter = field(default_factory=Counter)  # other words touched, by predicted type
    other_words: int = 0
    other_words_lost: int = 0
    documents: int = 0

    def add(self, r: DocResult) -> None:
        self.documents += 1
        for o in r.entities:
            self.gold[o.gold.type] += 1
            self.found[o.gold.type] += o.found
            self.found_strict[o.gold.type] += o.found_strict
        for p in r.correct:
            self.predicted[p.type] += 1
            self.correct[p.type] += 1
        for p in r.false_positives:
            self.predicted[p.type] += 1
        for p in r.ignored:
            self.ignored[p.type] += 1
        self.other_words += r.other_words
        self.other_words_lost += len(r.other_words_lost)
        for _, _, types in r.other_words_lost:
            self.words_lost_by.update(types)

    def add_document(self, text: str, gold: Iterable[Any], predicted: Iterable[Any],
                     ignore: Iterable[Sequence[int]] = ()) -> DocResult:
        r = score_document(text, gold, predicted, ignore)
        self.add(r)
        return r

    @property
    def words_kept(self) -> float | None:
        return None if not self.other_words else 1 - self.other_words_lost / self.other_words

    def metrics(self) -> dict[str, dict[str, Any]]:
        """{type or ALL: {gold, recall, recall_strict, predicted, precision, false_positives}}.

        Rates are None where their denominator is 0 (no gold entities / no counted predictions).
        """
        def rate(num: int, den: int) -> float | None:
            return num / den if den else None

        types = sorted(set(self.gold) | set(self.predicted))
        out = {}
        for t in types + [ALL]:
            pick = (lambda c: sum(c.values())) if t == ALL else (lambda c, t=t: c[t])
            g, p, c = pick(self.gold), pick(self.predicted), pick(self.correct)
            out[t] = {"gold": g, "recall": rate(pick(self.found), g), "recall_strict": rate(pick(self.found_strict), g),
                      "predicted": p, "precision": rate(c, p), "false_positives": p - c,
                      "words_lost": pick(self.words_lost_by) if t != ALL else self.other_words_lost}
        return out
