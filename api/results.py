"""Reading a finished job's outputs: stats.json, pages of rejects, and why a document is gone.

Rejects are Parquet files named `<stage>-NNNNN-<uuid>.parquet` (see curation/pipeline.py), so a
`stage=` filter picks files by name before opening any; `reason=` and the document id become
pyarrow dataset filters, and only the columns an answer shows are read (`text`, usually the
bulk of a file, only on request). A text in an answer is cut to its first TEXT_PREVIEW_CHARS
characters, so that a page of 1,000 rejects stays a few megabytes whatever the documents are.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from contract.layout import CurationRun
from contract.stores import filesystem_for

LIST_COLUMNS = ["id", "stage", "reason", "detail", "domain", "source", "n_tokens"]
TEXT_PREVIEW_CHARS = 4096


def _files(output_uri: str, sub: str, prefix: str | None = None) -> tuple[Any, list[str]]:
    fs, root = filesystem_for(output_uri)
    infos = fs.get_file_info(pafs.FileSelector(root.rstrip("/") + "/" + sub, allow_not_found=True))
    pattern = re.compile(rf"^{re.escape(prefix)}-\d+-") if prefix else None
    paths = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")
                   and (pattern is None or pattern.match(i.base_name)))
    return fs, paths


def read_stats(output_uri: str) -> dict[str, Any] | None:
    fs, root = filesystem_for(output_uri)
    try:
        with fs.open_input_stream(CurationRun(root).stats) as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


def _row(row: dict[str, Any]) -> dict[str, Any]:
    if isinstance(row.get("detail"), str):
        try:
            row["detail"] = json.loads(row["detail"])
        except ValueError:
            pass
    return row


def _cut_texts(batch: pa.RecordBatch) -> pa.RecordBatch:
    """`batch` with its `text` column cut to TEXT_PREVIEW_CHARS characters, in Arrow: the full
    texts never become Python strings."""
    i = batch.schema.get_field_index("text")
    if i < 0:
        return batch
    cut = pc.utf8_slice_codeunits(batch.column(i), 0, TEXT_PREVIEW_CHARS)  # code points, as str slicing
    return batch.set_column(i, "text", cut)


def rejects_page(output_uri: str, *, stage: str | None, reason: str | None, limit: int, offset: int,
                 include_text: bool = False) -> tuple[int, list[dict[str, Any]]]:
    """(total matching, rows[offset:offset+limit]) in a stable order (file name, then row); texts,
    with include_text, cut as `explain` cuts them."""
    fs, paths = _files(output_uri, "rejects", stage)
    if not paths:
        return 0, []
    dataset = pads.dataset(paths, filesystem=fs, format="parquet")
    expr = None
    if reason is not None:
        expr = pads.field("reason") == reason
    if stage is not None:
        e = pads.field("stage") == stage
        expr = e if expr is None else expr & e
    total = dataset.count_rows(filter=expr)
    columns = LIST_COLUMNS + (["text"] if include_text else [])
    rows: list[dict[str, Any]] = []
    skip = offset
    for batch in dataset.to_batches(columns=columns, filter=expr, batch_size=max(256, limit)):
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        take = _cut_texts(batch.slice(skip, limit - len(rows)))
        skip = 0
        rows.extend(_row(r) for r in take.to_pylist())
        if len(rows) >= limit:
            break
    return total, rows


def explain(output_uri: str, doc_id: str) -> dict[str, Any] | None:
    """Where a document went: the stage and reason that dropped it, or that it was kept."""
    fs, paths = _files(output_uri, "rejects")
    if paths:
        dataset = pads.dataset(paths, filesystem=fs, format="parquet")
        hit = dataset.to_table(columns=LIST_COLUMNS + ["text"], filter=pads.field("id") == doc_id)
        if hit.num_rows:
            row = _row(hit.slice(0, 1).to_pylist()[0])
            row["text"] = (row["text"] or "")[:TEXT_PREVIEW_CHARS]
            return {"status": "rejected", **row}
    fs, paths = _files(output_uri, "data")
    if paths:
        dataset = pads.dataset(paths, filesystem=fs, format="parquet")
        hit = dataset.to_table(columns=["id", "domain", "source", "n_tokens"], filter=pads.field("id") == doc_id)
        if hit.num_rows:
            return {"status": "kept", **hit.slice(0, 1).to_pylist()[0]}
    return None
