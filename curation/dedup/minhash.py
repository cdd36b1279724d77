"""MinHash signatures, the LSH band/row choice, and band keys.

Signatures are datasketch's: the permutation parameters come from `datasketch.MinHash(num_perm,
seed)` (scheme "affine32": h -> fmix32(h) * a + b mod 2^32, `a` odd), and a row of
`MinHasher.signatures` equals `MinHash(hashfunc=int).update_batch(<the doc's 32-bit shingle
hashes>).hashvalues` (tested), so `LeanMinHash(seed=seed, hashvalues=row, scheme="affine32")`
works on stored signatures. What changes is the cost: datasketch's `update_batch` calls the
hash function once per shingle in Python (ENVIRONMENT.md: `MinHash.bulk` ~2.2k docs/s); here
shingle hashes come vectorised from `shingles.py` and the permutations run as one numpy
(shingles x num_perm) product per chunk.

Banding: b bands of r rows; two documents are candidates when all r values of some band agree,
P(candidate | Jaccard s) = 1 - (1 - s^r)^b.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from curation.dedup import shingles

SCHEME = "affine32"
EMPTY = np.uint32(0xFFFFFFFF)  # datasketch's "no value yet": a signature of all EMPTY is an empty set
# Shingles per (num_perm x shingles) product: 8k x 128 x 4 B = 4 MB, cache-sized (measured best).
_CHUNK_SHINGLES = 8_192
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35))


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch applies it before the affine permutations."""
    s1, m1, s2, m2 = _FMIX32
    h = h ^ (h >> s1)
    h = h * m1
    h = h ^ (h >> s2)
    h = h * m2
    return h ^ (h >> s1)


def signature_type(num_perm: int) -> pa.DataType:
    return pa.list_(pa.uint32(), num_perm)


@dataclass(frozen=True)
class MinHasher:
    num_perm: int = 128
    ngram: int = 5
    seed: int = 1

    def permutations(self) -> tuple[np.ndarray, np.ndarray]:
        from datasketch import MinHash

        a, b = MinHash(num_perm=self.num_perm, seed=self.seed, scheme=SCHEME).permutations
        return a.astype(np.uint32), b.astype(np.uint32)

    def shingle_hashes(self, texts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """(32-bit hash of every word n-gram, index of its text): datasketch's hash input."""
        w = shingles.words(texts, self.seed)
        h64, owner = shingles.ngrams(w, self.ngram, self.seed)
        return (h64 ^ (h64 >> np.uint64(32))).astype(np.uint32), owner

    def signatures(self, texts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """(uint32 [n_texts, num_perm] signatures, number of shingles per text)."""
        n = len(texts)
        h, owner = self.shingle_hashes(texts)
        sig_t = np.full((self.num_perm, n), EMPTY, np.uint32)  # transposed: see the NOTE
        a, b = self.permutations()
        a, b = a[:, None], b[:, None]
        hv = _fmix32(h)
        for lo in range(0, len(hv), _CHUNK_SHINGLES):
            part_owner = owner[lo:lo + _CHUNK_SHINGLES]
            # NOTE: (num_perm x chunk) with the min along contiguous memory is ~15x faster than
            # (chunk x num_perm) with a strided min; 8k-shingle chunks stay in L2.
            phv = a * hv[None, lo:lo + _CHUNK_SHINGLES] + b  # wraps mod 2^32, as in datasketch
            # `owner` is sorted: one minimum per run of equal owners in this chunk.
            run_start = np.flatnonzero(np.r_[True, part_owner[1:] != part_owner[:-1]])
            docs = part_owner[run_start]
            sig_t[:, docs] = np.minimum(sig_t[:, docs], np.minimum.reduceat(phv, run_start, axis=1))
        return np.ascontiguousarray(sig_t.T), np.bincount(owner, minlength=n)


def jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity: the share of equal minima (rows of two [n, P] arrays)."""
    return (sig_a == sig_b).mean(axis=-1)


# -- band/row choice ------------------------------------------------------------------------

def candidate_probability(s: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """The LSH S-curve: P(two sets of Jaccard s share at least one band)."""
    return 1.0 - (1.0 - s**rows) ** bands


def lsh_errors(threshold: float, bands: int, rows: int, grid: int = 2001) -> tuple[float, float]:
    """(false-positive mass, false-negative mass): the integrals of the S-curve below the
    threshold and of its complement above it, over a uniform prior on Jaccard similarity."""
    lo = np.linspace(0.0, threshold, grid)
    hi = np.linspace(threshold, 1.0, grid)
    fp = float(np.trapezoid(candidate_probability(lo, bands, rows), lo))
    fn = float(np.trapezoid(1.0 - candidate_probability(hi, bands, rows), hi))
    return fp, fn


def optimal_bands_rows(threshold: float, num_perm: int, fp_weight: float = 0.5,
                       fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the weighted error mass, the
    search of datasketch's `MinHashLSH._optimal_param` (which integrates with scipy)."""
    best, best_err = (1, 1), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp, fn = lsh_errors(threshold, b, r)
            err = fp_weight * fp + fn_weight * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


# -- band keys ------------------------------------------------------------------------------

def band_keys(sig: np.ndarray, bands: int, rows: int, seed: int) -> np.ndarray:
    """uint64 [n, bands]: one key per band, a hash of the band's r values and of the band index.
    Equal keys in one column are the LSH candidates; a 64-bit collision (within or across
    bands) only adds a candidate pair, which verification then rejects."""
    n = sig.shape[0]
    mult = shingles.ngram_multipliers(rows, seed ^ 0xB4ADC0DE)
    keys = np.empty((n, bands), np.uint64)
    for band in range(bands):
        block = sig[:, band * rows:(band + 1) * rows].astype(np.uint64)
        acc = np.full(n, ((band + 1) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF, np.uint64)
        for j in range(rows):
            acc = shingles.fmix64(acc ^ (block[:, j] * mult[j]))
        keys[:, band] = acc
    return keys
