"""Finding input files behind paths/URIs and cutting them into parallel read tasks.

Any `pyarrow.fs` URI works (`s3://`, `gs://`, `file://`) as well as plain local paths.
Uncompressed JSONL files are cut into byte ranges (a line belongs to the range it starts in,
as in Hadoop's TextInputFormat), so one big file still reads on every core; compressed files
and Parquet files are one task each (row groups of big Parquet files could be split later).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow.fs as pafs

from contract.stores import filesystem_for

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
COMPRESSED_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}
PARQUET_SUFFIXES = (".parquet", ".pq")
DEFAULT_CHUNK_BYTES = 32 * 1024 * 1024


class InputError(ValueError):
    """An input that cannot be read at all (missing path, no data files)."""


@dataclass(frozen=True)
class ReadTask:
    uri: str  # what the user named, resolved to one file (as a URI or absolute path)
    path: str  # path inside `fs`
    fmt: str  # "jsonl" | "parquet"
    compression: str | None
    start: int  # byte range [start, end) for uncompressed JSONL; 0/-1 = whole file
    end: int
    domain: str  # default domain for records without one
    source: str  # short, stable name of the file for ids and stats


def file_format(path: str) -> tuple[str, str | None] | None:
    """(format, compression) from the file name, or None for files that are not data."""
    name = path.lower()
    compression = None
    for suffix, codec in COMPRESSED_SUFFIXES.items():
        if name.endswith(suffix):
            compression, name = codec, name[: -len(suffix)]
            break
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl", compression
    if name.endswith(PARQUET_SUFFIXES) and compression is None:
        return "parquet", None
    return None


def _inside(real: str, bases: list[str]) -> bool:
    return any(real == base or real.startswith(base.rstrip(os.sep) + os.sep) for base in bases)


def check_confined(tasks: list[ReadTask], roots: tuple[str, ...]) -> None:
    """InputError for the first local file whose real path (symlinks resolved) lies outside every
    local root in `roots`. A service confines its jobs' reads so: a symlink planted in an allowed
    folder (`leak.jsonl -> /proc/self/environ`) would otherwise end up in rejects and /why.
    Object stores have no symlinks; their URIs are checked when a request names them."""
    bases = [os.path.realpath(r.removeprefix("file://")) for r in roots if "://" not in r or r.startswith("file://")]
    for task in tasks:
        if "://" in task.uri and not task.uri.startswith("file://"):
            continue
        if not _inside(os.path.realpath(task.path), bases):
            raise InputError(f"input file {task.source} resolves outside the allowed roots (a symlink?); not read")


def plan_reads(uri: str, domain: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES, *,
               confine_to: tuple[str, ...] | None = None) -> list[ReadTask]:
    """Every read task for one input (a file or a folder of data files, searched recursively).
    `confine_to`: roots every local file must really lie in (check_confined); None: no limit."""
    fs, path = filesystem_for(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"input not found: {uri}")
    if info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        files = sorted((i for i in infos if i.type == pafs.FileType.File and file_format(i.path)),
                       key=lambda i: i.path)
        base = path.rstrip("/")
        if not files:
            raise InputError(f"no JSONL/Parquet files under {uri}")
    else:
        if file_format(path) is None:
            raise InputError(f"not a JSONL(.gz/.zst) or Parquet file: {uri}")
        files, base = [info], os.path.dirname(path.rstrip("/"))
    tasks = []
    for f in files:
        fmt, compression = file_format(f.path)
        source = os.path.relpath(f.path, base) if base else f.path
        if "://" in uri:
            file_uri = uri.split("://", 1)[0] + "://" + f.path
        else:
            file_uri = f.path
        if fmt == "jsonl" and compression is None and f.size > chunk_bytes:
            for start in range(0, f.size, chunk_bytes):
                tasks.append(ReadTask(file_uri, f.path, fmt, None, start, min(f.size, start + chunk_bytes),
                                      domain, source))
        else:
            tasks.append(ReadTask(file_uri, f.path, fmt, compression, 0, -1, domain, source))
    if confine_to is not None:
        check_confined(tasks, confine_to)
    return tasks


def write_parquet(table, uri: str) -> None:
    """One Parquet file at `uri` (any pyarrow.fs URI or local path); the folder must exist
    where the filesystem has folders."""
    import pyarrow.parquet as pq  # Parquet support loads only for a Parquet write

    fs, path = filesystem_for(uri)
    pq.write_table(table, path, filesystem=fs)
