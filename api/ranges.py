"""Serving an immutable file from a pyarrow filesystem: Range, ETag, If-None-Match, HEAD.

RFC 9110 rules kept here:
- `ETag` is the file's sha256 (strong); `If-None-Match` naming it (or `*`) answers 304.
- One `bytes=a-b`, `bytes=a-` or `bytes=-n` range answers 206 with `Content-Range`; a range
  that starts past the end answers 416 with `Content-Range: bytes */size`.
- A Range header that is not one well-formed byte range is ignored (200, whole file), as the
  RFC allows; so is a Range whose `If-Range` does not name the current ETag.
The body is read in 1 MiB chunks from a random-access handle (no whole-file read). The handle
is opened before the answer starts: a file the store no longer holds (a deleted or expired S3
object) answers 410 instead of a 200 whose body then breaks off.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterator

from fastapi import HTTPException, Request
from fastapi.responses import Response, StreamingResponse

CHUNK = 1 << 20
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


class Unsatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end] inclusive for one byte range; None = serve the whole file; Unsatisfiable -> 416."""
    if not header:
        return None
    m = _RANGE.match(header)
    if not m or (not m.group(1) and not m.group(2)):
        return None  # several ranges or junk: whole file
    first, last = m.group(1), m.group(2)
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - n), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignore
    if start >= size:
        raise Unsatisfiable
    end = int(last) if last else size - 1
    return start, min(end, size - 1)


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def _open(fs, path: str):
    try:
        return fs.open_input_file(path)  # on S3 a HEAD request: a missing object shows here
    except FileNotFoundError:
        raise HTTPException(410, detail=f"the store no longer holds {posixpath.basename(path)}") from None


def _chunks(f, start: int, length: int, on_bytes: Callable[[int], None]) -> Iterator[bytes]:
    with f:
        f.seek(start)
        left = length
        while left > 0:
            data = f.read(min(CHUNK, left))
            if not data:
                break  # file shorter than declared: the client sees a short body and must retry
            left -= len(data)
            on_bytes(len(data))
            yield data


def serve_file(request: Request, fs, path: str, *, size: int, sha256: str, media_type: str,
               on_bytes: Callable[[int], None] = lambda n: None) -> Response:
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=86400, immutable"}
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != etag:
        range_header = None
    try:
        span = parse_range(range_header, size)
    except Unsatisfiable:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    status, start, length = 200, 0, size
    if span is not None:
        start, end = span
        status, length = 206, end - start + 1
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(length)
    source = _open(fs, path)  # for HEAD too: a file that is gone is not announced as there
    if request.method == "HEAD" or length == 0:
        source.close()
        return Response(status_code=status, headers=headers, media_type=media_type)
    return StreamingResponse(_chunks(source, start, length, on_bytes), status_code=status, headers=headers,
                             media_type=media_type)
