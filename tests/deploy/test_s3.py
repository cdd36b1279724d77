"""The `s3://` storage path, for real, against moto's S3 server on loopback (`tests/s3.py`).

The deploy files point the service and the curation workers at object storage with the standard
AWS variables only, so `curation/io/files.py` needs no S3 options of its own.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tests.s3 import BUCKET, KEY, REGION, SECRET, local_s3, ray_started_after_env

pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 on 127.0.0.1 with the AWS variables a pod would get; one bucket created."""
    with local_s3() as s3, pytest.MonkeyPatch.context() as mp:
        for k, v in s3.env.items():
            mp.setenv(k, v)
        yield s3.endpoint


def test_s3filesystem_reads_writes_lists_and_deletes(s3_endpoint):
    host = s3_endpoint.removeprefix("http://")
    fs = pafs.S3FileSystem(endpoint_override=host, scheme="http", access_key=KEY, secret_key=SECRET, region=REGION)
    payload = os.urandom(6 * 1024 * 1024 + 17)  # over pyarrow's 5 MB upload part: a multipart upload
    with fs.open_output_stream(f"{BUCKET}/probe/blob.bin") as f:
        f.write(payload)
    info = fs.get_file_info(f"{BUCKET}/probe/blob.bin")
    assert info.type == pafs.FileType.File and info.size == len(payload)
    with fs.open_input_file(f"{BUCKET}/probe/blob.bin") as f:
        assert f.read() == payload
        f.seek(len(payload) - 17)  # ranged GET, as shard readers do
        assert f.read() == payload[-17:]
    table = pa.table({"id": ["a", "b"], "n": [1, 2]})
    pq.write_table(table, f"{BUCKET}/probe/t.parquet", filesystem=fs)
    assert pq.read_table(f"{BUCKET}/probe/t.parquet", filesystem=fs).equals(table)
    listed = {i.path for i in fs.get_file_info(pafs.FileSelector(f"{BUCKET}/probe"))}
    assert listed == {f"{BUCKET}/probe/blob.bin", f"{BUCKET}/probe/t.parquet"}
    fs.delete_dir(f"{BUCKET}/probe")
    assert fs.get_file_info(f"{BUCKET}/probe/t.parquet").type == pafs.FileType.NotFound


def test_from_uri_uses_the_endpoint_from_the_environment(s3_endpoint):
    """What `contract.stores.filesystem_for` does with an s3:// URI in a configured pod."""
    from contract.stores import filesystem_for

    fs, path = filesystem_for(f"s3://{BUCKET}/env/hello.txt")
    assert isinstance(fs, pafs.S3FileSystem) and path == f"{BUCKET}/env/hello.txt"
    with fs.open_output_stream(path) as f:
        f.write(b"through AWS_ENDPOINT_URL_S3")
    fs2, _ = pafs.FileSystem.from_uri(f"s3://{BUCKET}/env/")
    with fs2.open_input_stream(path) as f:
        assert f.read() == b"through AWS_ENDPOINT_URL_S3"


@pytest.fixture(scope="module")
def ray_with_s3_env(s3_endpoint):
    with ray_started_after_env():
        yield


@pytest.mark.slow
def test_pipeline_reads_and_writes_s3(ray_with_s3_env):
    from curation.config import parse_config
    from curation.pipeline import run_pipeline

    fs, _ = pafs.FileSystem.from_uri(f"s3://{BUCKET}/")
    docs = [{"id": f"d{i:02}", "text": f"Document {i} about storage.", "url": f"https://ex.org/p/{i}"}
            for i in range(30)]
    docs += [{"id": "d90", "text": "copy of a page", "url": "https://EX.org/p/3?utm_source=x"},
             {"id": "d91", "text": "  DOCUMENT 5 about   storage.", "url": None}]
    lines = "".join(json.dumps(d) + "\n" for d in docs) + "{not json\n"
    with fs.open_output_stream(f"{BUCKET}/raw/part-0.jsonl") as f:
        f.write(lines.encode())

    cfg = parse_config({"inputs": [f"s3://{BUCKET}/raw/"], "output": f"s3://{BUCKET}/runs/r1", "seed": 3,
                        "stages": ["url_dedup", "exact_dedup"]})
    result = run_pipeline(cfg)

    with fs.open_input_stream(f"{BUCKET}/runs/r1/stats.json") as f:
        stats = json.loads(f.read())
    read, url, exact = stats["stages"]
    assert read["docs_in"] == len(docs) + 1 and read["dropped"] == {"malformed": 1}
    assert url["dropped"] == {"duplicate_url": 1} and exact["dropped"] == {"exact_duplicate": 1}
    assert result.stats_path == f"s3://{BUCKET}/runs/r1/stats.json"

    kept = pq.read_table(f"{BUCKET}/runs/r1/data", filesystem=fs)
    assert kept.num_rows == exact["docs_out"] == len(docs) - 2
    assert {"d90", "d91"}.isdisjoint(kept.column("id").to_pylist())
    rejects = pq.read_table(f"{BUCKET}/runs/r1/rejects", filesystem=fs)
    assert sorted(rejects.column("reason").to_pylist()) == ["duplicate_url", "exact_duplicate", "malformed"]


