"""Duplicate input ids: the first occurrence is kept, later ones are `read` rejects (or the run stops)."""

import json

import pyarrow as pa
import pytest

from curation.config import parse_config
from curation.io.records import POSITION
from curation.io.unique_ids import DUPLICATE_ID, DuplicateIdError, later_copies
from curation.pipeline import run_pipeline
from tests.helpers import read_parquet_dir, write_jsonl


def test_later_copies_names_each_repeat_and_its_first_occurrence():
    block = pa.table({"id": ["x", "y", "x", "x", "z"], "source": ["b", "a", "a", "a", "a"],
                      POSITION: [0, 5, 40, 10, 0]})
    out = later_copies(block).to_pylist()
    # "x" first occurs in source a at 10 (sources sort before positions); a@40 and b@0 repeat it.
    assert out == [
        {"id": "x", "source": "a", POSITION: 40, "kept_source": "a", "kept_position": 10},
        {"id": "x", "source": "b", POSITION: 0, "kept_source": "a", "kept_position": 10},
    ]
    assert later_copies(block.slice(0, 2)).num_rows == 0


def corpus(root):
    write_jsonl(root / "in" / "a.jsonl", [{"id": f"d{i}", "text": f"text number {i}"} for i in range(30)]
                + [{"id": "d3", "text": "a second d3 in the same file"}])
    write_jsonl(root / "in" / "b.jsonl", [{"id": "d3", "text": "a third d3"}, {"id": "d7", "text": "another d7"},
                                          "{not json"])


@pytest.mark.slow
@pytest.mark.parametrize("check", ["driver", "shuffle"])
def test_duplicate_ids_are_rejected_after_the_first(ray_local, tmp_path, monkeypatch, check):
    if check == "shuffle":  # the path for inputs too big for the driver-side hash check
        monkeypatch.setattr("curation.io.unique_ids.DRIVER_CHECK_MAX_ROWS", 0)
    corpus(tmp_path)
    result = run_pipeline(parse_config({"inputs": [str(tmp_path / "in")], "output": str(tmp_path / "out"),
                                        "stages": ["exact_dedup"]}))
    read = result.stats.stages[0]
    assert read.docs_in == 34 and read.docs_out == 30
    assert read.dropped == {DUPLICATE_ID: 3, "malformed": 1}
    kept = read_parquet_dir(result.data_dir).to_pylist()
    assert sorted(r["id"] for r in kept) == sorted(f"d{i}" for i in range(30))
    assert {r["id"]: r["text"] for r in kept}["d3"] == "text number 3"
    assert POSITION not in read_parquet_dir(result.data_dir).column_names
    rejects = [r for r in read_parquet_dir(result.rejects_dir).to_pylist() if r["reason"] == DUPLICATE_ID]
    details = sorted((json.loads(r["detail"])["source"], r["id"]) for r in rejects)
    assert details == [("a.jsonl", "d3"), ("b.jsonl", "d3"), ("b.jsonl", "d7")]
    assert all(json.loads(r["detail"])["kept_source"] == "a.jsonl" for r in rejects)


@pytest.mark.slow
def test_duplicate_ids_policy_error_stops_the_run(ray_local, tmp_path):
    corpus(tmp_path)
    cfg = parse_config({"inputs": [str(tmp_path / "in")], "output": str(tmp_path / "out"), "duplicate_ids": "error"})
    with pytest.raises(DuplicateIdError, match=r"3 input records repeat an earlier record's id, e.g. 'd3' at"):
        run_pipeline(cfg)
    assert not (tmp_path / "out" / "stats.json").exists()
