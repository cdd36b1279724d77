"""Bounded reading: a compressed file stops inflating at its limit (ratio to its size on disk,
or an absolute cap) and the rest becomes one reject with its reason; tables are cut by the
characters of every string field a record sets, not its text alone."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import zstandard

import curation.io.reader as reader
from curation.io.files import plan_reads
from curation.io.reader import read_task_tables

MIB = 1024 * 1024
GOOD = [{"id": f"g{i}", "text": f"good document {i}"} for i in range(3)]


def read_all(path: Path, fast: bool = True) -> pa.Table:
    (task,) = plan_reads(str(path), "web")
    return pa.concat_tables(read_task_tables(task, fast=fast))


def write_bomb(path: Path, bomb_mib: int) -> Path:
    """Three good lines, then `bomb_mib` MiB of NUL bytes without a newline (as a gzip or zstd file)."""
    head = "".join(json.dumps(r) + "\n" for r in GOOD).encode()
    zeros = bytes(MIB)
    if path.suffix == ".gz":
        with gzip.GzipFile(path, "wb", compresslevel=6, mtime=0) as f:
            f.write(head)
            for _ in range(bomb_mib):
                f.write(zeros)
    else:
        with open(path, "wb") as raw, zstandard.ZstdCompressor().stream_writer(raw) as f:
            f.write(head)
            for _ in range(bomb_mib):
                f.write(zeros)
    return path


def errors(table: pa.Table) -> list[str]:
    return [json.loads(d)["error"] for d, r in zip(table["_detail"].to_pylist(), table["_reason"].to_pylist()) if r]


@pytest.fixture
def small_limits(monkeypatch):
    """A 64 KiB floor: a 16 MiB bomb (~16 KB as gzip, ~600 bytes as zstd) goes over its 200x ratio first."""
    monkeypatch.setattr(reader, "RATIO_FLOOR_BYTES", 64 * 1024)


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
@pytest.mark.parametrize("fast", [True, False])
def test_a_decompression_bomb_is_cut_at_its_ratio_and_the_rest_rejected_with_the_reason(tmp_path, small_limits,
                                                                                        suffix, fast):
    path = write_bomb(tmp_path / f"bomb{suffix}", 16)
    compressed = path.stat().st_size
    limit = reader.decompression_limit(compressed)
    assert limit == 200 * compressed < 16 * MIB  # the ratio decides here, not the floor or the cap
    table = read_all(path, fast)
    kept = table.filter(pc.equal(table["_reason"], ""))
    assert kept["id"].to_pylist() == [r["id"] for r in GOOD]  # what came before the bomb is kept
    (error,) = errors(table)
    assert error.startswith("decompression_limit: stopped after ") and f"is {limit:,}" in error
    (reject_id,) = table.filter(pc.not_equal(table["_reason"], ""))["id"].to_pylist()
    assert reject_id == f"{path.name}@{limit}"


def test_the_absolute_cap_applies_whatever_the_ratio(tmp_path, small_limits, monkeypatch):
    monkeypatch.setattr(reader, "MAX_DECOMPRESSED_BYTES", 2 * MIB)
    path = write_bomb(tmp_path / "bomb.jsonl.gz", 16)
    (error,) = errors(read_all(path))
    assert f"stopped after {2 * MIB:,} decompressed bytes" in error


def test_a_file_that_inflates_to_exactly_its_limit_is_read_whole(tmp_path, monkeypatch):
    lines = "".join(json.dumps({"id": f"x{i}", "text": "same words " * 20}) + "\n" for i in range(2000)).encode()
    path = tmp_path / "ok.jsonl.gz"
    path.write_bytes(gzip.compress(lines, mtime=0))
    monkeypatch.setattr(reader, "RATIO_FLOOR_BYTES", len(lines))
    monkeypatch.setattr(reader, "MAX_COMPRESSION_RATIO", 1)
    table = read_all(path)
    assert table.num_rows == 2000 and errors(table) == []


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("field", ["metadata", "id", "url"])
def test_tables_are_bounded_by_every_string_field_not_just_text(tmp_path, monkeypatch, suffix, field):
    """A record's bytes may sit outside `text`: 4,096 rows of 64 MB metadata would be one 256 GB table."""
    monkeypatch.setattr(reader, "TABLE_CHARS", 10_000)
    rows = [{"id": f"m{i}", "text": "short", "url": None, "metadata": None} for i in range(20)]
    for i, row in enumerate(rows):
        wide = "v" * 6000
        row[field] = {"metadata": json.dumps({"blob": wide}), "id": f"{i}-{wide}", "url": f"https://x.org/{wide}"}[field]
    path = tmp_path / f"wide{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows))
    (task,) = plan_reads(str(path), "web")
    for fast in (True, False):
        tables = list(read_task_tables(task, fast=fast))
        assert [t.num_rows for t in tables] == [2] * 10  # ~6,000 chars a row: a table passes 10,000 at 2
        assert sum(errors(t) == [] for t in tables) == 10


def test_parquet_batches_shrink_for_wide_row_groups(tmp_path, monkeypatch):
    """The record batch is whole in memory before it is cut: it holds about TABLE_CHARS, not 4,096 rows."""
    monkeypatch.setattr(reader, "TABLE_CHARS", 100_000)
    path = tmp_path / "wide.parquet"
    rng = random.Random(0)  # incompressible text: the row group's size is its text's
    text = ["".join(rng.choice("abcdefghij") for _ in range(10_000)) for _ in range(100)]
    pq.write_table(pa.table({"text": text}), path, compression="none")
    assert reader._parquet_batch_rows(pq.ParquetFile(path)) <= 10
    assert reader._parquet_batch_rows(pq.ParquetFile(_narrow(tmp_path))) == reader.ROWS_PER_TABLE


def _narrow(tmp_path: Path) -> Path:
    path = tmp_path / "narrow.parquet"
    pq.write_table(pa.table({"text": ["a few words"] * 100}), path)
    return path
