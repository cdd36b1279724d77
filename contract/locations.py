"""Where a manifest's files live: a location is a local path, `file://`, `http(s)://` or any URI
that `pyarrow.fs` understands (`s3://`, `gs://`, ...). Relative paths in a manifest resolve against
the manifest's own location. Standard library only: the service and both halves parse locations.
"""

from __future__ import annotations

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
