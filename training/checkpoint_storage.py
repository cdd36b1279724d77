"""Where DCP reads and writes a checkpoint: a local folder, or any store `pyarrow.fs` opens.

    dcp.save(state, storage_writer=storage_writer("s3://bucket/run/checkpoints/step_00000120"))
    dcp.load(state, storage_reader=storage_reader("s3://bucket/run/checkpoints/step_00000120"))

Every rank writes its own `__<rank>_0.distcp` file straight to the store and the coordinator
writes `.metadata`, so ranks on different nodes need no shared disk. A local folder keeps DCP's
own `FileSystemWriter` (fsync + rename). On an object store the files go through fsspec's
`ArrowFSWrapper` around the same `pyarrow.fs` filesystem the rest of Flywheel uses: the
endpoint and keys come from the standard AWS variables (`contract.stores`), with no second
credential chain (s3fs/boto) to configure. Reads are ranged GETs (`open_input_file` seeks), so a
rank fetches only the byte ranges of the shards it loads.
"""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager

from fsspec.implementations.arrow import ArrowFSWrapper
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.filesystem import FileSystemBase

from contract.locations import local_path
from contract.stores import filesystem_for

READ_BUFFER = 8 * 1024 * 1024  # bytes per ranged GET when reading a checkpoint file


class ArrowStoreFileSystem(FileSystemBase):
    """DCP's file operations on a `pyarrow.fs` store; paths are paths inside that store."""

    def __init__(self, location: str) -> None:
        fs, self.root = filesystem_for(location)
        self.fs = ArrowFSWrapper(fs)

    @contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Iterator:
        with self.fs.open(os.fspath(path), mode) as stream:
            # torch.load reads a tensor in many small pieces; unbuffered, each is a ranged GET.
            yield io.BufferedReader(stream, READ_BUFFER) if "r" in mode else stream

    def concat_path(self, path: str | os.PathLike, suffix: str) -> str:
        return posixpath.join(os.fspath(path), suffix)

    def init_path(self, path: str | os.PathLike) -> str:
        return os.fspath(path)

    def rename(self, path: str | os.PathLike, new_path: str | os.PathLike) -> None:
        self.fs.mv(os.fspath(path), os.fspath(new_path))  # a copy on S3: only .metadata is renamed

    def mkdir(self, path: str | os.PathLike) -> None:
        self.fs.makedirs(os.fspath(path), exist_ok=True)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return True

    def exists(self, path: str | os.PathLike) -> bool:
        return self.fs.exists(os.fspath(path))

    def rm_file(self, path: str | os.PathLike) -> None:
        self.fs.rm(os.fspath(path))


def storage_writer(location: str) -> FileSystemWriter:
    """DCP's writer for the checkpoint folder at `location` (a local path or a store URI)."""
    if local_path(location) is not None:
        return FileSystemWriter(str(local_path(location)))
    # sync_files=False: an object is durable once its upload completes (DCP would otherwise call
    # os.sync() for every file, as a store stream has no descriptor to fsync).
    writer = FileSystemWriter(location, sync_files=False)
    writer.fs = ArrowStoreFileSystem(location)
    writer.path = writer.fs.root
    return writer


def storage_reader(location: str) -> FileSystemReader:
    """DCP's reader for the checkpoint folder at `location` (a local path or a store URI)."""
    if local_path(location) is not None:
        return FileSystemReader(str(local_path(location)))
    reader = FileSystemReader(location)
    reader.fs = ArrowStoreFileSystem(location)
    reader.path = reader.fs.root
    return reader
