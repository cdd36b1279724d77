"""The manifest: one JSON document describing a curated, tokenized dataset.

`manifest.json` lists every shard (see `shards.py` for the file format) with its size, token and
document counts, sha256 of both files and its domain mix; the tokenizer (file, hash, vocab size,
special ids); the mixture the curation run sampled with; provenance; and totals. Shard paths are
relative to the manifest, so a dataset folder can be moved or served over HTTP as a whole.

The pydantic models here are the one definition. `manifest.schema.json` (JSON Schema draft
2020-12, for tools in other languages) is generated from them by `python -m contract.manifest`;
a test fails when the shipped file and the models disagree. The models also check what a schema
cannot say (totals equal the sums, bytes = tokens x width).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_serializer, model_validator

from contract.atomic import write_atomic
from contract.locations import local_path, parent_location, relative_location
from contract.shards import UINT16_MAX_VOCAB, ShardRecord, token_dtype

FORMAT_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")
SCHEMA_ID = f"urn:flywheel:manifest:{FORMAT_VERSION}"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

SHA256_PATTERN = r"^[0-9a-f]{64}$"
# Relative, forward slashes, no "..", no scheme: the dataset folder stays self-contained.
RELATIVE_PATH_PATTERN = r"^(?!/)(?![A-Za-z][A-Za-z0-9+.\-]*:)(?!(?:.*/)?\.\.(?:/|$))[^\\]+$"
URL_PATTERN = r"^[A-Za-z][A-Za-z0-9+.\-]*://\S+$"
# A superset of curation's domain names, so any curated domain is accepted here.
DOMAIN_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"

DomainName = Annotated[str, StringConstraints(pattern=DOMAIN_PATTERN)]
Count = Annotated[int, Field(ge=0)]
# pydantic checks the keys but does not put their pattern in the JSON Schema: say it there too.
DOMAIN_KEYS = {"propertyNames": {"pattern": DOMAIN_PATTERN}}


class _Strict(BaseModel):
    # python-re: the path pattern needs look-aheads, which pydantic's default Rust regex lacks.
    model_config = ConfigDict(extra="forbid", frozen=True, regex_engine="python-re")


class SpecialIds(_Strict):
    """Ids of the tokenizer's special tokens; null when the tokenizer has none."""

    bos: int | None = Field(ge=0)
    eos: int | None = Field(ge=0)
    pad: int | None = Field(ge=0)


class TokenizerInfo(_Strict):
    path: str = Field(pattern=RELATIVE_PATH_PATTERN, description="tokenizer file, relative to the manifest")
    sha256: str = Field(pattern=SHA256_PATTERN)
    vocab_size: int = Field(ge=1, le=2**32)
    special_ids: SpecialIds
    url: str | None = Field(default=None, pattern=URL_PATTERN, description="absolute location, overrides path")

    @model_serializer(mode="wrap")
    def _drop_unset_url(self, handler: Any) -> dict[str, Any]:
        return _without_none(handler(self), ("url",))


class ShardEntry(_Strict):
    path: str = Field(pattern=RELATIVE_PATH_PATTERN, description="the .bin, relative to the manifest")
    sha256: str = Field(pattern=SHA256_PATTERN)
    bytes: int = Field(ge=0)
    tokens: int = Field(ge=1)
    documents: int = Field(ge=1, description="entries of the .idx; a continued document counts in each shard")
    index_path: str = Field(pattern=RELATIVE_PATH_PATTERN)
    index_sha256: str = Field(pattern=SHA256_PATTERN)
    domains: dict[DomainName, Count] = Field(min_length=1, description="domain -> tokens; sums to `tokens`",
                                             json_schema_extra=DOMAIN_KEYS)
    continues_previous: bool = Field(
        default=False, description="the first document continues the previous shard's last document"
    )
    url: str | None = Field(default=None, pattern=URL_PATTERN, description="absolute .bin location, overrides path")
    index_url: str | None = Field(default=None, pattern=URL_PATTERN)

    @model_serializer(mode="wrap")
    def _drop_unset_urls(self, handler: Any) -> dict[str, Any]:
        return _without_none(handler(self), ("url", "index_url"))


