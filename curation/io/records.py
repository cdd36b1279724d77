"""Turning raw records into documents, or into `malformed` rejects: never into a crash.

A document is an Arrow row of `DOCUMENT_SCHEMA`. Fields the schema does not name are kept in
`metadata` (a JSON object string), so nothing in the input is lost.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from itertools import accumulate
from typing import Any, Iterator

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from curation.stages.base import DETAIL, REASON, count_words

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
# Metadata's canonical JSON: keys sorted, compact, UTF-8 as is (~10x json.dumps). msgspec would
# write NaN/Infinity as null, so non-finite numbers are refused first (`_check_finite`).
_METADATA_JSON = msgspec.json.Encoder(order="sorted")


class RecordError(ValueError):
    pass


def _as_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RecordError(f"wrong_type: id must be a string or integer, got {type(value).__name__}")
    s = str(value)
    if not s:
        raise RecordError("wrong_type: id is empty")
    return s


def _check_finite(value: Any) -> None:
    """Raise ValueError on a NaN or infinite number anywhere in `value` (json.loads makes them)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"out of range float value {value!r} is not JSON")
    elif isinstance(value, dict):
        for v in value.values():
            _check_finite(v)
    elif isinstance(value, list):
        for v in value:
            _check_finite(v)


def metadata_json(metadata: dict[str, Any], *, finite: bool = False) -> str:
    """The canonical JSON object string of `metadata`; `finite=True`: the caller's decoder
    cannot produce NaN or infinities (msgspec refuses them), so skip that walk."""
    if not metadata:
        return "{}"
    if not finite:
        _check_finite(metadata)
    return _METADATA_JSON.encode(metadata).decode()


# The fields a record may set; any other key goes into metadata.
RECORD_FIELDS = frozenset(("id", "text", "url", "domain", "metadata"))
READ_NAMES = tuple(READ_SCHEMA.names)
_DOMAINS: dict[str, str | None] = {}  # a record's domain -> its lower-case form (None: not a domain)


def domain_name(value: str) -> str | None:
    """The lower-cased domain, or None when `value` is not a domain name (cached: a corpus has few)."""
    try:
        return _DOMAINS[value]
    except KeyError:
        lowered = value.lower()
        ok = lowered if _DOMAIN.match(lowered) else None
        if len(_DOMAINS) < 4096:
            _DOMAINS[value] = ok
        return ok


def record_row(rec: Any, *, default_id: str, default_domain: str, source: str, position: int = 0,
               finite: bool = False, count_tokens: bool = True) -> tuple:
    """One decoded record as a READ_SCHEMA row (a tuple in READ_NAMES order); `RecordError`
    says why it is not a document. `finite`: decoded by msgspec (no NaN, infinity or lone
    surrogate possible); `count_tokens=False` leaves n_tokens None for `rows_to_table` to count
    for the whole table at once."""
    if type(rec) is dict and rec.keys() <= RECORD_FIELDS:  # the common shape: a few checks, no copies
        text, doc_id, url, domain, metadata = (rec.get("text"), rec.get("id"), rec.get("url"), rec.get("domain"),
                                               rec.get("metadata"))  # fmt: skip
        if (type(text) is str and (type(doc_id) is str and doc_id or doc_id is None)
                and (url is None or type(url) is str) and (type(metadata) is dict or metadata is None)
                and (domain is None or type(domain) is str
                     and (domain == "" or (domain := domain_name(domain)) is not None))):
            return _row(doc_id or default_id, text, url, domain or default_domain, metadata or {}, source, position,
                        finite, count_tokens)  # fmt: skip
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
    elif not isinstance(domain, str) or domain_name(domain) is None:
        raise RecordError(f"bad_domain: {str(domain)[:40]!r} is not a domain name")
    metadata = rec.get("metadata")
    if metadata is None:
        metadata = {}
    elif isinstance(metadata, str):  # a JSON object string: how this pipeline's own Parquet stores it
        finite = False  # json.loads makes NaN and infinities
        try:
            metadata = json.loads(metadata)
        except ValueError:
            raise RecordError("wrong_type: metadata is a string that is not a JSON object") from None
        if not isinstance(metadata, dict):
            raise RecordError(f"wrong_type: metadata must be an object, got {type(metadata).__name__}")
    elif not isinstance(metadata, dict):
        raise RecordError(f"wrong_type: metadata must be an object, got {type(metadata).__name__}")
    extra = {k: v for k, v in rec.items() if k not in RECORD_FIELDS}
    if extra:
        metadata = {**metadata, **extra}
    return _row(doc_id, text, url, domain, metadata, source, position, finite, count_tokens)


