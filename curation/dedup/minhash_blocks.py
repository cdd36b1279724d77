"""The per-block steps of MinHash near-dedup: signatures, band rows, LSH candidates, verified
edges, cluster verdicts. Each takes and returns Arrow tables, so the same function runs on one
block of a Ray shuffle (curation/stages/minhash_dedup.py, distributed or in one process) or over
a whole small table (curation/posttrain/near.py): the two pipelines agree on every verdict.

    signature_rows --> band_rows --> candidate_members --+ attach_signatures --> verified_edges
       (id, sig, n_shingles, quality, origin)            | (or star_edges, unverified)
    components (curation/dedup/components.py) --> attach_members --> decide: one verdict per duplicate

Module level: Ray pickles them by reference.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.dedup.minhash import MinHasher, band_keys, signature_type
from curation.dedup.shuffle import lookup, runs
from curation.stages.base import DETAIL, KEPT, REASON

NEAR_DUPLICATE = "near_duplicate"
PREVIOUS_CORPUS = "duplicate_of_previous_corpus"
NEW = -1  # `origin` of this run's documents; earlier corpora are 0, 1, ... (dedup_against order)
PREV_PREFIX = "\x00"  # node names of earlier documents: "\x00<corpus>\x00<id>", never a new id
PAIR_CAP = 32  # buckets up to this size are verified pair by pair
ANCHORS = 8  # larger buckets: against their smallest ids, and along the id order



def signature_schema(num_perm: int) -> pa.Schema:
    return pa.schema([pa.field("node", pa.string()), pa.field("sig", signature_type(num_perm)),
                      pa.field("n_shingles", pa.int32()), pa.field("quality", pa.float64()),
                      pa.field("origin", pa.int16())])


def signature_rows(batch: pa.Table, hasher: MinHasher, quality: str, quality_required: bool) -> pa.Table:
    sig, n_shingles = hasher.signatures(batch["text"])
    n = batch.num_rows
    if quality in batch.column_names:
        q = pc.cast(batch[quality], pa.float64())
    elif quality_required:
        raise ValueError(f"minhash_dedup: quality_column {quality!r} is not a column of the documents")
    else:
        q = pa.nulls(n, pa.float64())
    return pa.Table.from_arrays([
        batch["id"],
        pa.FixedSizeListArray.from_arrays(pa.array(sig.reshape(-1), pa.uint32()), hasher.num_perm),
        pa.array(n_shingles, pa.int32()),
        q,
        pa.array(np.full(n, NEW, np.int16)),
    ], schema=signature_schema(hasher.num_perm))


def sig_matrix(col: pa.ChunkedArray | pa.Array, num_perm: int) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, num_perm)


def band_rows(batch: pa.Table, num_perm: int, bands: int, rows: int, seed: int) -> pa.Table:
    batch = batch.filter(pc.greater(batch["n_shingles"], 0))
    keys = band_keys(sig_matrix(batch["sig"], num_perm), bands, rows, seed)
    owner = np.repeat(np.arange(batch.num_rows), bands)
    return pa.table({"bucket": pa.array(keys.reshape(-1)), "node": batch["node"].take(owner),
                     "new": pc.equal(batch["origin"], NEW).take(owner)})


MEMBER_SCHEMA = pa.schema([pa.field("bucket", pa.uint64()), pa.field("node", pa.string())])


def candidate_members(part: pa.Table) -> pa.Table:
    """Rows of buckets holding >= 2 documents, at least one of them from this run."""
    part = part.sort_by([("bucket", "ascending"), ("node", "ascending")])
    starts, lengths = runs(part["bucket"].to_numpy())
    if len(starts) == 0:
        return part.select(["bucket", "node"])
    has_new = np.maximum.reduceat(part["new"].to_numpy(zero_copy_only=False).astype(np.int8), starts) > 0
    keep = np.repeat((lengths >= 2) & has_new, lengths)
    return part.filter(pa.array(keep)).select(["bucket", "node"])


def attach_signatures(members: pa.Table, sigs: pa.Table) -> pa.Table:
    found = lookup(members["node"], sigs, "node")
    return pa.table({"bucket": members["bucket"], "node": members["node"], "sig": found["sig"],
                     "new": pc.equal(found["origin"], NEW)})


def bucket_pairs(length: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) to verify inside a bucket of `length` documents sorted by id."""
    if length <= PAIR_CAP:
        return np.triu_indices(length, k=1)
    anchors = min(ANCHORS, length)
    i = np.repeat(np.arange(anchors), length)
    j = np.tile(np.arange(length), anchors)
    chain_i = np.arange(anchors - 1, length - 1)  # consecutive ids past the anchors
    i, j = np.r_[i, chain_i], np.r_[j, chain_i + 1]
    keep = i < j
    return i[keep], j[keep]


