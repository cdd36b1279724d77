"""Reading a column at a time: a Parquet record batch of plain documents becomes a READ_SCHEMA
table without a Python row per record, and a stream of tables is cut to the reader's table size.

A batch takes this path only when every column is a string named by RECORD_FIELDS and valid
UTF-8. Within it, a row that is not plainly a document -- no text, an empty id, a domain that
is not one, a metadata string msgspec refuses or that is not an object -- is built by the per-row
path (`row_of`), which decides it exactly as before, and put back in its place.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.io.records import READ_SCHEMA, RECORD_FIELDS, domain_name, metadata_json, rows_to_table
from curation.stages.base import count_words

_NULL_STRING = pa.scalar(None, pa.string())


def plain_batch(batch: pa.RecordBatch) -> bool:
    """Whether `batch` can be read a column at a time: string columns of record fields only
    (an extra column goes into metadata, row by row), each named once, all valid UTF-8."""
    names = batch.schema.names
    if "text" not in names or len(set(names)) != len(names) or not RECORD_FIELDS.issuperset(names):
        return False
    if any(t != pa.string() for t in batch.schema.types):
        return False
    try:
        batch.validate(full=True)  # Parquet readers do not check UTF-8; the per-row path raises on it
    except pa.ArrowInvalid:
        return False
    return True


def _column(batch: pa.RecordBatch, name: str) -> pa.Array:
    """Column `name`, all nulls when the file has none (as a missing key reads)."""
    at = batch.schema.get_field_index(name)
    return batch.column(at) if at >= 0 else pa.nulls(batch.num_rows, pa.string())


def _mask(values: pa.Array, default: bool) -> np.ndarray:
    """A boolean array as numpy, nulls as `default`."""
    return values.fill_null(default).to_numpy(zero_copy_only=False)


def _ids(ids: pa.Array, source: str, first_row: int) -> tuple[pa.Array, np.ndarray]:
    """(ids with `source#row` where none is given, which rows' id is usable): an empty id is a
    reject (`_as_id`), which the per-row path words."""
    ok = _mask(pc.not_equal(ids, ""), True)
    if ids.null_count:
        missing = np.flatnonzero(_mask(ids.is_null(), False))
        defaults = pa.array([f"{source}#{first_row + i}" for i in missing.tolist()], pa.string())
        ids = pc.replace_with_mask(ids, ids.is_null(), defaults)
    return ids, ok


def _domains(domains: pa.Array, default: str) -> tuple[pa.Array, np.ndarray]:
    """(lower-case domains, which rows' domain is usable), decided once per distinct value by
    the per-row rule (`domain_name`; Python's lower() and `$`, which Arrow's would not match)."""
    encoded = domains.dictionary_encode()
    mapped = [(domain_name(v) if v else default) for v in encoded.dictionary.to_pylist()]
    dictionary = pa.array([None if d is None else d.lower() for d in mapped], pa.string())
    taken = dictionary.take(encoded.indices)  # null: no domain given, or not a domain name
    ok = _mask(pc.or_kleene(taken.is_valid(), domains.is_null()), True)
    return taken.fill_null(default.lower()), ok


def _metadata(metadata: pa.Array, decode: Callable) -> tuple[pa.Array, np.ndarray]:
    """(canonical metadata JSON, which rows' metadata msgspec read as an object): the rest (NaN,
    infinities, lone surrogates, not JSON, not an object) are left to the per-row path."""
    if metadata.null_count == len(metadata):
        return pa.array(["{}"] * len(metadata), pa.string()), np.ones(len(metadata), bool)
    out: list[str | None] = []
    for s in metadata.to_pylist():
        if s is None:
            out.append("{}")
            continue
        try:
            value = decode(s)
            out.append(metadata_json(value, finite=True) if type(value) is dict else None)
        except (msgspec.MsgspecError, RecursionError, ValueError, TypeError):
            out.append(None)
    canonical = pa.array(out, pa.string())
    return canonical, _mask(canonical.is_valid(), False)


def batch_table(batch: pa.RecordBatch, *, source: str, domain: str, first_row: int, decode: Callable,
                row_of: Callable[[int], tuple]) -> pa.Table:  # fmt: skip
    """The READ_SCHEMA table of a `plain_batch` whose first row is row `first_row` of its file;
    `row_of(i)` builds row i of the batch by the per-row path."""
    n = batch.num_rows
    text = _column(batch, "text")
    ids, id_ok = _ids(_column(batch, "id"), source, first_row)
    url = _column(batch, "url")
    url = pc.if_else(_mask(pc.equal(url, ""), False), _NULL_STRING, url)  # `url or None`
    domains, domain_ok = _domains(_column(batch, "domain"), domain)
    metadata, meta_ok = _metadata(_column(batch, "metadata"), decode)
    plain = _mask(text.is_valid(), False) & id_ok & domain_ok & meta_ok
    columns = [ids, text, url, domains, metadata]
    rows = np.arange(first_row, first_row + n, dtype=np.int64)
    if not plain.all():
        keep = pa.array(plain)
        columns = [c.filter(keep) for c in columns]
        rows = rows[plain]
    kept = len(rows)
    table = pa.Table.from_arrays(columns + [
        pa.array([source] * kept, pa.string()), count_words(columns[1]), pa.array([""] * kept, pa.string()),
        pa.array(["{}"] * kept, pa.string()), pa.array(rows)], schema=READ_SCHEMA)  # fmt: skip
    if kept == n:
        return table
    others = np.flatnonzero(~plain)
    table = pa.concat_tables([table, rows_to_table([row_of(int(i)) for i in others])])
    order = np.argsort(np.concatenate([np.flatnonzero(plain), others]), kind="stable")
    return table.take(order).combine_chunks()


def row_sizes(table: pa.Table) -> np.ndarray:
    """Characters of each row's id, text, url and metadata (nulls count 0): the reader's
    `row_chars`, a column at a time."""
    sizes = np.zeros(table.num_rows, dtype=np.int64)
    for name in ("id", "text", "url", "metadata"):
        sizes += pc.utf8_length(table[name]).fill_null(0).to_numpy(zero_copy_only=False)
    return sizes


def cut_tables(tables: Iterable[pa.Table], rows_per_table: int, table_chars: int) -> Iterator[pa.Table]:
    """`tables` regrouped as the reader groups rows: a table ends at its `rows_per_table`-th row
    or at the row that brings its `row_sizes` to `table_chars` characters, whichever comes first; an
    input without rows still gives one (empty, typed) table."""
    pending: list[pa.Table] = []
    rows = chars = 0
    produced = False
    for table in tables:
        ends = np.cumsum(row_sizes(table), dtype=np.int64)
        at = 0
        while at < table.num_rows:
            before = int(ends[at - 1]) if at else 0
            by_chars = int(np.searchsorted(ends, before + table_chars - chars, side="left")) + 1
            stop = min(by_chars, at + rows_per_table - rows)
            if stop > table.num_rows:  # no cut in this table: carry the rest into the next
                pending.append(table.slice(at))
                rows += table.num_rows - at
                chars += int(ends[-1]) - before
                break
            pending.append(table.slice(at, stop - at))
            yield _joined(pending)
            pending, rows, chars, produced, at = [], 0, 0, True, stop
    if pending or not produced:
        yield _joined(pending)


def _joined(tables: list[pa.Table]) -> pa.Table:
    if not tables:
        return READ_SCHEMA.empty_table()
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables).combine_chunks()