def _row(doc_id: str, text: str, url: str | None, domain: str, metadata: dict[str, Any], source: str, position: int,
         finite: bool, count_tokens: bool) -> tuple:  # fmt: skip
    """The READ_SCHEMA tuple of a checked record, once its values can be stored."""
    try:
        meta = metadata_json(metadata, finite=finite)
        if not finite:
            text.encode("utf-8")  # lone surrogates from \ud800 escapes cannot go into Arrow
    except (ValueError, TypeError, msgspec.EncodeError) as e:
        raise RecordError(f"bad_value: {e}") from None
    return (doc_id, text, url or None, domain.lower(), meta, source, len(text.split()) if count_tokens else None,
            "", "{}", position)


def parse_record(rec: Any, *, default_id: str, default_domain: str, source: str, position: int = 0) -> dict[str, Any]:
    """A document dict from one decoded record; `RecordError` says why it is not one."""
    row = record_row(rec, default_id=default_id, default_domain=default_domain, source=source, position=position)
    return dict(zip(READ_NAMES, row))


def malformed_row(*, doc_id: str, raw: str, error: str, source: str, offset: int, domain: str) -> tuple:
    """The READ_SCHEMA row of a record that is not a document (its raw text kept, cut)."""
    raw = raw.encode("utf-8", "replace").decode("utf-8")  # drop lone surrogates
    detail = {"error": error[:500], "source": source, "offset": offset, "raw_chars": len(raw)}
    return (doc_id, raw[:REJECT_TEXT_CHARS], None, domain, "{}", source, 0, MALFORMED,
            json.dumps(detail, sort_keys=True), offset)


TEXT_AT = READ_NAMES.index("text")  # where a row tuple holds its text
ID_AT, URL_AT, METADATA_AT = (READ_NAMES.index(name) for name in ("id", "url", "metadata"))
_N_TOKENS = READ_NAMES.index("n_tokens")


def rows_to_table(rows: list[tuple]) -> pa.Table:
    """READ_SCHEMA rows (tuples) as a table; n_tokens left None are counted here, all at once."""
    if not rows:
        return READ_SCHEMA.empty_table()
    # Transposed in C, then one Arrow conversion per column: ~3x Table.from_pylist on dicts.
    columns = [pa.array(values, f.type) for values, f in zip(zip(*rows), READ_SCHEMA)]
    if columns[_N_TOKENS].null_count:
        counted = count_words(columns[TEXT_AT])
        columns[_N_TOKENS] = pc.if_else(columns[_N_TOKENS].is_null(), counted, columns[_N_TOKENS])
    return pa.Table.from_arrays(columns, schema=READ_SCHEMA)


# Bytes per read of a JSONL stream: 1 MB keeps a block's lines in cache while they are decoded
# (~5% faster than 8 MB reads).
READ_BLOCK_BYTES = 1024 * 1024