class Totals(_Strict):
    shards: Count
    tokens: Count
    documents: Count = Field(description="whole documents: continued pieces count once")
    bytes: Count
    domains: dict[DomainName, Count] = Field(description="domain -> tokens over all shards",
                                             json_schema_extra=DOMAIN_KEYS)


class Provenance(_Strict):
    inputs: list[str | dict[str, Any]] = Field(description="corpus ids or input URIs the run read")
    config: dict[str, Any] = Field(description="the curation config as run")
    config_sha256: str = Field(pattern=SHA256_PATTERN)
    stages: list[dict[str, Any]] = Field(description="per-stage statistics, in pipeline order")
    created_at: datetime
    flywheel_version: str = Field(min_length=1)


class Manifest(_Strict):
    """A curated, tokenized dataset: token shards (flat little-endian arrays of token ids, .bin) with
    document indexes (little-endian uint64 document-start offsets plus the end offset, .idx), the
    tokenizer, the mixture and provenance. Paths are relative to the manifest. Rules a schema cannot
    state (totals equal the sums over shards, bytes = tokens x dtype width, domain tokens sum to the
    shard's tokens, uint16 only for vocab_size <= 65536, special ids < vocab_size) are checked by
    `flywheel validate-manifest`.
    """

    version: Literal[1]
    dataset_id: str = Field(min_length=1, max_length=200)
    dtype: Literal["uint16", "uint32"]
    tokenizer: TokenizerInfo
    shards: list[ShardEntry] = Field(min_length=1)
    totals: Totals
    mixture: dict[str, Any] = Field(description="per-domain weights, temperature, epochs: as sampled")
    provenance: Provenance

    @model_validator(mode="after")
    def _check_consistency(self) -> "Manifest":
        vocab = self.tokenizer.vocab_size
        if self.dtype == "uint16" and vocab > UINT16_MAX_VOCAB:
            raise ValueError(f"dtype uint16 cannot hold ids of a {vocab}-token vocabulary: use uint32")
        for name, special in self.tokenizer.special_ids.model_dump().items():
            if special is not None and special >= vocab:
                raise ValueError(f"tokenizer.special_ids.{name} = {special} is outside the vocabulary ({vocab})")
        width = token_dtype(self.dtype).itemsize
        seen: set[str] = set()
        for i, shard in enumerate(self.shards):
            where = f"shards[{i}] ({shard.path})"
            if shard.bytes != shard.tokens * width:
                raise ValueError(f"{where}: bytes {shard.bytes} != tokens {shard.tokens} x {width} ({self.dtype})")
            if sum(shard.domains.values()) != shard.tokens:
                raise ValueError(f"{where}: domain tokens sum to {sum(shard.domains.values())}, not {shard.tokens}")
            if shard.documents > shard.tokens:
                raise ValueError(f"{where}: {shard.documents} documents in {shard.tokens} tokens")
            if i == 0 and shard.continues_previous:
                raise ValueError(f"{where}: the first shard cannot continue a previous one")
            for p in (shard.path, shard.index_path):
                if p in seen:
                    raise ValueError(f"{where}: path {p} is listed twice")
                seen.add(p)
        expected = _totals(self.shards)
        if self.totals != expected:
            diff = [
                f"{k} {getattr(self.totals, k)!r} != {getattr(expected, k)!r}"
                for k in Totals.model_fields
                if getattr(self.totals, k) != getattr(expected, k)
            ]
            raise ValueError("totals disagree with the shards: " + "; ".join(diff))
        return self

    @property
    def fingerprint(self) -> str:
        """sha256 of what decides the token stream (dtype, shard and index hashes, in order).

        Checkpoints store it: a data cursor is only meaningful on the same stream.
        """
        stream = [self.dtype] + [[s.sha256, s.index_sha256, s.continues_previous] for s in self.shards]
        return hashlib.sha256(json.dumps(stream).encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"


def shard_entries(records: list[ShardRecord], manifest_dir: str | os.PathLike) -> list[ShardEntry]:
    """Manifest entries for writer records, with paths relative to the manifest's folder (a
    local folder or a URI of the store the shards are in)."""
    base = os.fspath(manifest_dir)
    entries = []
    for r in records:
        entries.append(
            ShardEntry(
                path=relative_location(os.fspath(r.path), base),
                sha256=r.sha256,
                bytes=r.bytes,
                tokens=r.tokens,
                documents=r.documents,
                index_path=relative_location(os.fspath(r.index_path), base),
                index_sha256=r.index_sha256,
                domains=dict(r.domains),
                continues_previous=r.continues_previous,
            )
        )
    return entries


def build_manifest(
    *,
    manifest_path: str | os.PathLike,
    dataset_id: str,
    dtype: str,
    tokenizer: TokenizerInfo | dict[str, Any],
    records: list[ShardRecord],
    mixture: dict[str, Any],
    provenance: Provenance | dict[str, Any],
) -> Manifest:
    """A validated Manifest for shards written by `ShardWriter`(s), totals computed."""
    shards = shard_entries(records, parent_location(os.fspath(manifest_path)))
    return Manifest(
        version=FORMAT_VERSION,
        dataset_id=dataset_id,
        dtype=dtype,
        tokenizer=tokenizer,
        shards=shards,
        totals=_totals(shards),
        mixture=mixture,
        provenance=provenance,
    )


def write_manifest(path: str | os.PathLike, manifest: Manifest) -> Path | str:
    """Write `manifest` as JSON to `path` (a local path or any `pyarrow.fs` URI) all at once: a
    temporary sibling and a rename locally, one whole object on a store. Written last, it is
    the commit point of a dataset: its shards are already in place. Returns where it went (a Path
    when local)."""
    location = os.fspath(path)
    local = local_path(location)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(local, manifest.to_json().encode())
        return local
    from contract.stores import filesystem_for  # pyarrow.fs (and its S3 client) only for a remote manifest

    fs, where = filesystem_for(location)
    write_atomic(where, manifest.to_json().encode(), fs)
    return location


def installed_flywheel_version() -> str:
    """The installed package's version, for `provenance.flywheel_version`."""
    try:
        return importlib.metadata.version("flywheel")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def parse_manifest(raw: bytes | str) -> Manifest:
    return Manifest.model_validate_json(raw)


@lru_cache(maxsize=1)
def manifest_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of manifest.json, generated from the models."""
    schema = Manifest.model_json_schema()  # validation mode: what a reader accepts
    return {"$schema": SCHEMA_DIALECT, "$id": SCHEMA_ID, **schema,
            "title": f"Flywheel dataset manifest, format version {FORMAT_VERSION}"}


def schema_text() -> str:
    """manifest.schema.json as shipped: the generated schema, stable key order."""
    return json.dumps(manifest_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":  # python -m contract.manifest: rewrite the shipped schema file
    write_atomic(SCHEMA_PATH, schema_text().encode())


def _totals(shards: list[ShardEntry]) -> Totals:
    domains: dict[str, int] = {}
    for s in shards:
        for d, t in s.domains.items():
            domains[d] = domains.get(d, 0) + t
    return Totals(
        shards=len(shards),
        tokens=sum(s.tokens for s in shards),
        documents=sum(s.documents for s in shards) - sum(s.continues_previous for s in shards),
        bytes=sum(s.bytes for s in shards),
        domains=dict(sorted(domains.items())),
    )


def _without_none(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    for k in keys:
        if data.get(k) is None:
            data.pop(k, None)
    return data
