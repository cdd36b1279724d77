"""Which existing files may be registered as a corpus by URI: only those inside an allowed root.

Local paths are resolved (`os.path.realpath`: `..` and symlinks) before the containment check,
so a symlink inside a root that points outside it is refused too. Remote URIs (s3://...) are
compared by prefix after refusing any `..` segment, percent-encoded or not.
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlparse


class LocationError(ValueError):
    """A URI that is malformed for registration (422)."""


class LocationForbidden(PermissionError):
    """A URI outside every allowed root, or registration disabled (403)."""


def _scheme(uri: str) -> str:
    s = urlparse(uri).scheme.lower()
    return s if len(s) > 1 else ""  # "C:" is a drive, not a scheme


def _local_path(uri: str) -> str | None:
    scheme = _scheme(uri)
    if scheme == "":
        return uri
    if scheme == "file":
        return unquote(urlparse(uri).path)
    return None


def allowed_location(uri: str, roots: tuple[str, ...]) -> str:
    """The location to store for `uri` (a real local path, or the remote URI); raises if not allowed."""
    if not roots:
        raise LocationForbidden("registering corpora by URI is disabled: the server sets no FLYWHEEL_ALLOWED_ROOTS")
    decoded = unquote(uri)
    if "\x00" in decoded or any(seg == ".." for seg in re.split(r"[/\\]", decoded)):
        raise LocationError("uri: '..' segments are not allowed")
    local = _local_path(uri)
    if local is not None:
        if not os.path.isabs(local):
            raise LocationError("uri: a local path must be absolute")
        real = os.path.realpath(local)
        for root in roots:
            root_local = _local_path(root)
            if root_local is None:
                continue
            base = os.path.realpath(root_local)
            if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
                return real
        raise LocationForbidden(f"uri: {uri} is outside the allowed roots")
    scheme = _scheme(uri)
    for root in roots:
        if _scheme(root) != scheme:
            continue
        prefix = root.rstrip("/") + "/"
        if uri == root.rstrip("/") or uri.startswith(prefix):
            return uri
    raise LocationForbidden(f"uri: {uri} is outside the allowed roots")