@pytest.mark.slow
def test_curate_to_tokens_and_train_reads_with_nothing_but_s3(ray_with_s3_env, tmp_path):
    """Dedup + tokenize from s3:// to s3://: the workers publish the shards straight to the store
    (no shared disk), the manifest is written last, `validate-manifest s3://` passes and the
    training client streams every token back through its cache."""
    from contract.manifest import parse_manifest
    from curation.config import parse_config
    from curation.pipeline import run_pipeline
    from training.data.dataset import ManifestDataset
    from training.data.validate import validate_manifest

    fs, _ = pafs.FileSystem.from_uri(f"s3://{BUCKET}/")
    words = "ships carry grain oil timber coal iron wool salt across seas rivers canals ports towns".split()
    docs = [{"id": f"t{i:03}", "text": " ".join(words[(i * 7 + k) % len(words)] for k in range(40 + i % 17))}
            for i in range(120)]
    with fs.open_output_stream(f"{BUCKET}/tok-raw/part-0.jsonl") as f:
        f.write("".join(json.dumps(d) + "\n" for d in docs).encode())
    out = f"s3://{BUCKET}/runs/tok"
    config = {"inputs": [f"s3://{BUCKET}/tok-raw/"], "output": out, "seed": 5,
              "stages": ["exact_dedup", {"name": "tokenize", "vocab_size": 300, "shard_tokens": 1500}]}
    result = run_pipeline(parse_config(config))
    assert result.extra["tokenize"] == f"{out}/manifest.json"

    assert validate_manifest(f"{out}/manifest.json") == []
    with fs.open_input_stream(f"{BUCKET}/runs/tok/manifest.json") as f:
        manifest = parse_manifest(f.read())
    assert manifest.totals.shards >= 3
    listed = sorted(i.path.rsplit("/", 1)[1] for i in fs.get_file_info(pafs.FileSelector(f"{BUCKET}/runs/tok/shards")))
    named = sorted(p.rsplit("/", 1)[1] for s in manifest.shards for p in (s.path, s.index_path))
    assert listed == named  # nothing else was left in the store (no scratch, no temporaries)

    # The reader's windows, laid end to end, are the shards' tokens as they lie in the store.
    stored = []
    for shard in manifest.shards:
        with fs.open_input_file(f"{BUCKET}/runs/tok/{shard.path}") as f:
            stored.append(np.frombuffer(f.read(), dtype=manifest.dtype))
    stream = np.concatenate(stored)
    dataset = ManifestDataset(f"{out}/manifest.json", seq_len=32, seed=0, cache_dir=tmp_path / "cache")
    windows = [dataset.window(i)[0] for i in range(dataset.sequences_per_epoch)]
    read = np.concatenate([w[:-1] for w in windows] + [windows[-1][-1:]])
    assert len(stream) == manifest.totals.tokens and np.array_equal(read, stream[:len(read)])
    dataset.close()

    # `flywheel train --manifest s3://...`: the trainer reads the manifest and shards from the store.
    from training.checkpoint import read_meta
    from training.cli import train_command
    from training.metrics_log import read_metrics

    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps({"seq_len": 16, "global_batch_tokens": 64, "micro_batch": 4}))
    train_out = f"s3://{BUCKET}/runs/train"  # `--out s3://...`: checkpoints and metrics.jsonl in the store
    summary = train_command(config_file, manifest=f"{out}/manifest.json", preset="tiny", steps=2, workers=1,
                            out=train_out, local=True)
    assert summary["steps"] == 2 and summary["loss_last"] > 0
    assert summary["checkpoints"] == f"{train_out}/checkpoints"
    # A second run to step 4 resumes from the step-2 checkpoint it reads back from the store.
    summary = train_command(config_file, manifest=f"{out}/manifest.json", preset="tiny", steps=4, workers=1,
                            out=train_out, local=True)
    records = read_metrics(train_out)
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[2]["consumed_start"] == records[1]["consumed"]
    assert read_meta(f"{train_out}/checkpoints/step_00000004")["step"] == 4
    stored = {i.base_name for i in fs.get_file_info(pafs.FileSelector(f"{BUCKET}/runs/train", recursive=True))}
    assert {"metrics.jsonl", "meta.json", ".metadata", "__0_0.distcp"} <= stored
    assert not (tmp_path / "train").exists() and not any(tmp_path.rglob("*.distcp"))  # nothing written locally

    # A rerun over the same output republishes the same names; the new manifest validates.
    from curation.pipeline import Pipeline

    Pipeline(parse_config(config), overwrite=True).run()
    with fs.open_input_stream(f"{BUCKET}/runs/tok/manifest.json") as f:
        assert [s.path for s in parse_manifest(f.read()).shards] == [s.path for s in manifest.shards]
    assert validate_manifest(f"{out}/manifest.json") == []
