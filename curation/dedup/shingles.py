"""Text -> normalised words -> word n-gram ("shingle") hashes, vectorised over a batch.

Both dedup stages compare documents (MinHash) or sentences (SimHash) as sets of word n-grams.
Everything here works on a whole Arrow batch at once: normalising runs on the UTF-8 bytes (a
translate table, a class table per non-ASCII character), splitting in Arrow's C++ kernels, each
*distinct* word of the batch is hashed once (xxh3, seeded), and n-gram hashes are combined from
word hashes with numpy. There is no Python call per word or per shingle.

Normalisation (as datatrove's `simplify_text`, plus CJK): lowercase, every run of characters that
is not a letter, digit or combining mark becomes one space, and each Han/Kana character is a word
of its own (CJK text has no spaces, and a whole sentence as one "word" would make one shingle).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from curation.text_bytes import string_buffers, word_starts

_NOT_WORD = r"[^\p{L}\p{N}\p{M}]+"  # RE2 (Arrow's regex engine) Unicode classes
_CJK_CHAR = r"([\p{Han}\p{Hiragana}\p{Katakana}])"  # one class: 5x faster than alternation

# MurmurHash3's 64-bit finalizer: an avalanching bijection on uint64, used to mix combined hashes.
_FMIX64 = (np.uint64(33), np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))


def fmix64(h: np.ndarray) -> np.ndarray:
    s, m1, m2 = _FMIX64
    h = h ^ (h >> s)  # the one copy; the rest works in place
    h *= m1
    h ^= h >> s
    h *= m2
    h ^= h >> s
    return h


@dataclass
class Words:
    """The words of a batch of texts, flattened: `hashes[offsets[i]:offsets[i+1]]` is text i."""

    hashes: np.ndarray  # uint64, one per word occurrence
    offsets: np.ndarray  # int64, len(texts) + 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def _ascii_table() -> bytes:
    """bytes.translate table: ASCII letters/digits lower-cased, every other ASCII byte a space,
    bytes >= 0x80 (UTF-8 continuation and lead bytes) unchanged."""
    table = bytearray(range(256))
    for c in range(128):
        table[c] = ord(chr(c).lower()) if chr(c).isalnum() else 0x20
    return bytes(table)


_ASCII_TABLE = _ascii_table()
_SEPARATOR, _WORD, _CJK = 0, 1, 2  # classes of BMP code points


@functools.cache
def _bmp_classes() -> np.ndarray:
    """uint8 class of every BMP code point, taken from RE2's own Unicode tables (the two
    patterns above), so the byte path and `normalize_reference` cannot disagree. ~20 ms once."""
    cps = np.arange(0x10000)
    cps = cps[(cps < 0xD800) | (cps > 0xDFFF)]  # surrogates are not characters
    chars = pa.array([chr(c) for c in cps.tolist()], pa.string())
    word = pc.match_substring_regex(chars, r"^[\p{L}\p{N}\p{M}]$").to_numpy(zero_copy_only=False)
    cjk = pc.match_substring_regex(chars, "^" + _CJK_CHAR[1:-1] + "$").to_numpy(zero_copy_only=False)
    table = np.zeros(0x10000, np.uint8)
    table[cps] = np.where(cjk, _CJK, np.where(word, _WORD, _SEPARATOR))
    return table


def _byte_normalize(texts: pa.StringArray) -> tuple[pa.StringArray, np.ndarray]:
    """(normalised `texts`, rows the byte path cannot do: CJK or characters beyond the BMP).

    ASCII bytes go through a translate table; each non-ASCII character is decoded from its
    UTF-8 lead byte and, if its class is separator, its bytes become spaces in place. Lengths
    never change, so the offsets stay as they are.
    """
    offsets, values = string_buffers(texts)
    offsets = offsets.astype(np.int32)  # the result is a pa.string() array
    data = np.frombuffer(bytearray(values.tobytes().translate(_ASCII_TABLE)), np.uint8)
    lead = np.flatnonzero(data >= 0xC0)
    slow_rows = np.zeros(len(texts), bool)
    if len(lead):
        last = len(data) - 1
        b0 = data[lead].astype(np.uint32)
        b1 = data[np.minimum(lead + 1, last)].astype(np.uint32) & 0x3F
        b2 = data[np.minimum(lead + 2, last)].astype(np.uint32) & 0x3F
        three = b0 >= 0xE0
        beyond_bmp = b0 >= 0xF0
        cp = np.where(three, ((b0 & 0x0F) << 12) | (b1 << 6) | b2, ((b0 & 0x1F) << 6) | b1)
        cls = _bmp_classes()[np.minimum(cp, 0xFFFF)]
        slow = beyond_bmp | (cls == _CJK)
        slow_rows[np.searchsorted(offsets, lead[slow], side="right") - 1] = True
        sep = (cls == _SEPARATOR) & ~beyond_bmp
        data[lead[sep]] = 0x20
        data[lead[sep] + 1] = 0x20
        data[lead[sep & three] + 2] = 0x20
    out = pa.Array.from_buffers(pa.string(), len(texts), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    return out, slow_rows


def normalize(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Lower-case, every run of characters that is not a letter, digit or mark -> spaces, each
    CJK character a word; only ASCII spaces separate words in the result.

    NOTE: RE2 replaces over all text run at ~50 MB/s (a match at every gap between words).
    Here bytes do the work: a translate table for ASCII, and a class table looked up per
    non-ASCII character. Only rows with CJK or non-BMP characters (emoji, ...) take the RE2
    definition, `normalize_reference`; the words are the same (tested against it).
    """
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks else pa.array([], pa.string())
    texts = pc.fill_null(texts.cast(pa.string()), "")
    if len(texts) == 0:
        return texts
    is_ascii = pc.string_is_ascii(texts).to_numpy(zero_copy_only=False)
    if is_ascii.all():
        return _byte_normalize(texts)[0]
    # utf8_lower can change a character's byte length, so it runs before the byte pass.
    lowered = pc.if_else(pa.array(is_ascii), texts, pc.utf8_lower(texts))
    out, slow = _byte_normalize(lowered)
    if not slow.any():
        return out
    rows = np.flatnonzero(slow)
    slow_out = normalize_reference(texts.take(pa.array(rows)))
    fast_rows = np.flatnonzero(~slow)
    order = np.empty(len(texts), np.int64)  # row i of the result -> its row in the concatenation
    order[np.concatenate([fast_rows, rows])] = np.arange(len(texts))
    return pa.concat_arrays([out.take(pa.array(fast_rows)), slow_out]).take(pa.array(order))


