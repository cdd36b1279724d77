"""Readers on a real (embedded) Ray: every format, folders, byte-range splits, bad records."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.io.files import InputError, plan_reads
from curation.io.reader import read_documents
from curation.pipeline import tally
from tests.helpers import write_jsonl

pytestmark = pytest.mark.slow

RECORDS = [{"id": f"r{i}", "text": f"record {i} " * (i % 7 + 1), "url": f"https://x.org/{i}"} for i in range(50)]


def read_all(path, domain="web", **kw):
    import ray

    ds = read_documents(plan_reads(str(path), domain, **kw)).materialize()
    return pa.concat_tables(ray.get(ds.to_arrow_refs())).sort_by("id"), tally(ds)


@pytest.mark.parametrize("name,compression", [
    ("a.jsonl", None), ("a.jsonl.gz", "gzip"), ("a.jsonl.zst", "zstd"), ("a.ndjson", None)])
def test_jsonl_formats(ray_local, tmp_path, name, compression):
    write_jsonl(tmp_path / name, RECORDS, compression)
    table, counts = read_all(tmp_path / name, domain="books")
    assert counts == {"": (50, sum(len(r["text"].split()) for r in RECORDS))}
    assert sorted(table["id"].to_pylist()) == sorted(r["id"] for r in RECORDS)
    assert set(table["domain"].to_pylist()) == {"books"}
    assert set(table["source"].to_pylist()) == {name}


def test_parquet_and_folders(ray_local, tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{**r, "domain": "code"} for r in RECORDS[:20]]), tmp_path / "d" / "p.parquet")
    write_jsonl(tmp_path / "d" / "sub" / "j.jsonl.gz", RECORDS[20:], "gzip")
    (tmp_path / "d" / "README.txt").write_text("not data")  # ignored: not a data file
    table, counts = read_all(tmp_path / "d")
    assert counts[""][0] == 50
    by_id = {r["id"]: r for r in table.to_pylist()}
    assert by_id["r0"]["domain"] == "code" and by_id["r30"]["domain"] == "web"
    assert by_id["r30"]["source"] == "sub/j.jsonl.gz"


def test_byte_range_split_reads_the_same_records(ray_local, tmp_path):
    write_jsonl(tmp_path / "big.jsonl", RECORDS)
    tasks = plan_reads(str(tmp_path / "big.jsonl"), "web", chunk_bytes=97)
    assert len(tasks) > 10
    split, _ = read_all(tmp_path / "big.jsonl", chunk_bytes=97)
    whole, _ = read_all(tmp_path / "big.jsonl")
    assert split.equals(whole)


def test_malformed_records_become_rejects_never_crashes(ray_local, tmp_path):
    good = [json.dumps(r) for r in RECORDS[:3]]
    bad = [
        "{not json",                                   # bad_json
        '{"id": "t1", "text": 42}',                    # wrong type
        '{"id": "t2"}',                                # missing text
        '["a", "list"]',                               # not an object
        '{"id": "t3", "text": "x", "metadata": 5}',    # wrong type
        '{"text": "' + "\\ud800" + '"}',               # lone surrogate
        "[" * 100_000 + "]" * 100_000,                 # deeply nested
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(("\n".join(good + bad) + "\n").encode() + b'{"id": "u", "text": "\xff\xfe bad utf8"}\n')
    ds = read_documents(plan_reads(str(path), "web")).materialize()
    counts = tally(ds)
    assert counts[""][0] == 3 and counts["malformed"][0] == len(bad) + 1
    rejects = [r for r in ds.take_all() if r["_reason"] == "malformed"]
    errors = sorted(json.loads(r["_detail"])["error"].split(":")[0] for r in rejects)
    assert errors == sorted(["bad_json", "wrong_type", "missing_text", "not_an_object", "wrong_type",
                             "bad_value", "bad_json", "invalid_utf8"])
    ids = {r["id"] for r in rejects}
    assert ids >= {"t1", "t2", "t3"}  # ids survive when the record parses
    assert sum(i.startswith("mixed.jsonl@") for i in ids) == 5  # else file@offset


def test_missing_inputs_fail_before_any_work(tmp_path):
    with pytest.raises(InputError, match="input not found"):
        plan_reads(str(tmp_path / "nope"), "web")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no JSONL/Parquet files"):
        plan_reads(str(tmp_path / "empty"), "web")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(InputError, match="not a JSONL"):
        plan_reads(str(tmp_path / "x.csv"), "web")