def iter_lines(stream, *, start: int, end: int, max_line_bytes: int,
               block_bytes: int = READ_BLOCK_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """(offset, line) for each line that *starts* in [start, end) (end < 0: to EOF).

    `stream` is positioned at `start`. A line longer than `max_line_bytes` is yielded as
    (offset, None) and skipped without being held in memory: a 50 GB line costs one block.
    """
    for offsets, lines in iter_line_blocks(stream, start=start, end=end, max_line_bytes=max_line_bytes,
                                           block_bytes=block_bytes):
        yield from zip(offsets, lines)


def _line_offsets(lines: list[bytes], pos: int) -> list[int]:
    """The file offset of each line of a block starting at `pos`, and of the byte after the last
    (accumulate runs the loop in C)."""
    return list(accumulate(map(len, lines), lambda at, n: at + n + 1, initial=pos))


def _plain(lines: list[bytes], max_line_bytes: int) -> bool:
    """No blank and no oversized line in `lines`: the block can be yielded as it is (the common
    case; isspace stops at a line's first non-blank byte)."""
    return not (b"" in lines or any(map(bytes.isspace, lines)) or max(map(len, lines), default=0) > max_line_bytes)


def iter_line_blocks(stream, *, start: int, end: int, max_line_bytes: int,
                     block_bytes: int = READ_BLOCK_BYTES) -> Iterator[tuple[list[int], list[bytes | None]]]:
    """`iter_lines` a block at a time: (offsets, lines) of the lines of one read that *start* in
    [start, end), blank lines left out, a line over `max_line_bytes` as None.

    One `bytes.split` per block and no per-line Python on a clean block: cutting lines one at a
    time (or copying the block into a bytearray and out again) cost ~30% of a fast read.
    """
    # When start > 0 the caller positions the stream one byte early (start - 1): if that byte
    # is a newline, `start` begins a line; otherwise the line under `start` belongs to the
    # previous range and is skipped.
    pos = start - 1 if start > 0 else 0  # file offset of the next unread byte
    partial: list[bytes] = []  # pieces of a line that runs past the reads so far (joined once: linear)
    partial_bytes = 0
    skipping: bool | None = None if start > 0 else False
    while True:
        data = stream.read(block_bytes)
        eof = not data
        if skipping is None:
            if eof:
                return
            skipping = data[:1] != b"\n"
            data, pos = data[1:], pos + 1
        if skipping:  # dropping a partial or oversized line until its newline
            nl = data.find(b"\n")
            if nl < 0:
                if eof:
                    return
                pos += len(data)
                continue
            data, pos, skipping = data[nl + 1:], pos + nl + 1, False
        lines = data.split(b"\n")  # at EOF [b""]: the partial line, if any, is the last line
        tail = b"" if eof else lines.pop()  # after the last newline: the start of a partial line
        if partial and lines:
            lines[0] = b"".join([*partial, lines[0]])
        line_start = pos - partial_bytes
        if lines:
            partial, partial_bytes = [], 0
        offsets = _line_offsets(lines, line_start)
        pos += len(data)
        if end >= 0 and offsets[-2:-1] and offsets[-2] >= end:
            cut = bisect.bisect_left(offsets, end, hi=len(lines))
            yield from _yieldable(offsets[:cut], lines[:cut], max_line_bytes)
            return
        yield from _yieldable(offsets[:-1], lines, max_line_bytes)
        if eof:
            return
        if tail:
            partial.append(tail)
            partial_bytes += len(tail)
        # A partial line past the limit is reported once and then dropped read by read until
        # its newline.
        if partial_bytes > max_line_bytes:
            at = pos - partial_bytes
            if end >= 0 and at >= end:
                return
            yield [at], [None]
            skipping = True
            partial, partial_bytes = [], 0


def _yieldable(offsets: list[int], lines: list[bytes], max_line_bytes: int) -> Iterator[tuple[list, list]]:
    """The block as it is when plain, else without blank lines and with oversized ones as None."""
    if not lines:
        return
    if _plain(lines, max_line_bytes):
        yield offsets, lines
        return
    kept = [(at, None if len(line) > max_line_bytes else line) for at, line in zip(offsets, lines)
            if len(line) > max_line_bytes or line and not line.isspace()]
    if kept:
        yield [at for at, _ in kept], [line for _, line in kept]
