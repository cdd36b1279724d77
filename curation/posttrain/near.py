"""`near_dedup`: MinHash + LSH near duplicates of the dedup text, within each kind.

The pretraining stage's global step, as it runs locally (`MinHashDedup._global_step_local`):
signatures of word n-grams, band keys, candidate buckets, pairs verified by estimated Jaccard,
connected components, one keeper per cluster. The steps are curation/dedup/minhash_blocks.py's,
the functions the stage runs per block, so the two pipelines agree on every verdict. Quality is
1 for the eval split and 0 for train: the stage keeps the highest, so a cluster keeps its held-out
record. Dropped: `near_duplicate`, detail {cluster, kept, similarity, cluster_size}.

One difference, on by default (`NearParams.operators`): operator and sign characters are words of
their own. The shingler keeps only letters, digits and marks, so "Factor x**2 + 3*x - 4." and
"Factor x**2 - 3*x - 4." are the same words and were dropped as copies (similarity 1.0), though
they are different exercises; short math and code records differ in little else.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Any

import pyarrow as pa

from curation.dedup.components import connected_components_local
from curation.dedup.minhash import MinHasher, optimal_bands_rows
from curation.dedup.minhash_blocks import (
    attach_members,
    attach_signatures,
    band_rows,
    candidate_members,
    decide,
    signature_rows,
    verified_edges,
)
from curation.posttrain.config import NearParams
from curation.posttrain.rows import Verdict
from curation.stages.base import DETAIL, REASON
from curation.stages.minhash_dedup import MinHashDedup

NAME = "near_dedup"
METHOD = MinHashDedup.method
QUALITY = "_split_quality"
# Arithmetic, comparison and logic operators, ASCII and Unicode (minus sign, times, divide, plus-minus,
# comparisons). Prose punctuation (. , ; : ! ? quotes, brackets) stays a separator.
OPERATORS = "+-*/=<>^%~&|\u2212\u00d7\u00f7\u00b1\u2260\u2264\u2265"
_OPERATOR = re.compile(f"[{re.escape(OPERATORS)}]")


def operator_words(text: str) -> str:
    """`text` with each operator character as a word of its own, `op<hex code point>` ("x - 4" ->
    "x  op2d  4"), which the shingler keeps. A real word spelled like one shares its hash: one
    shingle in common, no more."""
    return _OPERATOR.sub(lambda m: f" op{ord(m.group()):x} ", text)


def near_verdicts(ids: list[str], texts: list[str], quality: list[float], p: NearParams) -> dict[str, tuple[str, dict]]:
    """{id: (reason, detail)} for the records of one kind that a cluster drops."""
    mp = p.minhash()
    bands, rows = (mp.bands, mp.rows) if mp.bands is not None else optimal_bands_rows(mp.threshold, mp.num_perm)
    hasher = MinHasher(mp.num_perm, mp.ngram, mp.seed, mp.scheme)
    if p.operators:
        texts = [operator_words(t) for t in texts]
    batch = pa.table({"id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string()),
                      QUALITY: pa.array(quality, pa.float64())})
    sigs = signature_rows(batch, hasher, QUALITY, True)
    members = candidate_members(band_rows(sigs, mp.num_perm, bands, rows, mp.seed))
    edges = verified_edges(attach_signatures(members, sigs), mp.num_perm, mp.threshold)
    labels = connected_components_local(edges)
    decided = decide(attach_members(labels, sigs), mp.num_perm, mp.threshold, mp.max_cluster_size, [])
    return {i: (r, json.loads(d)) for i, r, d in zip(decided["id"].to_pylist(), decided[REASON].to_pylist(),
                                                    decided[DETAIL].to_pylist()) if r}


def near_dedup(verdicts: list[Verdict], p: NearParams) -> list[Verdict]:
    by_kind: dict[str, list[int]] = defaultdict(list)
    for i, v in enumerate(verdicts):
        by_kind[v.row.kind].append(i)
    out = list(verdicts)
    for members in by_kind.values():
        rows = [verdicts[i].row for i in members]
        found: dict[str, tuple[str, dict[str, Any]]] = near_verdicts(
            [r.id for r in rows], [r.text for r in rows], [1.0 if r.split == "eval" else 0.0 for r in rows], p)
        for i, r in zip(members, rows):
            if r.id in found:
                reason, detail = found[r.id]
                out[i] = Verdict(r, reason, detail)
    return out
