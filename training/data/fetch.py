"""Reading manifest-referenced files wherever they live, and caching remote shards locally.

A *location* is a string: a local path, `file://`, `http(s)://` (httpx) or any URI that
`pyarrow.fs.FileSystem.from_uri` understands (`s3://`, `gs://`, ...; pyarrow is imported only
then). Relative paths in a manifest resolve against the manifest's own location.

`ShardCache` puts remote files in a content-addressed folder (`<cache>/<sha[:2]>/<sha>`): a file
is verified against its sha256 once per process before use, a partial download (`.part`) is
resumed from its size (HTTP Range), and a file whose hash is wrong is deleted and fetched once
more from scratch before giving up with an error that names it. A file lock per object lets
several ranks on one host share the cache without fetching the same shard twice.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlparse

import httpx

from contract.locations import local_path, scheme_of
from contract.shards import sha256_file

CHUNK = 1 << 20
DEFAULT_CACHE_DIR = Path(os.environ.get("FLYWHEEL_CACHE", Path.home() / ".cache" / "flywheel" / "shards"))


class FetchError(OSError):
    """A file could not be read. `retryable` is true for transport failures (resume may help)."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class CorruptFileError(FetchError):
    """A file's content does not match its manifest sha256, even after one fresh fetch."""


class Fetcher:
    """Reads locations: whole (`read_bytes`), streamed (`iter_chunks`) or appended to a file."""

    def __init__(self, timeout_s: float = 60.0) -> None:
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
        self._http: httpx.Client | None = None
        self._filesystems: dict[str, Any] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> "Fetcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Clients and filesystems do not cross process boundaries; each process opens its own.
        return {"_timeout": self._timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()
        self._timeout = state["_timeout"]

    def read_bytes(self, location: str) -> bytes:
        return b"".join(self.iter_chunks(location))

    def iter_chunks(self, location: str, start: int = 0) -> Iterator[bytes]:
        """The bytes of `location` from offset `start` (the whole file when 0)."""
        if (path := local_path(location)) is not None:
            yield from _file_chunks(path, start, location)
        elif scheme_of(location) in ("http", "https"):
            offset, response = self._http_get(location, start)
            if offset != start:
                response.close()
                raise FetchError(f"{location}: server ignored the Range request (needed offset {start})")
            yield from _http_chunks(response, location)
        else:
            yield from _arrow_chunks(*self._arrow(location), start, location)

    def append_to(self, location: str, f: BinaryIO, start: int) -> None:
        """Write the bytes of `location` from `start` into `f`, which holds the first `start`.

        When an HTTP server answers a Range request with the whole file, `f` is rewritten.
        """
        if scheme_of(location) in ("http", "https"):
            offset, response = self._http_get(location, start)
            if offset == 0 and start:
                f.seek(0)
                f.truncate()
            chunks = _http_chunks(response, location)
        else:
            chunks = self.iter_chunks(location, start)
        for chunk in chunks:
            f.write(chunk)

    def _http_get(self, url: str, start: int) -> tuple[int, httpx.Response]:
        """Open a streamed GET (Range from `start` when > 0): (offset of its first byte, response)."""
        with self._lock:  # prefetch threads share one client (and its connection pool)
            if self._http is None:
                self._http = httpx.Client(timeout=self._timeout, follow_redirects=True)
        # identity: Range offsets then count file bytes, and nothing decodes what we hash.
        headers = {"Accept-Encoding": "identity"}
        # The curation service wants a bearer token unless it runs with --no-auth.
        if token := os.environ.get("FLYWHEEL_TOKEN"):
            headers["Authorization"] = f"Bearer {token}"
        if start:
            headers["Range"] = f"bytes={start}-"
        try:
            response = self._http.send(self._http.build_request("GET", url, headers=headers), stream=True)
        except httpx.TransportError as e:
            raise FetchError(f"{url}: {type(e).__name__}: {e}", retryable=True) from e
        if start and response.status_code == 416:
            # Nothing after `start`: the partial file is already whole (or too long); the hash decides.
            return start, response
        if response.status_code not in (200, 206):
            response.close()
            raise FetchError(f"{url}: HTTP {response.status_code}", retryable=response.status_code >= 500)
        offset = 0
        if response.status_code == 206:
            content_range = response.headers.get("content-range", "")
            if not content_range.startswith(f"bytes {start}-"):
                response.close()
                raise FetchError(f"{url}: asked for bytes {start}-, got Content-Range {content_range!r}")
            offset = start
        return offset, response

    def _arrow(self, location: str) -> tuple[Any, str]:
        """(pyarrow filesystem, path in it); one filesystem per scheme://netloc, made once."""
        from pyarrow import fs as pafs  # only object stores need it

        parsed = urlparse(location)
        key = f"{parsed.scheme}://{parsed.netloc}"
        full = parsed.netloc + unquote(parsed.path)
        if key not in self._filesystems:
            # NOTE: from_uri may contact the store (S3 region lookup): do it once per bucket, and
            # learn how this scheme maps a URI to a path ("bucket/key" for s3, "/path" for hdfs).
            filesystem, path = pafs.FileSystem.from_uri(location)
            self._filesystems[key] = (filesystem, len(full) - len(path))
            return filesystem, path
        filesystem, strip = self._filesystems[key]
        return filesystem, full[strip:]


def _file_chunks(path: Path, start: int, location: str) -> Iterator[bytes]:
    try:
        f = open(path, "rb")
    except OSError as e:
        raise FetchError(f"{location}: {e.strerror or e}") from e
    with f:
        f.seek(start)
        while chunk := f.read(CHUNK):
            yield chunk


def _http_chunks(response: httpx.Response, url: str) -> Iterator[bytes]:
    if response.status_code == 416:
        response.close()
        return
    try:
        # iter_raw yields bytes as they arrive, so a dropped connection loses nothing received.
        yield from response.iter_raw()
    except httpx.TransportError as e:  # includes a body cut short of its Content-Length
        raise FetchError(f"{url}: {type(e).__name__}: {e}", retryable=True) from e
    finally:
        response.close()


def _arrow_chunks(filesystem: Any, path: str, start: int, location: str) -> Iterator[bytes]:
    try:
        f = filesystem.open_input_file(path)
    except OSError as e:
        raise FetchError(f"{location}: {e}") from e
    with f:
        f.seek(start)
        while chunk := f.read(CHUNK):
            yield bytes(chunk)


class ShardCache:
    """Remote files in a local, content-addressed, sha256-verified cache."""

    def __init__(self, cache_dir: str | os.PathLike | None, fetcher: Fetcher, retries: int = 3) -> None:
        self.root = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
        self.fetcher = fetcher
        self.retries = retries
        self._verified: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        # Another process re-verifies what it uses: its view of the disk may be older.
        return {**self.__dict__, "_verified": set()}

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def get(self, location: str, sha256: str, size: int, name: str) -> Path:
        """A verified local copy of `location` (expected `size` bytes, `sha256`); `name` is for errors."""
        final = self.path_for(sha256)
        if sha256 in self._verified and final.exists():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        part = final.with_name(final.name + ".part")
        with _locked(final.with_name(final.name + ".lock")):
            if final.exists():
                if final.stat().st_size == size and sha256_file(final) == sha256:
                    self._verified.add(sha256)
                    return final
                final.unlink()  # a corrupted cache entry: fetch it again
            got = ""
            for fresh in (False, True):  # the second round starts from an empty file
                if fresh:
                    part.unlink(missing_ok=True)
                self._download(location, part, size)
                got = sha256_file(part)
                if part.stat().st_size == size and got == sha256:
                    os.replace(part, final)
                    self._verified.add(sha256)
                    return final
            actual = part.stat().st_size
            part.unlink(missing_ok=True)
            raise CorruptFileError(
                f"{name}: downloaded content does not match the manifest after a fresh refetch "
                f"(expected sha256 {sha256[:16]}... and {size} bytes, got {got[:16]}... and {actual} bytes "
                f"from {location})"
            )

    def _download(self, location: str, part: Path, size: int) -> None:
        """Complete `part` from `location`, resuming after transport failures."""
        for attempt in range(self.retries):
            have = part.stat().st_size if part.exists() else 0
            if have > size:
                part.unlink()
                have = 0
            if have == size:
                return
            try:
                with open(part, "ab") as f:
                    self.fetcher.append_to(location, f, have)
                return
            except FetchError as e:
                if not e.retryable or attempt == self.retries - 1:
                    raise
                time.sleep(0.2 * 2**attempt)


class _locked:
    """An exclusive flock on `path` for the duration of a `with` block."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)

