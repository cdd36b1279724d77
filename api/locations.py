"""Which files a request may point the service at: only those inside an allowed root.

Local paths are resolved (`os.path.realpath`: `..` and symlinks) before the containment check,
so a symlink inside a root that points outside it is refused too.

Remote URIs (s3://...) are parsed, not compared as strings: `pyarrow.fs.FileSystem.from_uri`
reads options from a URI's query (`endpoint_override`, `scheme`, ...) and credentials from its
userinfo, so `s3://allowed/x?endpoint_override=HOST` would send the service's signed requests
to a host of the caller's choosing. A query, fragment or userinfo is refused outright; then the
scheme, the bucket (host) and the path segments are compared separately, on a path with no
empty, `.` or `..` segment (percent-decoded, as pyarrow decodes it).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit


class LocationError(ValueError):
    """A URI that is malformed or carries options (422)."""

    status = 422


class LocationForbidden(PermissionError):
    """A URI outside every allowed root, or registration disabled (403)."""

    status = 403


@dataclass(frozen=True)
class RemoteLocation:
    scheme: str
    bucket: str
    segments: tuple[str, ...]

    def inside(self, root: RemoteLocation) -> bool:
        return (self.scheme, self.bucket) == (root.scheme, root.bucket) and \
            self.segments[:len(root.segments)] == root.segments


def _split(uri: str) -> SplitResult:
    try:
        return urlsplit(uri)
    except ValueError as e:  # "Invalid IPv6 URL": a 422, not a 500
        raise LocationError(f"uri: not a valid URI ({e})") from None


def _scheme(uri: str) -> str:
    s = _split(uri).scheme.lower()
    return s if len(s) > 1 else ""  # "C:" is a drive, not a scheme


def _root_scheme(root: str) -> str | None:
    """A root's scheme; None for a malformed root in the settings (it allows nothing)."""
    try:
        return _scheme(root)
    except LocationError:
        return None


def _refuse_options(uri: str) -> None:
    """pyarrow reads filesystem options from a query and credentials from userinfo: none may come
    from a request."""
    parts = _split(uri)
    if parts.query or "?" in uri:
        raise LocationError("uri: a query string is not allowed (it would set filesystem options)")
    if parts.fragment or "#" in uri:
        raise LocationError("uri: a fragment is not allowed")
    if "@" in parts.netloc:
        raise LocationError("uri: credentials (user@) are not allowed in a URI")


def _local_path(uri: str) -> str | None:
    """The path of a plain path or file:// URI; None for a remote URI."""
    scheme = _scheme(uri)
    if scheme == "":
        return uri
    if scheme == "file":
        parts = _split(uri)
        if parts.netloc not in ("", "localhost"):
            raise LocationError("uri: a file:// URI names no host")
        return unquote(parts.path)
    return None


def parse_remote(uri: str) -> RemoteLocation:
    """Scheme, bucket and path segments of a remote URI; LocationError unless it is plain."""
    _refuse_options(uri)
    parts = _split(uri)
    if not parts.netloc:
        raise LocationError(f"uri: {uri} names no bucket")
    segments = unquote(parts.path).split("/")
    if segments and segments[0] == "":
        segments = segments[1:]
    if segments and segments[-1] == "":  # one trailing slash: a folder
        segments = segments[:-1]
    if any(seg in ("", ".", "..") for seg in segments):
        raise LocationError("uri: empty, '.' or '..' path segments are not allowed")
    return RemoteLocation(parts.scheme.lower(), parts.netloc, tuple(segments))


def _allowed_local(uri: str, local: str, roots: tuple[str, ...]) -> str:
    if not os.path.isabs(local):
        raise LocationError("uri: a local path must be absolute")
    real = os.path.realpath(local)
    for root in roots:
        if _root_scheme(root) not in ("", "file"):
            continue
        try:
            root_local = _local_path(root)
        except LocationError:  # file://host/... in the settings allows nothing
            continue
        base = os.path.realpath(root_local)
        if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
            return real
    raise LocationForbidden(f"uri: {uri} is outside the allowed roots")


def _allowed_remote(uri: str, roots: tuple[str, ...]) -> str:
    location = parse_remote(uri)
    for root in roots:
        if _root_scheme(root) in (None, "", "file"):
            continue
        try:
            root_location = parse_remote(root)
        except LocationError:  # a malformed root in the settings allows nothing
            continue
        if location.inside(root_location):
            return uri
    raise LocationForbidden(f"uri: {uri} is outside the allowed roots")


def allowed_location(uri: str, roots: tuple[str, ...]) -> str:
    """The location to store for `uri` (a real local path, or the remote URI); raises if not allowed."""
    if not roots:
        raise LocationForbidden("registering corpora by URI is disabled: the server sets no FLYWHEEL_ALLOWED_ROOTS")
    decoded = unquote(uri)
    if "\x00" in decoded or any(seg == ".." for seg in re.split(r"[/\\]", decoded)):
        raise LocationError("uri: '..' segments are not allowed")
    _refuse_options(uri)
    local = _local_path(uri)
    if local is not None:
        return _allowed_local(uri, local, roots)
    return _allowed_remote(uri, roots)