def verified_edges(part: pa.Table, num_perm: int, threshold: float) -> pa.Table:
    """Edges (u, v) between candidates whose estimated Jaccard reaches `threshold`."""
    part = part.sort_by([("bucket", "ascending"), ("node", "ascending")])
    starts, lengths = runs(part["bucket"].to_numpy())
    sig = sig_matrix(part["sig"], num_perm)
    new = part["new"].to_numpy(zero_copy_only=False)
    left, right = [], []
    pairs = lengths == 2  # most buckets: one pair, judged in one vectorised step
    a, b = starts[pairs], starts[pairs] + 1
    left.append(a)
    right.append(b)
    for start, length in zip(starts[lengths > 2], lengths[lengths > 2]):
        i, j = bucket_pairs(int(length))
        left.append(start + i)
        right.append(start + j)
    u, v = np.concatenate(left).astype(np.int64), np.concatenate(right).astype(np.int64)
    ok = np.zeros(len(u), bool)
    for lo in range(0, len(u), 65_536):  # bounded memory: 64k pairs x num_perm comparisons
        uu, vv = u[lo:lo + 65_536], v[lo:lo + 65_536]
        ok[lo:lo + 65_536] = ((sig[uu] == sig[vv]).mean(axis=1) >= threshold) & (new[uu] | new[vv])
    nodes = part["node"]
    return pa.table({"u": nodes.take(pa.array(u[ok])), "v": nodes.take(pa.array(v[ok]))})


def star_edges(part: pa.Table) -> pa.Table:
    """Without verification: every member linked to its bucket's smallest id."""
    part = part.sort_by([("bucket", "ascending"), ("node", "ascending")])
    starts, lengths = runs(part["bucket"].to_numpy())
    first = np.repeat(starts, lengths)
    rows = np.arange(part.num_rows)
    other = rows != first
    return pa.table({"u": part["node"].take(pa.array(first[other])), "v": part["node"].take(pa.array(rows[other]))})


def attach_members(labels: pa.Table, sigs: pa.Table) -> pa.Table:
    found = lookup(labels["node"], sigs, "node")
    return pa.table({"root": labels["root"], "node": labels["node"], "sig": found["sig"],
                     "quality": found["quality"], "origin": found["origin"]})


VERDICT_SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field(REASON, pa.string()), pa.field(DETAIL, pa.string())])


def plain_id(node: str) -> str:
    return node.rsplit(PREV_PREFIX, 1)[-1] if node.startswith(PREV_PREFIX) else node


def best_match(sig: np.ndarray, rows: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of `rows`: the highest estimated Jaccard to any of `targets`, and that target.
    Chunked so a giant cluster never builds more than ~32M comparisons at once."""
    best_sim, best_target = np.empty(len(rows)), np.empty(len(rows), np.int64)
    step = max(1, 2**25 // (len(targets) * sig.shape[1]))
    for lo in range(0, len(rows), step):
        chunk = rows[lo:lo + step]
        sims = (sig[chunk][:, None, :] == sig[targets][None, :, :]).mean(axis=2)
        best = sims.argmax(axis=1)
        best_sim[lo:lo + step] = sims[np.arange(len(chunk)), best]
        best_target[lo:lo + step] = targets[best]
    return best_sim, best_target


def decide(part: pa.Table, num_perm: int, threshold: float, max_cluster_size: int,
            corpora: list[str]) -> pa.Table:
    """One verdict row per document of this run in a cluster: dropped duplicates, and guard
    releases (reason "" with `released_from`). Keepers get no row."""
    part = part.sort_by([("root", "ascending"), ("node", "ascending")])
    starts, lengths = runs(np.asarray(part["root"].to_pylist(), dtype=object))
    sig = sig_matrix(part["sig"], num_perm)
    nodes = part["node"].to_pylist()
    quality = part["quality"].to_numpy(zero_copy_only=False)
    origin = part["origin"].to_numpy()
    ids, reasons, details = [], [], []
    for start, length in zip(starts.tolist(), lengths.tolist()):
        members = np.arange(start, start + length)
        cluster = plain_id(nodes[start])
        earlier = members[origin[members] != NEW]
        if len(earlier):  # an earlier corpus has it: every new member goes, naming its closest
            rows, targets, reason = members[origin[members] == NEW], earlier, PREVIOUS_CORPUS
        else:
            q = quality[members]  # highest quality; ties and missing values: smallest id
            keeper = int(members[np.argmax(np.where(np.isfinite(q), q, -np.inf))]) if np.isfinite(q).any() else start
            rows, targets, reason = members[members != keeper], np.array([keeper]), NEAR_DUPLICATE
        sims, matched = best_match(sig, rows, targets)
        for m, sim, t in zip(rows.tolist(), sims.tolist(), matched.tolist()):
            ids.append(nodes[m])
            if length > max_cluster_size and sim < threshold:
                reasons.append(KEPT)
                details.append({"released_from": cluster, "cluster_size": length, "similarity": round(sim, 4)})
                continue
            reasons.append(reason)
            detail = {"cluster": cluster, "kept": plain_id(nodes[t]), "similarity": round(sim, 4), "cluster_size": length}
            if reason == PREVIOUS_CORPUS:
                detail["corpus"] = corpora[origin[t]]
            details.append(detail)
    return pa.Table.from_arrays([pa.array(ids, pa.string()), pa.array(reasons, pa.string()),
                                 pa.array([json.dumps(d, sort_keys=True) for d in details], pa.string())],
                                schema=VERDICT_SCHEMA)