def normalize_reference(texts: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The definition `normalize` implements faster: two RE2 passes over everything."""
    t = pc.utf8_lower(pc.fill_null(texts, ""))
    t = pc.replace_substring_regex(t, _NOT_WORD, " ")
    return pc.replace_substring_regex(t, _CJK_CHAR, r" \1 ")


def split_words(normalized: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(every word of the `normalized` texts, each with the spaces that follow it, as one flat
    string array; words per text). `rstrip(" ")` of an item is the word.

    NOTE: `normalize` leaves only ASCII spaces between words, so a word starts wherever a
    non-space byte follows a space or opens a text (`word_starts`, as `count_words` counts);
    an item runs to the next start, so the item array reuses the text bytes as they are: ~4x
    `ascii_split_whitespace` + flatten + filter, with the same words (tested).
    """
    offsets, data = string_buffers(normalized)
    starts = word_starts(data == 0x20, offsets)
    items = np.empty(len(starts) + 1, np.int64)
    items[:-1] = starts
    items[-1] = len(data)
    counts = np.diff(np.searchsorted(starts, offsets))
    flat = pa.Array.from_buffers(pa.large_string(), len(starts), [None, pa.py_buffer(items), pa.py_buffer(data)])
    return flat, counts


def words(texts: pa.Array | pa.ChunkedArray, seed: int) -> Words:
    """Normalise, split and hash the words of every text (see the module docstring)."""

    flat, counts = split_words(normalize(texts))
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    if len(flat) == 0:
        return Words(np.zeros(0, np.uint64), offsets)
    # Hash each distinct item once: a batch of 1,000 web pages has ~350k words, ~15k distinct
    # (~30k items: "the " and "the  " are one word).
    encoded = pc.dictionary_encode(flat)
    vocab = encoded.dictionary.cast(pa.large_binary()).to_pylist()
    seed64 = seed & 0xFFFFFFFFFFFFFFFF
    vocab_hashes = np.fromiter((xxhash.xxh3_64_intdigest(v.rstrip(b" "), seed64) for v in vocab), np.uint64,
                               len(vocab))  # fmt: skip
    return Words(vocab_hashes[encoded.indices.to_numpy(zero_copy_only=False)], offsets)


def split_words_reference(normalized: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """The definition `split_words` implements faster: Arrow's whitespace split."""
    lists = pc.ascii_split_whitespace(normalized)
    flat = pc.list_flatten(lists)
    parent = pc.list_parent_indices(lists)
    keep = pc.not_equal(flat, "")  # a text made only of separators splits into [""]
    flat, parent = flat.filter(keep), parent.filter(keep)
    parent = parent.to_numpy(zero_copy_only=False)
    return flat, np.bincount(parent, minlength=len(normalized)) if len(parent) else np.zeros(len(normalized), np.int64)


def ngram_multipliers(n: int, seed: int) -> np.ndarray:
    """One random odd uint64 per n-gram position: position matters ("a b" != "b a")."""
    rng = np.random.default_rng([seed, n, 0x5EED])
    return rng.integers(0, 1 << 63, n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def ngram_hashes(w: Words, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hash of every word n-gram, in text order; number of n-grams per text). A text
    shorter than n words gives one shingle of all its words; an empty text gives none.

    hash(words[p:p+n]) = fmix64(sum_j words[p+j] * mult[j]). The sums are computed for every
    position of the flat word array with n shifted slices (no gathers); a mask then drops the
    windows that start in the last n-1 words of a text (they run into the next one).
    """
    lengths = w.lengths
    counts = np.where(lengths >= n, lengths - n + 1, np.minimum(lengths, 1))
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.uint64), counts
    mult = ngram_multipliers(n, seed)
    h = w.hashes
    windows = max(len(h) - n + 1, 0)
    acc = h[:windows] * mult[0]
    for j in range(1, n):
        acc += h[j:j + windows] * mult[j]
    inside = np.ones(windows + n - 1, bool)
    starts, ends = w.offsets[:-1], w.offsets[1:]
    for k in range(1, n):
        late = ends - k
        inside[late[late >= starts]] = False
    full = acc[inside[:windows]]
    short = np.flatnonzero((lengths > 0) & (lengths < n))
    if len(short) == 0:
        return fmix64(full), counts
    # Texts of 1..n-1 words: one shingle each, summed directly, placed between the others.
    sacc = np.zeros(len(short), np.uint64)
    for j in range(n - 1):
        idx = w.offsets[short] + j
        sacc += np.where(idx < w.offsets[short + 1], h[np.minimum(idx, len(h) - 1)] * mult[j], np.uint64(0))
    out = np.empty(total, np.uint64)
    is_short = np.zeros(total, bool)
    is_short[(np.cumsum(counts) - counts)[short]] = True
    out[is_short] = sacc
    out[~is_short] = full
    return fmix64(out), counts


def ngrams(w: Words, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`ngram_hashes` with the index of its text for every n-gram (sorted) instead of counts."""
    hashes, counts = ngram_hashes(w, n, seed)
    return hashes, np.repeat(np.arange(len(counts), dtype=np.int64), counts)
