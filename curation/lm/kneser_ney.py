"""Interpolated modified Kneser-Ney n-gram estimation, written as an ARPA file for KenLM.

This is what KenLM's `lmplz` estimates (Heafield et al. 2013, "Scalable Modified Kneser-Ney
Language Model Estimation"), done in memory with Python dicts: `lmplz` needs boost and is not
on PyPI, and the models a curation run needs (tens of MB of reference text) fit in RAM.

Notation: N is the order, g = w_1..w_n an n-gram, h = w_1..w_{n-1} its context.
- Counts. The highest order uses raw counts. A lower-order n-gram g uses its *adjusted*
  count: the number of distinct words seen right before it, a(g) = |{v : c(v g) > 0}|. An
  n-gram that starts with <s> has no left neighbour and keeps its raw count.
- Discounts, per order, from the counts-of-counts t_k of that order's adjusted counts
  (Chen & Goodman 1998): Y = t1 / (t1 + 2 t2), D(k) = k - (k+1) Y t_{k+1} / t_k for k = 1, 2,
  3, and D(k) = D(3) for k > 3.
- Probabilities, interpolated down to a uniform distribution over the vocabulary:
      p(w | h) = (a(h w) - D(a(h w))) / S(h) + b(h) p(w | h'),  S(h) = sum_x a(h x),
      b(h)     = sum_x D(a(h x)) / S(h),                          h' = h without w_1,
  so for every context the probabilities over the vocabulary (without <s>) sum to 1.
- ARPA stores log10 p(w | h) for each seen n-gram and log10 b(h) on the line of each n-gram
  that is a context; KenLM multiplies backoffs down to the longest seen n-gram, which is
  exactly the interpolated formula above.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
# lmplz's --discount_fallback values, used when an order's counts-of-counts cannot give
# valid discounts (tiny corpora: some t_k is zero, or a D(k) falls outside (0, k)).
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)

Ngram = tuple[str, ...]


@dataclass
class NgramCounts:
    """Raw counts gathered in one pass over the sentences."""

    order: int
    top: Counter = field(default_factory=Counter)  # raw counts of the highest order
    # starts[n] = raw counts of the first n tokens of each padded sentence (n < order).
    starts: dict[int, Counter] = field(default_factory=dict)
    sentences: int = 0
    tokens: int = 0  # words, without <s> and </s>


def count_ngrams(sentences: Iterable[Sequence[str]], order: int) -> NgramCounts:
    """Count the highest-order n-grams and the sentence-initial n-grams of lower orders.

    Every other lower-order n-gram has a left neighbour, so it is a suffix of a higher-order
    n-gram: `adjusted_counts` recovers them (and their counts) from the highest order.
    """
    if order < 2:
        raise ValueError("order must be at least 2")
    counts = NgramCounts(order=order, starts={n: Counter() for n in range(1, order)})
    intern = sys.intern  # one str object per word type: cheaper tuples, identity-fast equality
    for tokens in sentences:
        padded = [BOS, *map(intern, tokens), EOS]
        counts.sentences += 1
        counts.tokens += len(tokens)
        counts.top.update(zip(*(padded[i:] for i in range(order))))
        for n in range(1, min(order, len(padded) + 1)):
            counts.starts[n][tuple(padded[:n])] += 1
    return counts


def adjusted_counts(counts: NgramCounts) -> list[dict[Ngram, int]]:
    """Kneser-Ney counts per order: `result[n - 1]` maps each n-gram of order n to its count.

    NOTE: the highest-order counter is the largest object of the estimation; it is moved from
    `counts` into the result, not copied.
    """
    by_order: list[dict[Ngram, int]] = [counts.top]
    counts.top = Counter()
    for n in range(counts.order - 1, 0, -1):
        # One left extension per higher-order type: a(g) = number of types v g.
        lower = Counter(g[1:] for g in by_order[0])
        lower.update(counts.starts[n])  # n-grams starting with <s>: raw counts (no overlap)
        by_order.insert(0, lower)
    return by_order


def discounts(adjusted: dict[Ngram, int]) -> tuple[tuple[float, float, float], bool]:
    """(D1, D2, D3+) of one order from its counts-of-counts, and whether the fallback was used."""
    t = Counter(c for c in adjusted.values() if c <= 4)
    if all(t[k] > 0 for k in (1, 2, 3, 4)):
        y = t[1] / (t[1] + 2 * t[2])
        d = tuple(k - (k + 1) * y * t[k + 1] / t[k] for k in (1, 2, 3))
        if all(0 < dk < k for k, dk in zip((1, 2, 3), d)):
            return d, False  # type: ignore[return-value]
    return FALLBACK_DISCOUNTS, True


def _interpolation(adjusted: dict[Ngram, int], d: tuple[float, float, float]) -> dict[Ngram, tuple[float, float]]:
    """Per context h of this order: (1 / S(h), b(h)), with S(h) = sum_x a(h x)."""
    total: dict[Ngram, int] = {}
    mass: dict[Ngram, float] = {}
    d1, d2, d3 = d
    for g, c in adjusted.items():
        h = g[:-1]
        total[h] = total.get(h, 0) + c
        mass[h] = mass.get(h, 0.0) + (d1 if c == 1 else d2 if c == 2 else d3)
    return {h: (1.0 / s, mass[h] / s) for h, s in total.items()}


@dataclass
class ArpaStats:
    order: int
    sentences: int
    tokens: int
    vocab: int  # word types incl. </s> and <unk>
    ngrams: list[int]  # per order, as written to the ARPA header
    discounts: list[list[float]]  # per order: D1, D2, D3+
    discount_fallback: list[int]  # orders whose discounts fell back to lmplz's defaults


def write_arpa(counts: NgramCounts, out: TextIO) -> ArpaStats:
    """Estimate the model from `counts` and write it to `out` in ARPA format."""
    order = counts.order
    adjusted = adjusted_counts(counts)
    adjusted[0].pop((BOS,), None)  # <s> is never predicted: out of every sum below
    disc, fellback = zip(*(discounts(a) for a in adjusted))
    interp = [_interpolation(a, d) for a, d in zip(adjusted, disc)]
    adjusted[0].setdefault((UNK,), 0)  # never seen: it gets only the uniform share
    vocab = len(adjusted[0])
    ngrams = [len(a) for a in adjusted]
    ngrams[0] += 1  # <s> is written, with probability 0

    out.write("\\data\\\n")
    for n, size in enumerate(ngrams, start=1):
        out.write(f"ngram {n}={size}\n")

    lower_prob: dict[Ngram, float] = {}
    for n in range(1, order + 1):
        a = adjusted[n - 1]
        ctx = interp[n - 1]
        discount = (0.0, *disc[n - 1])  # indexed by min(count, 3); <unk> has count 0
        # An n-gram that is a context of order n + 1 carries that context's b(h) as backoff.
        backoff = {h: math.log10(b) for h, (_, b) in interp[n].items()} if n < order else {}
        out.write(f"\n\\{n}-grams:\n")
        if n == 1:
            out.write(f"-99\t{BOS}\t{backoff.get((BOS,), 0.0):.7g}\n")  # ARPA's "never predicted"
        prob: dict[Ngram, float] = {}
        lines = []
        for g, c in a.items():
            inv_total, weight = ctx[g[:-1]]
            lower = 1.0 / vocab if n == 1 else lower_prob[g[1:]]
            p = (c - discount[c if c < 3 else 3]) * inv_total + weight * lower
            prob[g] = p
            b = backoff.get(g)
            if b is None:
                lines.append(f"{math.log10(p):.7g}\t{' '.join(g)}\n")
            else:
                lines.append(f"{math.log10(p):.7g}\t{' '.join(g)}\t{b:.7g}\n")
            if len(lines) >= 65536:
                out.writelines(lines)
                lines.clear()
        out.writelines(lines)
        adjusted[n - 1] = {}  # free what is written
        lower_prob = prob
    out.write("\n\\end\\\n")
    return ArpaStats(
        order=order,
        sentences=counts.sentences,
        tokens=counts.tokens,
        vocab=vocab,
        ngrams=ngrams,
        discounts=[[round(x, 6) for x in d] for d in disc],
        discount_fallback=[n for n, f in enumerate(fellback, start=1) if f],
    )


def estimate_arpa(sentences: Iterable[Sequence[str]], path: str | Path, order: int = 5) -> ArpaStats:
    """Count `sentences` (token lists), estimate modified Kneser-Ney and write ARPA to `path`."""
    counts = count_ngrams(sentences, order)
    if counts.sentences == 0:
        raise ValueError("no sentences to estimate a language model from")
    with open(path, "w", encoding="utf-8") as f:
        return write_arpa(counts, f)
