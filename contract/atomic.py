"""All-or-nothing writes: a reader sees the whole new file or none of it, never a torn one.

Every file a run publishes for others to read (manifest.json, stats.json, the MinHash index's
metadata, shard indexes, ablation results) goes through here. The data goes to a temporary
sibling first and is then renamed over the target; a failure on the way (a full disk, a killed
process) removes the temporary.

`fs` is a `pyarrow.fs.FileSystem` for paths in any store Arrow opens. Without it, or with
Arrow's local filesystem, `path` is local and the bytes are fsync'ed before the rename, so a crash
cannot publish an empty file. An object store shows an uploaded object whole or not at all, and
its "rename" is a copy: there the bytes go straight to `path`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

OBJECT_STORES = frozenset({"s3", "gcs", "abfs"})  # pyarrow.fs type names


def write_atomic(path: str | Path, data: bytes, fs: Any = None) -> None:
    """Write `data` to `path` through a temporary sibling and a rename (one upload on a store)."""
    kind = getattr(fs, "type_name", None)
    if kind in OBJECT_STORES:
        with fs.open_output_stream(str(path)) as f:
            f.write(data)
        return
    if fs is None or kind == "local":
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # hidden: listings skip it
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk must not leave a torn temporary behind
            raise
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, str(path))
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise


def json_bytes(obj: Any) -> bytes:
    """The JSON every published document uses: indented, key order kept, a final newline."""
    return (json.dumps(obj, indent=2) + "\n").encode()


def write_json_atomic(path: str | Path, obj: Any, fs: Any = None) -> None:
    write_atomic(path, json_bytes(obj), fs)
