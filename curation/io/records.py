"""Turning raw records into documents, or into `malformed` rejects: never into a crash.

A document is an Arrow row of `DOCUMENT_SCHEMA`. Fields the schema does not name are kept in
`metadata` (a JSON object string), so nothing in the input is lost.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

import pyarrow as pa

from curation.stages.base import DETAIL, REASON

DOCUMENT_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("url", pa.string()),
    pa.field("domain", pa.string(), nullable=False),
    pa.field("metadata", pa.string(), nullable=False),  # JSON object
    pa.field("source", pa.string(), nullable=False),  # input file the record came from
    pa.field("n_tokens", pa.int64(), nullable=False),  # whitespace words (stats' token unit)
])
VERDICT_FIELDS = [pa.field(REASON, pa.string()), pa.field(DETAIL, pa.string())]
# Where a record starts in its source (byte offset of a JSONL line, row of a Parquet file):
# "first occurrence" for the duplicate-id check. Internal to the read step, dropped after it.
POSITION = "_position"
READ_SCHEMA = pa.schema(list(DOCUMENT_SCHEMA) + VERDICT_FIELDS + [pa.field(POSITION, pa.int64(), nullable=False)])

MALFORMED = "malformed"
# A rejected record keeps at most this much of its raw text: enough to see what it was.
REJECT_TEXT_CHARS = 4096
_DOMAIN = re.compile(r"^[a-z][a-z0-9_\-]{0,31}$")
_WORD = re.compile(r"\S+")


class RecordError(ValueError):
    pass


def _as_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RecordError(f"wrong_type: id must be a string or integer, got {type(value).__name__}")
    s = str(value)
    if not s:
        raise RecordError("wrong_type: id is empty")
    return s


def parse_record(rec: Any, *, default_id: str, default_domain: str, source: str, position: int = 0) -> dict[str, Any]:
    """A document dict from one decoded record; `RecordError` says why it is not one."""
    if not isinstance(rec, dict):
        raise RecordError(f"not_an_object: a record must be a JSON object, got {type(rec).__name__}")
    text = rec.get("text")
    if text is None:
        raise RecordError("missing_text: no 'text' field")
    if not isinstance(text, str):
        raise RecordError(f"wrong_type: text must be a string, got {type(text).__name__}")
    doc_id = _as_id(rec["id"]) if rec.get("id") is not None else default_id
    url = rec.get("url")
    if url is not None and not isinstance(url, str):
        raise RecordError(f"wrong_type: url must be a string or null, got {type(url).__name__}")
    domain = rec.get("domain")
    if domain is None or domain == "":
        domain = default_domain
    elif not isinstance(domain, str) or not _DOMAIN.match(domain.lower()):
        raise RecordError(f"bad_domain: {str(domain)[:40]!r} is not a domain name")
    metadata = rec.get("metadata")
    if metadata is None:
        metadata = {}
    elif isinstance(metadata, str):  # a JSON object string: how this pipeline's own Parquet stores it
        try:
            metadata = json.loads(metadata)
        except ValueError:
            raise RecordError("wrong_type: metadata is a string that is not a JSON object") from None
        if not isinstance(metadata, dict):
            raise RecordError(f"wrong_type: metadata must be an object, got {type(metadata).__name__}")
    elif not isinstance(metadata, dict):
        raise RecordError(f"wrong_type: metadata must be an object, got {type(metadata).__name__}")
    extra = {k: v for k, v in rec.items() if k not in ("id", "text", "url", "domain", "metadata")}
    if extra:
        metadata = {**metadata, **extra}
    try:
        metadata_json = json.dumps(metadata, ensure_ascii=False, sort_keys=True, allow_nan=False)
        text.encode("utf-8")  # lone surrogates from \ud800 escapes cannot go into Arrow
    except (ValueError, TypeError) as e:
        raise RecordError(f"bad_value: {e}") from None
    return {
        "id": doc_id, "text": text, "url": url or None, "domain": domain.lower(),
        "metadata": metadata_json, "source": source, "n_tokens": len(_WORD.findall(text)),
        REASON: "", DETAIL: "{}", POSITION: position,
    }


def malformed_row(*, doc_id: str, raw: str, error: str, source: str, offset: int, domain: str) -> dict[str, Any]:
    raw = raw.encode("utf-8", "replace").decode("utf-8")  # drop lone surrogates
    detail = {"error": error[:500], "source": source, "offset": offset, "raw_chars": len(raw)}
    return {
        "id": doc_id, "text": raw[:REJECT_TEXT_CHARS], "url": None, "domain": domain, "metadata": "{}",
        "source": source, "n_tokens": 0, REASON: MALFORMED, DETAIL: json.dumps(detail, sort_keys=True),
        POSITION: offset,
    }


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=READ_SCHEMA)


def iter_lines(stream, *, start: int, end: int, max_line_bytes: int,
               block_bytes: int = 8 * 1024 * 1024) -> Iterator[tuple[int, bytes | None]]:
    """(offset, line) for each line that *starts* in [start, end) (end < 0: to EOF).

    `stream` is positioned at `start`. A line longer than `max_line_bytes` is yielded as
    (offset, None) and skipped without being held in memory: a 50 GB line costs one block.
    """
    # When start > 0 the caller positions the stream one byte early (start - 1): if that byte
    # is a newline, `start` begins a line; otherwise the line under `start` belongs to the
    # previous range and is skipped.
    pos = start - 1 if start > 0 else 0  # file offset of buf[0]
    buf = bytearray()
    skipping: bool | None = None if start > 0 else False
    eof = False
    while not eof:
        data = stream.read(block_bytes)
        eof = not data
        buf += data
        if skipping is None:
            if not buf:
                return
            skipping = buf[0:1] != b"\n"
            del buf[:1]
            pos += 1
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                if not (eof and buf):
                    break
                nl = len(buf)
            if end >= 0 and pos >= end and not skipping:
                return
            if skipping:
                skipping = False
            elif nl > max_line_bytes:
                yield pos, None
            elif buf[:nl].strip():
                yield pos, bytes(buf[:nl])
            del buf[: nl + 1]
            pos += nl + 1
        # No newline left in buf: a partial line. Past the limit it is reported once and then
        # dropped block by block until its newline.
        if skipping or len(buf) > max_line_bytes:
            if not skipping:
                if end >= 0 and pos >= end:
                    return
                yield pos, None
                skipping = True
            pos += len(buf)
            buf.clear()
