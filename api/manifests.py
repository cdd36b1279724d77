"""Manifests of finished jobs: registering them, and serving them with this service's URLs.

A job that ran a tokenize stage leaves `OUTPUT/manifest.json` (+ `shards/*.bin|.idx`,
`tokenizer.json`) next to its other outputs. The job's actor registers it when the job
succeeds; `GET /jobs/{id}` also looks once more for a succeeded job that has none yet.

Shards are addressed by file name (`shard-00000.bin`): only names the manifest lists can be
served, which is what makes the shard route immune to path tricks. Names must be unique in
a manifest for that (ShardWriter's `shard-NNNNN` are).
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from functools import lru_cache

import pyarrow.fs as pafs
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.ids import new_id
from api.models import Job, Manifest
from contract.layout import CurationRun
from contract.manifest import Manifest as ManifestDoc
from contract.manifest import parse_manifest
from contract.shards import INDEX_DTYPE
from contract.stores import filesystem_for


class ManifestInvalid(ValueError):
    pass


@dataclass(frozen=True)
class ServedFile:
    path: str  # inside `fs`
    sha256: str
    size: int
    media_type: str


def manifest_uri_of(output_uri: str) -> str:
    return CurationRun(output_uri).manifest


def read_location(uri: str) -> bytes | None:
    fs, path = filesystem_for(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def _check_names(doc: ManifestDoc) -> None:
    names = [posixpath.basename(p) for s in doc.shards for p in (s.path, s.index_path)]
    names.append(posixpath.basename(doc.tokenizer.path))
    if len(set(names)) != len(names):
        raise ManifestInvalid("manifest.json: shard and tokenizer file names must be unique to be served by name")


def register_job_manifest(session: Session, job_id: str, output_uri: str) -> str | None:
    """Register OUTPUT/manifest.json of a job if it exists; the manifest id (existing or new)."""
    existing = session.scalar(select(Manifest.id).where(Manifest.job_id == job_id))
    if existing:
        return existing
    uri = manifest_uri_of(output_uri)
    raw = read_location(uri)
    if raw is None:
        return None
    try:
        doc = parse_manifest(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ManifestInvalid(f"manifest.json is not a valid manifest: {where}: {err['msg']}") from None
    _check_names(doc)
    row = Manifest(id=new_id("man"), job_id=job_id, uri=uri, dataset_id=doc.dataset_id,
                   sha256=hashlib.sha256(raw).hexdigest(), tokenizer_sha256=doc.tokenizer.sha256,
                   shards=doc.totals.shards, tokens=doc.totals.tokens, bytes=doc.totals.bytes)
    try:
        session.add(row)
        session.flush()
    except IntegrityError:
        # Registered concurrently. The job's actor registers in the transaction that makes the
        # job succeeded, and no read route registers (GET writes nothing): only a second actor of
        # the same job could race here, and then its verdict is the first one's. A full rollback
        # is safe. (No SAVEPOINT: pysqlite's is unreliable.)
        session.rollback()
        return session.scalar(select(Manifest.id).where(Manifest.job_id == job_id))
    session.execute(Job.__table__.update().where(Job.id == job_id).values(manifest_id=row.id))
    return row.id


@lru_cache(maxsize=256)
def load_manifest(uri: str, sha256: str) -> ManifestDoc:
    """The parsed manifest at `uri` (cached: a registered manifest never changes, its sha256 says so)."""
    raw = read_location(uri)
    if raw is None:
        raise FileNotFoundError(f"manifest file is gone: {uri}")
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise ManifestInvalid("manifest.json changed after it was registered")
    return parse_manifest(raw)


def with_urls(doc: ManifestDoc, base_url: str, manifest_id: str) -> ManifestDoc:
    """The manifest with absolute `url`/`index_url` on every shard and `url` on the tokenizer."""
    shard_base = f"{base_url}/v1/manifests/{manifest_id}/shards/"
    shards = [s.model_copy(update={"url": shard_base + posixpath.basename(s.path),
                                   "index_url": shard_base + posixpath.basename(s.index_path)})
              for s in doc.shards]
    tokenizer = doc.tokenizer.model_copy(update={"url": f"{base_url}/v1/tokenizers/{doc.tokenizer.sha256}"})
    return doc.model_copy(update={"shards": shards, "tokenizer": tokenizer})


@lru_cache(maxsize=256)
def locate(uri: str):
    """(pyarrow filesystem, path) of a location, cached: an S3 filesystem is costly to create."""
    return filesystem_for(uri)


def shard_file(doc: ManifestDoc, manifest_uri: str, name: str) -> ServedFile | None:
    """The .bin or .idx called `name` in this manifest; None if it lists no such file."""
    _, manifest_path = locate(manifest_uri)
    folder = posixpath.dirname(manifest_path)
    for s in doc.shards:
        if posixpath.basename(s.path) == name:
            return ServedFile(posixpath.join(folder, s.path), s.sha256, s.bytes, "application/octet-stream")
        if posixpath.basename(s.index_path) == name:
            size = (s.documents + 1) * INDEX_DTYPE.itemsize
            return ServedFile(posixpath.join(folder, s.index_path), s.index_sha256, size, "application/octet-stream")
    return None


def tokenizer_file(doc: ManifestDoc, manifest_uri: str) -> ServedFile:
    """The tokenizer file beside the manifest; FileNotFoundError if the store no longer holds it."""
    fs, manifest_path = locate(manifest_uri)
    path = posixpath.join(posixpath.dirname(manifest_path), doc.tokenizer.path)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:  # its size is None then (a missing S3 object answers no error here)
        raise FileNotFoundError(f"tokenizer file is gone: {doc.tokenizer.path}")
    return ServedFile(path, doc.tokenizer.sha256, info.size, "application/json")
