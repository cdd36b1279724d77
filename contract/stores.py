"""Opening the store behind a location: a local path or any URI `pyarrow.fs` understands.

    fs, path = filesystem_for("s3://bucket/run/manifest.json")   # S3FileSystem, "bucket/run/manifest.json"
    fs, path = filesystem_for("runs/r1")                         # LocalFileSystem, "/abs/runs/r1"

Credentials and endpoints come only from the standard variables each store's SDK reads
(`AWS_ENDPOINT_URL[_S3]`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` for S3):
`FileSystem.from_uri` honours them, a bare `S3FileSystem()` does not (apache/arrow#49643).
Both halves use this one function, so a location means the same store to the curation workers
that write it and the training client that reads it.
"""

from __future__ import annotations

import os

import pyarrow.fs as pafs

from contract.atomic import OBJECT_STORES


def filesystem_for(location: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it; plain paths are local and made absolute."""
    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location)


def is_object_store(fs: pafs.FileSystem) -> bool:
    """An object store: no rename (a move is a copy), no append, objects appear whole."""
    return fs.type_name in OBJECT_STORES


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def sub_folders(fs: pafs.FileSystem, folder: str, prefix: str) -> list[str]:
    """Names of the sub-folders of `folder` starting with `prefix`, sorted ([] when it is absent)."""
    found = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    return sorted(i.base_name for i in found if i.type == pafs.FileType.Directory and i.base_name.startswith(prefix))


def complete_folders(fs: pafs.FileSystem, folder: str, prefix: str, marker: str) -> list[str]:
    """`sub_folders` that hold the file `marker`: a writer that publishes `marker` last makes this
    the list of complete ones (the trainer's `step_*/meta.json` checkpoints). Two listings,
    whatever the count: cheap on S3."""
    names = sub_folders(fs, folder, prefix)
    markers = fs.get_file_info([f"{folder}/{name}/{marker}" for name in names])
    return [name for name, info in zip(names, markers) if info.type == pafs.FileType.File]
