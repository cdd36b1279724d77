"""Streaming a multipart upload straight into storage, hashing it on the way.

python-multipart's push parser is fed the request body chunk by chunk; the bytes of the `file`
part go to storage (hashed with sha256 in the same worker thread) and nothing else is kept:
memory stays at one network chunk whatever the file size. Locally they go to a temporary key the
caller renames into place, on an object store straight to their place (`upload_key`). The size
limit is enforced as bytes arrive, so an oversize upload is refused (413) after `limit` bytes,
not after the whole body. Everything else is bounded too: part headers, text fields and parts
that are ignored share MULTIPART_OVERHEAD, and the whole body may not pass `limit` plus that
(a chunked body declares no length). On any failure the file is deleted: no partial corpus
ever exists.

Why not `UploadFile`: Starlette spools the whole file to a local temp file before the handler
runs, which doubles the disk traffic and accepts the entire body before the limit can be checked.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from anyio import CancelScope, to_thread
from fastapi import HTTPException, Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from api.storage import TMP, Storage
from curation.io.files import file_format

FILE_FIELD = "file"
TEXT_FIELDS = ("name", "domain")
_MAX_TEXT_FIELD = 1024
# Body bytes that are not the file (boundaries, part headers, text fields, ignored parts):
# allowance over the limit, and the most such bytes the parser is fed before a 413.
MULTIPART_OVERHEAD = 64 * 1024
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._\-]+")


def safe_filename(name: str) -> str:
    """The last path component, restricted to [A-Za-z0-9._-], no leading dots."""
    base = re.split(r"[\\/]", name)[-1]
    base = _SAFE_NAME.sub("_", base).lstrip(".")
    return base[:200] or "corpus.jsonl"


def upload_key(storage: Storage, folder: str, filename: str) -> str:
    """Where an upload destined for `folder/filename` is written while it streams in."""
    if storage.publishes_on_close:
        # An object appears only once its upload completes: a crash mid-upload leaves no object
        # (only parts, which a bucket lifecycle rule expires). And a move there is a server-side
        # copy, which S3's CopyObject refuses past 5 GiB: uploads up to the limit could not land.
        return f"{folder}/{filename}"
    return f"{TMP}/{uuid.uuid4().hex}"  # a local file is visible half-written: renamed once complete


@dataclass
class StoredUpload:
    key: str  # where it was written: the caller moves it into `folder` unless it is there already
    filename: str
    size: int
    sha256: str
    fields: dict[str, str] = field(default_factory=dict)


class _Sink:
    """The `file` part's destination: written and hashed in a worker thread, chunk by chunk."""

    def __init__(self, storage: Storage, place: Callable[[], str]) -> None:
        self.storage, self.place = storage, place
        self.key: str | None = None  # decided at the first write, once the part's file name is known
        self.stream = None
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> None:
        if self.stream is None:
            self.key = self.place()
            self.stream = self.storage.open_write(self.key)
        self.digest.update(data)
        self.stream.write(data)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


