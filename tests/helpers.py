"""Small data makers shared by tests."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterable


def write_jsonl(path: Path, records: Iterable[Any], compression: str | None = None) -> Path:
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compression == "gzip":
        with gzip.GzipFile(path, "wb", mtime=0) as f:
            f.write(lines)
    elif compression == "zstd":
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor().compress(lines))
    else:
        path.write_bytes(lines)
    return path


def read_parquet_dir(path: Path):
    import pyarrow.parquet as pq
    import pyarrow as pa

    files = sorted(Path(path).glob("*.parquet"))
    if not files:
        return None
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
