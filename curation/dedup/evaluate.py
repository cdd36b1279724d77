"""Labelled near-duplicate sets built from given texts, and precision/recall/F1 of both stages.

Documents (`build_document_set`): the given texts (after removing those that already overlap:
word-5-gram Jaccard >= 0.5 with an earlier one) are the originals. Seeded copies are added:

    exact   the same text                                               duplicate
    light   0.5-2% of words edited (substituted, deleted, inserted),    duplicate
            plus case, spacing and punctuation noise
    heavy   25-40% of words edited, in runs of 2-8 words                 not a duplicate
    topic   pairs of *different* originals with the most vocabulary     not a duplicate
            in common (same subject, different text)

Scores are over pairs: the predicted clusters are each kept document with the documents dropped
as its duplicates; the true groups are each original with its exact and light copies.

Sentences (`build_sentence_set`): documents of one sentence per line, drawn from the sentences
of the given texts; some lines repeat a sentence of an earlier line or document, verbatim
(exact), with case/spacing/punctuation changes (light) or with 30-50% of the words replaced
(heavy, not a repeat). Scores are over sentences: removed vs truly repeated.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import pyarrow as pa

from curation.dedup.near_copies import edit_words
from curation.dedup.sentences import split_sentences
from curation.dedup.similarity import jaccard, word_ngrams, words
from curation.stages.base import DETAIL, REASON

POSITIVE = ("exact", "light")
NEGATIVE = ("heavy", "topic")


def documents_table(ids: list[str], texts: list[str], domain: str = "web") -> pa.Table:
    n = len(ids)
    return pa.table({
        "id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string()),
        "url": pa.nulls(n, pa.string()), "domain": pa.array([domain] * n, pa.string()),
        "metadata": pa.array(["{}"] * n, pa.string()),
        "source": pa.array([f"eval-{i % 4}.jsonl" for i in range(n)], pa.string()),
        "n_tokens": pa.array([len(t.split()) for t in texts], pa.int64()),
    })


# -- documents -------------------------------------------------------------------------------

@dataclass
class DocumentSet:
    table: pa.Table
    group: dict[str, str]  # id -> true group (an original and its exact/light copies share one)
    copies: list[tuple[str, str, str, float]] = field(default_factory=list)  # (copy, original, level, true J)
    topic_pairs: list[tuple[str, str, float]] = field(default_factory=list)  # (a, b, true J)


def distinct_texts(texts: list[str], max_jaccard: float = 0.5) -> list[str]:
    """The texts that do not overlap an earlier kept one (quadratic: for evaluation sizes)."""
    kept, grams = [], []
    for t in texts:
        g = word_ngrams(t)
        if g and all(jaccard(g, h) < max_jaccard for h in grams):
            kept.append(t)
            grams.append(g)
    return kept


def build_document_set(texts: list[str], seed: int, per_level: int = 40, topic_pairs: int = 20) -> DocumentSet:
    rng = random.Random(seed)
    originals = distinct_texts(texts)
    ids = [f"orig-{i:05d}" for i in range(len(originals))]
    out_ids, out_texts = list(ids), list(originals)
    group = {i: i for i in ids}
    copies = []
    for level in ("exact", "light", "heavy"):
        for k, src in enumerate(rng.sample(range(len(originals)), min(per_level, len(originals)))):
            text = originals[src]
            if level == "light":
                text, _ = edit_words(text, rng.uniform(0.005, 0.02), rng, in_runs=False)
            elif level == "heavy":
                text, _ = edit_words(text, rng.uniform(0.25, 0.4), rng, in_runs=True)
            cid = f"{level}-{k:05d}"
            out_ids.append(cid)
            out_texts.append(text)
            group[cid] = ids[src] if level in POSITIVE else cid
            copies.append((cid, ids[src], level, round(jaccard(word_ngrams(text), word_ngrams(originals[src])), 4)))
    vocab = [word_ngrams(t, 1) for t in originals]
    scored = sorted(((jaccard(vocab[a], vocab[b]), a, b) for a, b in combinations(range(len(originals)), 2)), reverse=True)
    pairs = [(ids[a], ids[b], round(jaccard(word_ngrams(originals[a]), word_ngrams(originals[b])), 4))
             for _, a, b in scored[:topic_pairs]]
    order = list(range(len(out_ids)))
    rng.shuffle(order)  # originals and copies interleaved across blocks
    return DocumentSet(documents_table([out_ids[i] for i in order], [out_texts[i] for i in order]),
                       group, copies, pairs)


def _pairs(groups: dict[str, list[str]]) -> set[tuple[str, str]]:
    return {tuple(sorted(p)) for members in groups.values() for p in combinations(sorted(members), 2)}


def score_documents(out: pa.Table, truth: DocumentSet, reasons: tuple[str, ...] = ("near_duplicate",)) -> dict[str, Any]:
    """Pairwise precision/recall/F1 of a MinHash stage output against `truth`, plus the share
    found per copy level (for heavy and topic: the share wrongly clustered)."""
    predicted: dict[str, list[str]] = {}
    for doc, reason, detail in zip(out["id"].to_pylist(), out[REASON].to_pylist(), out[DETAIL].to_pylist()):
        if reason in reasons:
            kept = json.loads(detail)["kept"]
            predicted.setdefault(kept, [kept]).append(doc)
    true_groups: dict[str, list[str]] = {}
    for doc, g in truth.group.items():
        true_groups.setdefault(g, []).append(doc)
    pred, true = _pairs(predicted), _pairs(true_groups)
    tp = len(pred & true)
    p = tp / len(pred) if pred else 1.0
    r = tp / len(true) if true else 1.0
    by_level: dict[str, list[int]] = {}
    for copy, orig, level, _ in truth.copies:
        acc = by_level.setdefault(level, [0, 0])
        acc[0] += tuple(sorted((copy, orig))) in pred
        acc[1] += 1
    topic_hits = sum(tuple(sorted((a, b))) in pred for a, b, _ in truth.topic_pairs)
    levels = {lvl: round(f / n, 4) for lvl, (f, n) in sorted(by_level.items())}
    levels["topic"] = round(topic_hits / len(truth.topic_pairs), 4) if truth.topic_pairs else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
            "found_by_level": levels, "predicted_pairs": len(pred), "true_pairs": len(true)}


# -- sentences -------------------------------------------------------------------------------

@dataclass
class SentenceSet:
    table: pa.Table
    repeated: set[tuple[str, int]]  # (doc id, sentence index) that truly repeat an earlier sentence
    level: dict[tuple[str, int], str]  # level of every planted line


def _light_sentence(s: str, rng: random.Random) -> str:
    out = s.upper() if rng.random() < 0.3 else s.lower() if rng.random() < 0.5 else s
    out = out.replace(",", "") if rng.random() < 0.5 else out.replace(" ", "  ", 2)
    return out


def _one_sentence(s: str) -> bool:
    return split_sentences(s) == [(0, len(s))]


def build_sentence_set(texts: list[str], seed: int, n_docs: int = 150, lines: tuple[int, int] = (6, 12),
                       repeat_share: float = 0.25, min_words: int = 8) -> SentenceSet:
    rng = random.Random(seed)
    pool, seen = [], set()
    for t in texts:
        for a, b in split_sentences(t):
            s = t[a:b]
            key = " ".join(words(s))
            if len(key.split()) >= min_words and key not in seen and "\n" not in s and _one_sentence(s):
                seen.add(key)
                pool.append(s)
    rng.shuffle(pool)
    if len(pool) < n_docs * lines[1]:
        raise ValueError(f"{len(pool)} distinct sentences of >= {min_words} words; {n_docs * lines[1]} may be needed")
    fresh = iter(pool)
    used: list[str] = []
    ids, docs = [], []
    repeated: set[tuple[str, int]] = set()
    level: dict[tuple[str, int], str] = {}
    for d in range(n_docs):
        doc_id = f"s-{d:05d}"
        doc_lines = []
        for i in range(rng.randint(*lines)):
            if used and rng.random() < repeat_share:
                lvl = rng.choice(("exact", "light", "heavy"))
                src = rng.choice(used)
                line = src if lvl == "exact" else _light_sentence(src, rng) if lvl == "light" else \
                    edit_words(src, rng.uniform(0.3, 0.5), rng, in_runs=True)[0]
                if not _one_sentence(line):
                    line, lvl = next(fresh), "fresh"
                level[(doc_id, i)] = lvl
                if lvl in POSITIVE:
                    repeated.add((doc_id, i))
            else:
                line = next(fresh)
            used.append(line)
            doc_lines.append(line)
        ids.append(doc_id)
        docs.append("\n".join(doc_lines))
    return SentenceSet(documents_table(ids, docs), repeated, level)


def score_sentences(out: pa.Table, truth: SentenceSet) -> dict[str, Any]:
    """Precision/recall/F1 over sentences of a SimHash stage output against `truth`."""
    removed: set[tuple[str, int]] = set()
    for doc, detail in zip(out["id"].to_pylist(), out[DETAIL].to_pylist()):
        for idx, _, _ in json.loads(detail).get("removed", []):
            removed.add((doc, idx))
    tp = len(removed & truth.repeated)
    p = tp / len(removed) if removed else 1.0
    r = tp / len(truth.repeated) if truth.repeated else 1.0
    by_level: dict[str, list[int]] = {}
    for key, lvl in truth.level.items():
        acc = by_level.setdefault(lvl, [0, 0])
        acc[0] += key in removed
        acc[1] += 1
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
            "removed_by_level": {lvl: round(f / n, 4) for lvl, (f, n) in sorted(by_level.items())},
            "removed": len(removed), "true_repeats": len(truth.repeated)}