class _Parts:
    """python-multipart callbacks: route the file part's bytes to `pending`, keep small text fields."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending: list[bytes] = []
        self.file_bytes = 0
        self.other_bytes = 0  # part headers, text fields and ignored parts: bounded by MULTIPART_OVERHEAD
        self.filename: str | None = None
        self.fields: dict[str, str] = {}
        self._headers: dict[bytes, bytes] = {}
        self._hname = self._hvalue = b""
        self._target: str | None = None  # FILE_FIELD, a text field name, or None (ignored part)
        self._text = bytearray()
        self.ended = False  # the closing boundary was seen: the body is complete

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin, "on_header_field": self._hfield, "on_header_value": self._hval,
            "on_header_end": self._hend, "on_headers_finished": self._headers_done,
            "on_part_data": self._data, "on_part_end": self._end, "on_end": self._body_end,
        }

    def _begin(self) -> None:
        self._headers, self._target, self._text = {}, None, bytearray()

    def _count_other(self, n: int) -> None:
        """Count bytes that are not the file; 413 past MULTIPART_OVERHEAD (a header is held in
        memory until it ends, and ignored parts would otherwise stream forever)."""
        self.other_bytes += n
        if self.other_bytes > MULTIPART_OVERHEAD:
            raise HTTPException(413, detail=f"multipart part headers and fields exceed {MULTIPART_OVERHEAD:,} bytes")

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._count_other(end - start)
        self._hname += data[start:end]

    def _hval(self, data: bytes, start: int, end: int) -> None:
        self._count_other(end - start)
        self._hvalue += data[start:end]

    def _hend(self) -> None:
        self._headers[self._hname.lower()] = self._hvalue
        self._hname = self._hvalue = b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == FILE_FIELD:
            if self.filename is not None:
                raise HTTPException(422, detail="send exactly one 'file' part")
            raw = options.get(b"filename", b"").decode("utf-8", "replace")
            filename = safe_filename(raw)
            if file_format(filename) is None:
                raise HTTPException(422, detail=f"unsupported file type {raw!r}: expected .jsonl, .jsonl.gz, "
                                                ".jsonl.zst or .parquet")
            self.filename = filename
            self._target = FILE_FIELD
        elif name in TEXT_FIELDS:
            self._target = name

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._target == FILE_FIELD:
            self.file_bytes += end - start
            if self.file_bytes > self.limit:
                raise HTTPException(413, detail=f"upload exceeds the limit of {self.limit:,} bytes")
            self.pending.append(data[start:end])
        else:
            self._count_other(end - start)
            if self._target is None:
                return  # an ignored part: counted, not kept
            self._text += data[start:end]
            if len(self._text) > _MAX_TEXT_FIELD:
                raise HTTPException(422, detail=f"form field {self._target!r} is longer than {_MAX_TEXT_FIELD} bytes")

    def _end(self) -> None:
        if self._target in TEXT_FIELDS:
            self.fields[self._target] = self._text.decode("utf-8", "replace").strip()

    def _body_end(self) -> None:
        self.ended = True


async def receive_upload(request: Request, storage: Storage, limit: int, folder: str) -> StoredUpload:
    """Stream the request's multipart body's file into storage (`upload_key`); the caller moves it
    into `folder` when it is not there yet."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise HTTPException(413, detail=f"upload of {int(declared):,} bytes exceeds the limit of {limit:,} bytes")
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise HTTPException(400, detail="multipart body without a boundary")

    parts = _Parts(limit)
    parser = MultipartParser(boundary, parts.callbacks())
    sink = _Sink(storage, lambda: upload_key(storage, folder, parts.filename))
    body_limit = limit + MULTIPART_OVERHEAD
    body_bytes = 0
    try:
        try:
            async for chunk in request.stream():
                body_bytes += len(chunk)
                if body_bytes > body_limit:  # e.g. bytes after the closing boundary, which the parser skips
                    raise HTTPException(413, detail=f"upload body exceeds {body_limit:,} bytes")
                parser.write(chunk)
                if parts.pending:
                    data = b"".join(parts.pending)
                    parts.pending.clear()
                    await to_thread.run_sync(sink.write, data)
            parser.finalize()
        except FormParserError as e:
            raise HTTPException(400, detail=f"malformed multipart body: {e}") from None
        except ClientDisconnect:
            raise HTTPException(400, detail="client disconnected during the upload") from None
        if not parts.ended:
            raise HTTPException(400, detail="multipart body ended before its closing boundary")
        if parts.filename is None:
            raise HTTPException(422, detail=f"multipart form field {FILE_FIELD!r} (the corpus file) is required")
        if parts.file_bytes == 0:
            raise HTTPException(422, detail="the uploaded file is empty")
        await to_thread.run_sync(sink.close)
    except BaseException:
        with CancelScope(shield=True):  # also when the request was cancelled (client gone)
            await to_thread.run_sync(_discard, sink)
        raise
    return StoredUpload(key=sink.key, filename=parts.filename, size=parts.file_bytes,
                        sha256=sink.digest.hexdigest(), fields=parts.fields)


def _discard(sink: _Sink) -> None:
    try:
        sink.close()  # on S3 this completes the partial object: deleted at once below
    finally:
        if sink.key is not None:
            sink.storage.delete(sink.key)
