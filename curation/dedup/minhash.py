"""MinHash signatures, the LSH band/row choice, and band keys.

Two signature schemes over the same shingles (`shingles.py`: normalised word n-grams, one
64-bit hash each):

- `rensa` (default): rensa's R-MinHash (Rust; "Fast Similarity Sketching", Dahlgaard, Knudsen
  and Thorup 2017, arXiv 1704.04370): each shingle hash picks a slot and a rank in a few seeded
  bucket rounds, and only slots still empty fall back to a hash per slot, so the cost is
  O(shingles) rather than O(shingles x num_perm). Two sets agree in a slot with probability
  their Jaccard similarity, as with classic MinHash, so banding and verification are unchanged.
  The algorithm is rensa's `RMinHash.ALGORITHM_VERSION`, recorded in the index.
- `datasketch`: datasketch's "affine32" scheme (h -> fmix32(h) * a + b mod 2^32, `a` odd, the
  permutations of `datasketch.MinHash(num_perm, seed)`), one numpy (num_perm x shingles)
  product per chunk. A row equals `MinHash(hashfunc=int).update_batch(<the doc's 32-bit
  shingle hashes>).hashvalues` (tested), so `LeanMinHash(seed=seed, hashvalues=row,
  scheme="affine32")` works on stored signatures. Kept for indexes written before rensa.

Signatures of the two schemes are not comparable: the index records its scheme and
`dedup_against` refuses another one.

Banding: b bands of r rows; two documents are candidates when all r values of some band agree,
P(candidate | Jaccard s) = 1 - (1 - s^r)^b.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from curation.dedup import shingles

Scheme = Literal["rensa", "datasketch"]
DATASKETCH_SCHEME = "affine32"
EMPTY = np.uint32(0xFFFFFFFF)  # "no value yet" in both schemes: a signature of all EMPTY is an empty set
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


def scheme_id(scheme: Scheme) -> str:
    """The name an index records: the algorithm and its version, so a rensa release that
    changes R-MinHash is caught as an incompatible index, not silently compared."""
    if scheme == "datasketch":
        return f"datasketch-{DATASKETCH_SCHEME}"
    import rensa  # only the configured scheme's library is loaded

    return f"rensa-rminhash-v{rensa.RMinHash.ALGORITHM_VERSION}"


@dataclass(frozen=True)
class MinHasher:
    num_perm: int = 128
    ngram: int = 5
    seed: int = 1
    scheme: Scheme = "rensa"

    def permutations(self) -> tuple[np.ndarray, np.ndarray]:
        from datasketch import MinHash  # only the configured scheme's library is loaded

        a, b = MinHash(num_perm=self.num_perm, seed=self.seed, scheme=DATASKETCH_SCHEME).permutations
        return a.astype(np.uint32), b.astype(np.uint32)

    def shingle_hashes(self, texts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """(hash of every word n-gram as the scheme takes it, index of its text; sorted):
        uint64 for rensa, folded to uint32 for datasketch (its `hashfunc` input)."""
        h, counts = self._hashes(texts)
        return h, np.repeat(np.arange(len(counts), dtype=np.int64), counts)

    def _hashes(self, texts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        h64, counts = shingles.ngram_hashes(shingles.words(texts, self.seed), self.ngram, self.seed)
        if self.scheme == "datasketch":
            return (h64 ^ (h64 >> np.uint64(32))).astype(np.uint32), counts
        return h64, counts

    def signatures(self, texts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """(uint32 [n_texts, num_perm] signatures, number of shingles per text)."""
        h, counts = self._hashes(texts)
        if self.scheme == "rensa":
            return self._rensa(h, counts), counts
        owner = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        return self._datasketch(h, owner, len(counts)), counts

    def _rensa(self, h64: np.ndarray, counts: np.ndarray) -> np.ndarray:
        import rensa  # only the configured scheme's library is loaded

        offsets = np.zeros(len(counts) + 1, np.uint64)
        np.cumsum(counts, out=offsets[1:])
        m = rensa.RMinHash.digest_matrix_from_flat_token_hashes(h64, offsets, self.num_perm, self.seed)
        # NOTE: the matrix leaves Rust only as lists of ints; fromiter over the chain is ~3x
        # faster than np.array(rows) and still costs more than the sketching itself.
        flat = np.fromiter(itertools.chain.from_iterable(m.to_rows()), np.uint32, len(counts) * self.num_perm)
        return flat.reshape(len(counts), self.num_perm)

    def _datasketch(self, h: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
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
        return np.ascontiguousarray(sig_t.T)


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
