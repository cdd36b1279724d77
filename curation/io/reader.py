"""The `read` step: input files -> a Ray Dataset of documents (and malformed rejects).

Each `ReadTask` (a file, or a byte range of a big JSONL file) becomes one row of a small
dataset; `map_batches` turns it into documents on the workers, so reading is parallel and
never passes through the driver. Bad records become rows with `_reason = "malformed"`: the
pipeline accounts for them like any other stage's rejects.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Callable

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

try:
    from isal import igzip as _igzip
    from isal import igzip_lib as _igzip_lib
except ImportError:  # optional: pyarrow's zlib stream then
    _igzip = _igzip_lib = None

from contract.stores import filesystem_for
from curation.io.batches import batch_table, cut_tables, plain_batch
from curation.io.files import ReadTask
from curation.io.records import (
    ID_AT,
    METADATA_AT,
    RECORD_FIELDS,
    TEXT_AT,
    URL_AT,
    RecordError,
    iter_lines,
    malformed_row,
    record_row,
    rows_to_table,
)

if TYPE_CHECKING:
    import ray.data

# A record larger than this is rejected without being parsed (it still costs one pass).
MAX_RECORD_BYTES = 64 * 1024 * 1024
# Rows per output table, and characters of the string fields a record sets (id, text, url,
# metadata): keeps blocks a sensible size when a task reads a big file (4,096 records of up to
# 64 MB each would otherwise make one 256 GB table, in whichever field the bytes sit).
ROWS_PER_TABLE = 4096
TABLE_CHARS = 64 * 1024 * 1024
# A compressed file stops decompressing past the smaller of these: MAX_COMPRESSION_RATIO times
# its size on disk (never below RATIO_FLOOR_BYTES, so small files of repetitive lines read) and
# MAX_DECOMPRESSED_BYTES. Text compresses 3-10x and logs up to ~50x; a gzip bomb is ~1000x.
# The rest of the file becomes one `decompression_limit` reject: nothing is dropped unsaid.
MAX_COMPRESSION_RATIO = 200
RATIO_FLOOR_BYTES = 64 * 1024 * 1024
MAX_DECOMPRESSED_BYTES = 256 * 1024**3


class _GzipErrorsAsOSError:
    """ISA-L's stream, raising what pyarrow's gzip stream raised for a corrupt or truncated
    file (OSError), so callers keep one error contract (the service answers it with a 422)."""

    def __init__(self, stream):
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except (EOFError, ValueError, _igzip_lib.IsalError) as e:
            raise OSError(f"corrupt gzip stream: {e}") from e


class DecompressionLimit(Exception):
    """A compressed file inflated past its limit (`_BoundedInflate`); `at` is the number of
    decompressed bytes read when reading stopped."""

    def __init__(self, at: int, limit: int, compressed: int) -> None:
        super().__init__(f"decompression_limit: stopped after {at:,} decompressed bytes (the limit for "
                         f"{compressed:,} compressed bytes is {limit:,}); the rest of the file, including any "
                         "line in progress, is not read")
        self.at = at


def decompression_limit(compressed_bytes: int) -> int:
    """How many decompressed bytes a compressed file of `compressed_bytes` may inflate to."""
    return min(MAX_DECOMPRESSED_BYTES, max(RATIO_FLOOR_BYTES, MAX_COMPRESSION_RATIO * compressed_bytes))


class _BoundedInflate:
    """A decompressed stream that raises DecompressionLimit once it has given `limit` bytes:
    a bomb costs at most `limit` bytes of reading, never memory (`iter_lines` holds a line
    only up to the record limit)."""

    def __init__(self, stream, limit: int, compressed: int) -> None:
        self._stream, self.limit, self.compressed = stream, limit, compressed
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        if self.read_bytes >= self.limit:
            if self._stream.read(1):  # exactly at the limit is still a whole file
                raise DecompressionLimit(self.read_bytes, self.limit, self.compressed)
            return b""
        want = self.limit - self.read_bytes if size < 0 else min(size, self.limit - self.read_bytes)
        data = self._stream.read(want)
        self.read_bytes += len(data)
        return data


@contextlib.contextmanager
def _open_lines(task: ReadTask):
    """A binary stream of the task's bytes, positioned as `iter_lines` wants it; a compressed
    one raises DecompressionLimit past `decompression_limit` of its size."""
    fs, path = filesystem_for(task.uri)
    if task.compression:
        compressed = fs.get_file_info(path).size or 0
        with _decompressed(fs, path, task.compression) as stream:
            yield _BoundedInflate(stream, decompression_limit(compressed), compressed)
        return
    with fs.open_input_file(path) as stream:
        if task.start > 0:
            stream.seek(task.start - 1)  # iter_lines looks at the byte before the range
        yield stream


@contextlib.contextmanager
def _decompressed(fs, path: str, compression: str):
    if compression == "gzip" and _igzip is not None:
        # NOTE: ISA-L's inflate is ~3x zlib's (pyarrow's gzip stream); ~100 MB/s of JSONL a core
        # needs it. Same bytes out.
        with fs.open_input_stream(path, compression=None) as raw, _igzip.IGzipFile(fileobj=raw, mode="rb") as stream:
            yield _GzipErrorsAsOSError(stream)
        return
    with fs.open_input_stream(path, compression=compression) as stream:
        yield stream


def _jsonl_rows(task: ReadTask, max_record_bytes: int, fast: bool = True):
    """`_jsonl_lines`, and where a compressed file hit its decompression limit, one malformed
    row for the rest of it (at the decompressed offset where reading stopped)."""
    try:
        yield from _jsonl_lines(task, max_record_bytes, fast)
    except DecompressionLimit as e:
        yield malformed_row(doc_id=f"{task.source}@{e.at}", raw="", error=str(e), source=task.source, offset=e.at,
                            domain=task.domain)


def _jsonl_lines(task: ReadTask, max_record_bytes: int, fast: bool = True):
    """Documents and malformed rows of one JSONL task.

    Fast path: msgspec decodes the line's bytes (UTF-8 checked on the way, ~2x json.loads).
    Wherever msgspec and `json.loads` could disagree -- NaN and Infinity, lone surrogate
    escapes, invalid UTF-8, a BOM, nesting depth -- msgspec raises, and the line goes down the
    reference path (decode, json.loads) that defines the result, so both give identical rows
    and rejects (tested on the hostile corpus and random mixes).
    """
    decode = msgspec.json.Decoder().decode if fast else None
    with _open_lines(task) as stream:
        for offset, raw in iter_lines(stream, start=task.start, end=task.end, max_line_bytes=max_record_bytes):
            default_id = f"{task.source}@{offset}"
            if raw is None:
                yield malformed_row(doc_id=default_id, raw="", error=f"record_too_large: over {max_record_bytes} bytes",
                                    source=task.source, offset=offset, domain=task.domain)
                continue
            if decode is not None:
                try:
                    rec = decode(raw)
                except (msgspec.MsgspecError, RecursionError, ValueError):
                    pass  # the reference path below decides, and says why
                else:
                    yield _document_or_reject(rec, raw, default_id, task, offset, finite=True)
                    continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield malformed_row(doc_id=default_id, raw=raw.decode("utf-8", "replace"),
                                    error=f"invalid_utf8: {e.reason} at byte {e.start}",
                                    source=task.source, offset=offset, domain=task.domain)
                continue
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError) as e:
                yield malformed_row(doc_id=default_id, raw=line, error=f"bad_json: {str(e)[:200]}",
                                    source=task.source, offset=offset, domain=task.domain)
                continue
            yield _document_or_reject(rec, line, default_id, task, offset)


def _document_or_reject(rec: Any, raw: str | bytes | None, default_id: str, task: ReadTask, offset: int,
                        finite: bool = False, original: Any = None) -> tuple:  # fmt: skip
    """The document `rec` makes, or a malformed row keeping its raw text (if None: `original`,
    else `rec`, re-serialised). `finite`: msgspec decoded `rec`, so it holds no NaN, infinity
    or lone surrogate."""
    try:
        return record_row(rec, default_id=default_id, default_domain=task.domain, source=task.source,
                          position=offset, finite=finite, count_tokens=False)
    except RecordError as e:
        if raw is None:
            raw = json.dumps(rec if original is None else original, default=str, ensure_ascii=False)
        elif isinstance(raw, bytes):
            raw = raw.decode("utf-8")  # msgspec checked it is UTF-8
        doc_id = default_id
        if isinstance(rec, dict) and isinstance(rec.get("id"), (str, int)) and not isinstance(rec.get("id"), bool):
            doc_id = str(rec["id"]) or default_id
        return malformed_row(doc_id=doc_id, raw=raw, error=str(e), source=task.source, offset=offset,
                             domain=task.domain)


def _parquet_rows(task: ReadTask):
    """Documents and malformed rows of one Parquet file, the reference way: a dict per row
    (`RecordBatch.to_pylist`), metadata strings read by json.loads."""
    fs, path = filesystem_for(task.uri)
    with fs.open_input_file(path) as f:
        pf, bad = _open_parquet(f, task)
        if bad is not None:
            yield bad
            return
        row = 0
        for batch in pf.iter_batches(batch_size=_parquet_batch_rows(pf)):
            for rec in batch.to_pylist():
                yield _document_or_reject(rec, None, f"{task.source}#{row}", task, row)
                row += 1


def _parquet_batch_rows(pf: pq.ParquetFile) -> int:
    """Rows per Parquet record batch: ROWS_PER_TABLE, fewer where the file's widest row group
    holds more than TABLE_CHARS bytes in that many rows (a batch is whole in memory before it
    is cut to tables). The sizes are the file's own metadata: a lying file is bounded by the
    row group pyarrow decodes, as any Parquet reader is."""
    meta = pf.metadata
    widest = max((meta.row_group(i).total_byte_size / max(1, meta.row_group(i).num_rows)
                  for i in range(meta.num_row_groups)), default=0.0)
    if widest <= 0:
        return ROWS_PER_TABLE
    return max(1, min(ROWS_PER_TABLE, int(TABLE_CHARS / widest)))


def _open_parquet(f, task: ReadTask) -> tuple[pq.ParquetFile | None, tuple | None]:
    """(the ParquetFile, None), or (None, the malformed row of a file that is not Parquet)."""
    try:
        return pq.ParquetFile(f), None
    except (pa.ArrowInvalid, OSError) as e:
        return None, malformed_row(doc_id=f"{task.source}@0", raw="", error=f"bad_parquet: {str(e)[:200]}",
                                   source=task.source, offset=0, domain=task.domain)


def _parquet_tables(task: ReadTask):
    """READ_SCHEMA tables of one Parquet file, one per record batch (`read_task_tables` cuts
    them to size).

    Fast path: a batch of string record fields is read a column at a time (`batch_table`);
    any other batch converts to Python once per column (not a dict per row). Either way a
    `metadata` string is decoded by msgspec; where msgspec refuses it (NaN, infinities, lone
    surrogates, not JSON) the string goes to `record_row` as it is, which decides as the
    reference path (`_parquet_rows`) does.
    """
    decode = msgspec.json.Decoder().decode
    fs, path = filesystem_for(task.uri)
    with fs.open_input_file(path) as f:
        pf, bad = _open_parquet(f, task)
        if bad is not None:
            yield rows_to_table([bad])
            return
        row = 0
        for batch in pf.iter_batches(batch_size=_parquet_batch_rows(pf)):
            row_of = _batch_rows(batch, row, task, decode)
            if plain_batch(batch):
                yield batch_table(batch, source=task.source, domain=task.domain, first_row=row, decode=decode,
                                  row_of=row_of)
            else:
                yield rows_to_table([row_of(i) for i in range(batch.num_rows)])
            row += batch.num_rows


def _batch_rows(batch: pa.RecordBatch, first_row: int, task: ReadTask, decode) -> Callable[[int], tuple]:
    """Row i of a Parquet batch by the per-row path; the columns convert to Python once, on first
    use (a plain batch may need no row at all)."""
    columns: list[list] = []

    def row_of(i: int) -> tuple:
        if not columns:
            columns.extend(column.to_pylist() for column in batch.columns)
        return _parquet_row(batch.schema.names, [c[i] for c in columns], first_row + i, task, decode)

    return row_of


def _parquet_row(names: list[str], values: list, row: int, task: ReadTask, decode) -> tuple:
    """Row `row` of a Parquet file from its column values, a metadata string read by msgspec
    where msgspec can (else by `record_row`, with json.loads)."""
    rec = original = dict(zip(names, values))
    # Extra columns go into metadata as Python values (a float column may hold NaN).
    finite = RECORD_FIELDS.issuperset(names)
    meta = rec.get("metadata")
    if type(meta) is str:
        try:
            value = decode(meta)
        except (msgspec.MsgspecError, RecursionError, ValueError):
            value = None
        if type(value) is dict:
            rec = {**original, "metadata": value}
        else:  # not an object ("null", "[1]", "\"x\""): record_row's json.loads words the reject
            finite = False
    elif meta is not None:
        finite = False  # a struct or list column: Python values, checked the long way
    return _document_or_reject(rec, None, f"{task.source}#{row}", task, row, finite=finite, original=original)


def row_chars(row: tuple) -> int:
    """Characters of the string fields a record sets (what `cut_tables` counts as `row_sizes`)."""
    return len(row[ID_AT]) + len(row[TEXT_AT]) + len(row[URL_AT] or "") + len(row[METADATA_AT])


def read_task_tables(task: ReadTask, max_record_bytes: int = MAX_RECORD_BYTES, fast: bool = True):
    """Documents of one read task as Arrow tables of at most ROWS_PER_TABLE rows (and about
    TABLE_CHARS characters in their id, text, url and metadata); `fast=False` takes the
    reference path for every line."""
    if task.fmt == "parquet" and fast:
        yield from cut_tables(_parquet_tables(task), ROWS_PER_TABLE, TABLE_CHARS)
        return
    rows = _jsonl_rows(task, max_record_bytes, fast) if task.fmt == "jsonl" else _parquet_rows(task)
    batch: list[tuple] = []
    produced = False
    size = 0
    for r in rows:
        batch.append(r)
        size += row_chars(r)
        if len(batch) >= ROWS_PER_TABLE or size >= TABLE_CHARS:
            yield rows_to_table(batch)
            batch, produced, size = [], True, 0
    if batch or not produced:  # an empty range still yields a typed (empty) table
        yield rows_to_table(batch)


def _read_batch(tasks: pa.Table):
    for t in tasks.to_pylist():
        yield from read_task_tables(ReadTask(**t))


def read_documents(tasks: list[ReadTask]) -> "ray.data.Dataset":
    """A lazy Ray Dataset of every record in `tasks` (documents and malformed rows)."""
    import ray.data  # Ray Data: started by the run, not by a scan or a config check

    plan = ray.data.from_items([asdict(t) for t in tasks], override_num_blocks=max(1, len(tasks)))
    # batch_size=1: one read task per call, so tasks spread over the cluster's CPUs.
    return plan.map_batches(_read_batch, batch_size=1, batch_format="pyarrow")
