"""64-bit SimHash of sentences, permuted-block bucketing, and near-repeat detection in a bucket.

SimHash (Charikar 2002) as the `simhash` package defines it: every feature (here: a word
n-gram) has a 64-bit hash; bit j of the fingerprint is set when more than half of the features
have bit j set. `sentence_simhashes` computes it for a whole batch of sentences with numpy
(64 vectorised passes instead of a Python loop per feature) and equals
`simhash.Simhash(<features>, hashfunc=<the same 64-bit feature hash>).value` (tested).

Bucketing (Manku et al., "Detecting near-duplicates for web crawling", WWW 2007; the `simhash`
package's `SimhashIndex` uses the same offsets): cut the 64 bits into k+1 blocks. Two
fingerprints within Hamming distance k differ in at most k bits, so at least one block is
identical: grouping sentences by (block index, block value) puts every near pair together in at
least one group, and only pairs inside a group need comparing.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.dedup import shingles
from curation.dedup.shuffle import runs

# One group's distinct fingerprints are compared with at most this many earlier ones: a bound on
# the quadratic work in a pathological group (random collisions on a short block are ~N/2^16).
MAX_OFFSETS = 1024


def block_offsets(k: int, f: int = 64) -> list[int]:
    """Bit offsets of the k+1 blocks, as `simhash.SimhashIndex.offsets`."""
    return [f // (k + 1) * i for i in range(k + 1)]


def block_values(hashes: np.ndarray, k: int) -> np.ndarray:
    """uint64 [n, k+1]: the value of each block of each fingerprint."""
    offsets = block_offsets(k) + [64]
    out = np.empty((len(hashes), k + 1), np.uint64)
    for i in range(k + 1):
        width = offsets[i + 1] - offsets[i]
        mask = np.uint64((1 << width) - 1) if width < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
        out[:, i] = (hashes >> np.uint64(offsets[i])) & mask
    return out


def sentence_simhashes(sentences: pa.Array | pa.ChunkedArray, ngram: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 fingerprint, number of words) per sentence; 0 for a sentence without words."""
    w = shingles.words(sentences, seed)
    feats, owner = shingles.ngrams(w, ngram, seed)
    n = len(sentences)
    fingerprints = np.zeros(n, np.uint64)
    if len(feats) == 0:
        return fingerprints, w.lengths
    present = np.flatnonzero(np.bincount(owner, minlength=n))
    starts = np.searchsorted(owner, present)
    n_features = np.diff(np.r_[starts, len(owner)])
    value = np.zeros(len(present), np.uint64)
    for j in range(64):
        ones = np.add.reduceat(((feats >> np.uint64(j)) & np.uint64(1)).astype(np.uint32), starts)
        value |= (2 * ones > n_features).astype(np.uint64) << np.uint64(j)
    fingerprints[present] = value
    return fingerprints, w.lengths


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(a ^ b)


REMOVED_SCHEMA = pa.schema([pa.field("doc", pa.string()), pa.field("idx", pa.int32()),
                            pa.field("by_doc", pa.string()), pa.field("by_idx", pa.int32())])


def repeats_in_partition(part: pa.Table, k: int) -> pa.Table:
    """Sentences with an earlier sentence (order: doc id, then index) within Hamming distance k
    in the same bucket. `part` has columns block, value, doc, idx, hash and holds whole buckets.
    Returns (doc, idx) of each such sentence and one earlier sentence (by_doc, by_idx)."""
    if part.num_rows == 0:
        return REMOVED_SCHEMA.empty_table()
    # 1. Exact repeats: same bucket and fingerprint; the earliest occurrence represents them.
    part = part.sort_by([("block", "ascending"), ("value", "ascending"), ("hash", "ascending"),
                         ("doc", "ascending"), ("idx", "ascending")])
    block, value, fp = part["block"].to_numpy(), part["value"].to_numpy(), part["hash"].to_numpy()
    starts, lengths = runs(block, value, fp)
    first = np.repeat(starts, lengths)
    repeat = np.flatnonzero(first != np.arange(part.num_rows))
    removed_rows, by_rows = [repeat], [first[repeat]]
    # 2. Near repeats among the representatives, in corpus order inside each bucket.
    reps = part.take(pa.array(starts)).append_column("row", pa.array(starts))
    reps = reps.sort_by([("block", "ascending"), ("value", "ascending"), ("doc", "ascending"), ("idx", "ascending")])
    rb, rv, rh = reps["block"].to_numpy(), reps["value"].to_numpy(), reps["hash"].to_numpy()
    row = reps["row"].to_numpy()
    g_starts, g_lengths = runs(rb, rv)
    pos = np.arange(len(rh)) - np.repeat(g_starts, g_lengths)  # position inside its bucket
    matched = np.full(len(rh), -1, np.int64)
    for d in range(1, min(int(g_lengths.max()), MAX_OFFSETS + 1)):
        r = np.flatnonzero((pos >= d) & (matched < 0))
        if len(r) == 0:
            break
        hit = r[hamming(rh[r], rh[r - d]) <= k]
        matched[hit] = hit - d
    near = np.flatnonzero(matched >= 0)
    removed_rows.append(row[near])
    by_rows.append(row[matched[near]])
    removed, by = np.concatenate(removed_rows), np.concatenate(by_rows)
    doc, idx = part["doc"], part["idx"]
    return pa.Table.from_arrays([doc.take(pa.array(removed)), idx.take(pa.array(removed)),
                                 doc.take(pa.array(by)), idx.take(pa.array(by))], schema=REMOVED_SCHEMA)
