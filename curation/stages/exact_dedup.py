"""`exact_dedup`: one document per normalised text (a 128-bit hash of it)."""

from __future__ import annotations

import hashlib
import re
import unicodedata

import pyarrow as pa

from curation.stages.keyed_dedup import KeyedDedup, KeyedDedupParams

_SPACE = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)


class ExactDedupParams(KeyedDedupParams):
    lowercase: bool = True
    # Collapse runs of whitespace and strip the ends (re-flowed copies are still copies).
    collapse_whitespace: bool = True
    strip_punctuation: bool = False


def normalize_text(text: str, p: ExactDedupParams) -> str:
    text = unicodedata.normalize("NFKC", text)
    if p.lowercase:
        text = text.lower()
    if p.strip_punctuation:
        text = _PUNCT.sub("", text)
    if p.collapse_whitespace:
        text = _SPACE.sub(" ", text).strip()
    return text


class ExactDedup(KeyedDedup):
    name = "exact_dedup"
    method = "Normalized-text hash + group-by"
    Params = ExactDedupParams
    reason = "exact_duplicate"
    key_name = "text_hash"

    def keys(self, batch: pa.Table) -> pa.Array:
        p = self.params
        return pa.array([hashlib.blake2b(normalize_text(t, p).encode(), digest_size=16).hexdigest()
                         for t in batch["text"].to_pylist()], pa.string())
