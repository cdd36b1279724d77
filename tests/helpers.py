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


def docs_table(rows):
    """A document batch as stages see it, from (text, domain) pairs."""
    import pyarrow as pa

    return pa.table({
        "id": [f"d{i}" for i in range(len(rows))],
        "text": [t for t, _ in rows],
        "url": [None] * len(rows),
        "domain": pa.array([d for _, d in rows], pa.string()),
        "metadata": ["{}"] * len(rows),
        "source": ["test"] * len(rows),
        "n_tokens": pa.array([len(t.split()) for t, _ in rows], pa.int64()),
    })


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (tests bind servers to loopback only)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
