"""`url_dedup`: one document per canonical URL (see `curation.urls` for the rules)."""

from __future__ import annotations

import pyarrow as pa

from curation.stages.keyed_dedup import KeyedDedup, KeyedDedupParams
from curation.urls import canonicalize_url


class UrlDedupParams(KeyedDedupParams):
    # Treat `www.example.com` and `example.com` as one site (off: they can differ).
    strip_www: bool = False


class UrlDedup(KeyedDedup):
    name = "url_dedup"
    method = "URL canonicalization + group-by"
    Params = UrlDedupParams
    reads = ("id", "url")
    reason = "duplicate_url"
    key_name = "canonical_url"

    def keys(self, batch: pa.Table) -> pa.Array:
        strip_www = self.params.strip_www
        return pa.array([canonicalize_url(u, strip_www=strip_www) for u in batch["url"].to_pylist()], pa.string())
