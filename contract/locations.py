"""Where a manifest's files live: a location is a local path, `file://`, `http(s)://` or any URI
that `pyarrow.fs` understands (`s3://`, `gs://`, ...). Relative paths in a manifest resolve against
the manifest's own location. Standard library only: the service and both halves parse locations.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse


def scheme_of(location: str) -> str:
    parsed = urlparse(location)
    # A one-letter "scheme" is a Windows drive, not a URI.
    return parsed.scheme.lower() if len(parsed.scheme) > 1 else ""


def local_path(location: str) -> Path | None:
    """The local filesystem path of a plain path or file:// URI; None for remote locations."""
    scheme = scheme_of(location)
    if scheme == "":
        return Path(location)
    if scheme == "file":
        parsed = urlparse(location)
        return Path(unquote(parsed.path))
    return None


def resolve(base: str, relative: str) -> str:
    """`relative` (POSIX path) against the folder holding the file at location `base`."""
    scheme = scheme_of(base)
    if scheme in ("http", "https"):
        return urljoin(base, relative)
    path = local_path(base)
    if path is not None:
        return str(path.parent / relative)
    return base.rsplit("/", 1)[0] + "/" + relative


def relative_location(location: str, base_dir: str) -> str:
    """`location` as a POSIX path relative to the folder `base_dir` (both local, or both URIs of
    one store): how a manifest names the files beside it."""
    local, base = local_path(location), local_path(base_dir)
    if local is not None and base is not None:
        return Path(os.path.relpath(local.resolve(), base.resolve())).as_posix()
    prefix = base_dir.rstrip("/") + "/"
    if local is not None or base is not None or not location.startswith(prefix):
        raise ValueError(f"{location} is not inside {base_dir}")
    return location[len(prefix):]


def parent_location(location: str) -> str:
    """The folder holding the file at `location` (a local path or a URI)."""
    local = local_path(location)
    if local is not None and scheme_of(location) == "":
        return str(local.parent)
    return location.rstrip("/").rsplit("/", 1)[0]
