"""`near_dedup`: MinHash + LSH near duplicates of the dedup text, within each kind.

The pretraining stage's global step, as it runs locally (`MinHashDedup._global_step_local`):
signatures of word n-grams, band keys, candidate buckets, pairs verified by estimated Jaccard,
connected components, one keeper per cluster. The functions are the stage's own per-block ones,
imported rather than re-written, so the two pipelines agree on every verdict. Quality is 1 for
the eval split and 0 for train: the stage keeps the highest, so a cluster keeps its held-out
record. Dropped: `near_duplicate`, detail {cluster, kept, similarity, cluster_size}.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pyarrow as pa

from curation.dedup.components import connected_components_local
from curation.dedup.minhash import MinHasher, optimal_bands_rows
from curation.posttrain.config import NearParams
from curation.posttrain.rows import Verdict
from curation.stages.base import DETAIL, REASON

# The stage's per-block functions: private to its module, shared on purpose (see above).
from curation.stages.minhash_dedup import (
    MinHashDedup,
    _attach_members,
    _attach_signatures,
    _band_rows,
    _candidate_members,
    _decide,
    _signature_rows,
    _verified_edges,
)

NAME = "near_dedup"
METHOD = MinHashDedup.method
QUALITY = "_split_quality"


def near_verdicts(ids: list[str], texts: list[str], quality: list[float], p: NearParams) -> dict[str, tuple[str, dict]]:
    """{id: (reason, detail)} for the records of one kind that a cluster drops."""
    mp = p.minhash()
    bands, rows = (mp.bands, mp.rows) if mp.bands is not None else optimal_bands_rows(mp.threshold, mp.num_perm)
    hasher = MinHasher(mp.num_perm, mp.ngram, mp.seed, mp.scheme)
    batch = pa.table({"id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string()),
                      QUALITY: pa.array(quality, pa.float64())})
    sigs = _signature_rows(batch, hasher, QUALITY, True)
    members = _candidate_members(_band_rows(sigs, mp.num_perm, bands, rows, mp.seed))
    edges = _verified_edges(_attach_signatures(members, sigs), mp.num_perm, mp.threshold)
    labels = connected_components_local(edges)
    decided = _decide(_attach_members(labels, sigs), mp.num_perm, mp.threshold, mp.max_cluster_size, [])
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
