"""The `read` step: input files -> a Ray Dataset of documents (and malformed rejects).

Each `ReadTask` (a file, or a byte range of a big JSONL file) becomes one row of a small
dataset; `map_batches` turns it into documents on the workers, so reading is parallel and
never passes through the driver. Bad records become rows with `_reason = "malformed"`: the
pipeline accounts for them like any other stage's rejects.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.io.files import ReadTask, filesystem_for
from curation.io.records import (
    RecordError,
    iter_lines,
    malformed_row,
    parse_record,
    rows_to_table,
)

if TYPE_CHECKING:
    import ray.data

# A record larger than this is rejected without being parsed (it still costs one pass).
MAX_RECORD_BYTES = 64 * 1024 * 1024
# Rows per output table: keeps blocks a sensible size when a task reads a big file.
ROWS_PER_TABLE = 4096


def _jsonl_rows(task: ReadTask, max_record_bytes: int):
    fs, path = filesystem_for(task.uri)
    if task.compression:
        stream = fs.open_input_stream(path, compression=task.compression)
    else:
        stream = fs.open_input_file(path)
        if task.start > 0:
            stream.seek(task.start - 1)  # iter_lines looks at the byte before the range
    with stream:
        for offset, raw in iter_lines(stream, start=task.start, end=task.end, max_line_bytes=max_record_bytes):
            default_id = f"{task.source}@{offset}"
            if raw is None:
                yield malformed_row(doc_id=default_id, raw="", error=f"record_too_large: over {max_record_bytes} bytes",
                                    source=task.source, offset=offset, domain=task.domain)
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


def _document_or_reject(rec: Any, raw: str | None, default_id: str, task: ReadTask, offset: int) -> dict[str, Any]:
    """The document `rec` makes, or a malformed row keeping its raw text (re-serialised if None)."""
    try:
        return parse_record(rec, default_id=default_id, default_domain=task.domain, source=task.source,
                            position=offset)
    except RecordError as e:
        if raw is None:
            raw = json.dumps(rec, default=str, ensure_ascii=False)
        doc_id = default_id
        if isinstance(rec, dict) and isinstance(rec.get("id"), (str, int)) and not isinstance(rec.get("id"), bool):
            doc_id = str(rec["id"]) or default_id
        return malformed_row(doc_id=doc_id, raw=raw, error=str(e), source=task.source, offset=offset,
                             domain=task.domain)


def _parquet_rows(task: ReadTask):
    fs, path = filesystem_for(task.uri)
    with fs.open_input_file(path) as f:
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowInvalid, OSError) as e:
            yield malformed_row(doc_id=f"{task.source}@0", raw="", error=f"bad_parquet: {str(e)[:200]}",
                                source=task.source, offset=0, domain=task.domain)
            return
        row = 0
        for batch in pf.iter_batches(batch_size=ROWS_PER_TABLE):
            for rec in batch.to_pylist():
                yield _document_or_reject(rec, None, f"{task.source}#{row}", task, row)
                row += 1


def read_task_tables(task: ReadTask, max_record_bytes: int = MAX_RECORD_BYTES):
    """Documents of one read task as Arrow tables of at most ROWS_PER_TABLE rows."""
    rows = _jsonl_rows(task, max_record_bytes) if task.fmt == "jsonl" else _parquet_rows(task)
    batch: list[dict[str, Any]] = []
    produced = False
    for r in rows:
        batch.append(r)
        if len(batch) >= ROWS_PER_TABLE:
            yield rows_to_table(batch)
            batch, produced = [], True
    if batch or not produced:  # an empty range still yields a typed (empty) table
        yield rows_to_table(batch)


def _read_batch(tasks: pa.Table):
    for t in tasks.to_pylist():
        yield from read_task_tables(ReadTask(**t))


def read_documents(tasks: list[ReadTask]) -> "ray.data.Dataset":
    """A lazy Ray Dataset of every record in `tasks` (documents and malformed rows)."""
    import ray.data

    plan = ray.data.from_items([asdict(t) for t in tasks], override_num_blocks=max(1, len(tasks)))
    # batch_size=1: one read task per call, so tasks spread over the cluster's CPUs.
    return plan.map_batches(_read_batch, batch_size=1, batch_format="pyarrow")
