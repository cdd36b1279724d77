"""The service with its storage on S3 and its database on PostgreSQL, as a cluster deploys it.

FLYWHEEL_STORAGE=s3://<bucket>/service on moto's S3 server on loopback (`tests/s3.py`), found
through the standard AWS variables only; the database is the throwaway PostgreSQL of `make test`
(FLYWHEEL_TEST_POSTGRES=1; skipped without it). A corpus is uploaded over REST, a dedup +
tokenize job runs on a Ray whose workers inherit the AWS variables, and everything it writes is
read back from the bucket: the served manifest, shards by Range and ETag, and the training
client's reader streaming the shards over HTTP.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.fs as pafs
import pytest

from api.uploads import upload_key
from tests.api.conftest import corpus_records, live_server, wait_for, write_jsonl
from tests.s3 import local_s3, ray_started_after_env

pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")

# PostgreSQL only: the database_url fixture skips it unless FLYWHEEL_TEST_POSTGRES=1.
pytestmark = [pytest.mark.slow,
              pytest.mark.parametrize("database_url", ["postgresql"], indirect=True, scope="module")]

PREFIX = "service"
MiB = 1024 * 1024
UPLOAD_LIMIT = 12 * MiB  # above pyarrow's 10 MiB S3 part (Arrow 26): uploads of several parts fit
# corpus_records(120): ids of the copies it plants, by the dedup stage that must drop them.
PLANTED = {"url": {f"u{i:03}" for i in range(10)}, "exact": {f"x{i:03}" for i in range(10)}}
CONFIG = {"seed": 7, "stages": [{"name": "url_dedup"}, {"name": "exact_dedup", "partitions": 2},
                                {"name": "tokenize", "vocab_size": 400, "shard_tokens": 1500}]}


@pytest.fixture(scope="module")
def s3():
    """moto on loopback, its AWS variables in os.environ for this module (the service reads them)."""
    with local_s3() as store, pytest.MonkeyPatch.context() as mp:
        for k, v in store.env.items():
            mp.setenv(k, v)
        yield store


@pytest.fixture(scope="module")
def ray_with_s3_env(s3):
    """A Ray whose workers inherit the AWS variables (the jobs' stages write to the bucket)."""
    with ray_started_after_env():
        yield


@pytest.fixture(scope="module")
def server(database_url, service_home, s3, ray_with_s3_env):
    """The service on storage s3://<bucket>/service (replaces conftest's `server` for this module).
    `database_url` first: without PostgreSQL the module is skipped before moto and Ray start."""
    with live_server(service_home, database_url, storage=f"s3://{s3.bucket}/{PREFIX}", max_upload_bytes=UPLOAD_LIMIT,
                     allowed_roots=(f"s3://{s3.bucket}/incoming",)) as s:
        yield s


def bucket_files(s3, key: str) -> dict[str, int]:
    """{path below `key`: size} of the objects under s3://<bucket>/service/<key>, via the admin client."""
    base = f"{s3.bucket}/{PREFIX}/{key}".rstrip("/")
    infos = s3.admin().get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return {i.path.removeprefix(base + "/"): i.size for i in infos if i.type == pafs.FileType.File}


def read_object(s3, key: str) -> bytes:
    with s3.admin().open_input_stream(f"{s3.bucket}/{PREFIX}/{key}") as f:
        return f.read()


def bytes_served(client) -> float:
    text = client.get("/metrics").text
    return float(next(line.split()[-1] for line in text.splitlines()
                      if line.startswith("flywheel_shard_bytes_served_total")))


@pytest.fixture(scope="module")
def corpus(admin, tmp_path_factory) -> dict:
    records, planted = corpus_records(120, seed=11)
    assert planted == PLANTED
    path = write_jsonl(tmp_path_factory.mktemp("upload") / "web.jsonl", records)
    with open(path, "rb") as f:
        r = admin.post("/v1/corpora", files={"file": ("web.jsonl", f)}, data={"domain": "web"})
    assert r.status_code == 201, r.text
    return {**r.json(), "bytes": path.read_bytes()}


@pytest.fixture(scope="module")
def job(admin, reader, corpus) -> dict:
    created = admin.post("/v1/jobs", json={"corpus_ids": [corpus["id"]], "config": CONFIG})
    assert created.status_code == 201, created.text
    done = wait_for(lambda: (j := reader.get(f"/v1/jobs/{created.json()['id']}").json())["state"]
                    in ("succeeded", "failed", "cancelled") and j, timeout=240)
    assert done["state"] == "succeeded", done["error"]
    assert done["manifest_id"]
    return done


@pytest.fixture(scope="module")
def manifest(reader, job) -> dict:
    r = reader.get(f"/v1/manifests/{job['manifest_id']}")
    assert r.status_code == 200, r.text
    return r.json()


def test_upload_is_stored_in_the_bucket(s3, server, corpus, service_home):
    key = f"corpora/{corpus['id']}/web.jsonl"
    assert corpus["uri"] == f"s3://{s3.bucket}/{PREFIX}/{key}" and corpus["state"] == "ready"
    assert read_object(s3, key) == corpus["bytes"]
    assert corpus["sha256"] == hashlib.sha256(corpus["bytes"]).hexdigest()
    # Written in place, not in tmp/ and then copied (S3's CopyObject stops at 5 GiB).
    assert upload_key(server.services.storage, f"corpora/{corpus['id']}", "web.jsonl") == key
    assert bucket_files(s3, "tmp") == {}
    assert list(service_home.rglob("*")) == []  # nothing went to the local home (database: PostgreSQL)


def test_an_upload_of_several_parts(s3, admin):
    """Bigger than one S3 part: the stream goes to the bucket part by part, in its final place."""
    line = json.dumps({"text": "many words " * 50}).encode() + b"\n"
    body = line * (11 * MiB // len(line))
    r = admin.post("/v1/corpora", files={"file": ("parts.jsonl", body)})
    assert r.status_code == 201, r.text
    assert r.json()["sha256"] == hashlib.sha256(body).hexdigest() and r.json()["documents"] == body.count(b"\n")
    assert read_object(s3, f"corpora/{r.json()['id']}/parts.jsonl") == body


def test_a_refused_upload_leaves_nothing_in_the_bucket(s3, admin, corpus):
    before = bucket_files(s3, "corpora")
    empty = admin.post("/v1/corpora", files={"file": ("bad.jsonl", b'{"no_text": 1}\n' * 100)})
    assert empty.status_code == 422, empty.text  # no valid documents: counted after it was stored
    too_big = admin.post("/v1/corpora", files={"file": ("big.jsonl", b"x" * (UPLOAD_LIMIT + 1024))})
    assert too_big.status_code == 413, too_big.text  # over the limit part-way through the stream
    assert bucket_files(s3, "corpora") == before and bucket_files(s3, "tmp") == {}


def test_job_writes_its_outputs_to_the_bucket(s3, job, manifest):
    files = bucket_files(s3, f"jobs/{job['id']}")
    assert {"stats.json", "manifest.json", "tokenizer.json"} <= files.keys()
    assert any(p.startswith("data/") and p.endswith(".parquet") for p in files)
    assert any(p.startswith("rejects/") for p in files)  # url_dedup and exact_dedup dropped planted copies
    for shard in manifest["shards"]:
        assert files[shard["path"]] == shard["bytes"]
        assert shard["index_path"] in files
    stats = json.loads(read_object(s3, f"jobs/{job['id']}/stats.json"))
    assert [s["name"] for s in stats["stages"]] == ["read", "url_dedup", "exact_dedup", "tokenize"]
    assert stats["stages"][1]["dropped"] and stats["stages"][2]["dropped"]


def test_results_are_read_back_from_the_bucket(s3, reader, job, corpus):
    """stats, rejects and why: the web process reads the job's Parquet and JSON from S3."""
    stats = reader.get(f"/v1/jobs/{job['id']}/stats").json()
    assert stats == json.loads(read_object(s3, f"jobs/{job['id']}/stats.json"))
    rejects = reader.get(f"/v1/jobs/{job['id']}/rejects", params={"stage": "url_dedup"}).json()
    assert rejects["total"] == stats["stages"][1]["dropped"]["duplicate_url"] == len(PLANTED["url"])
    assert {r["id"] for r in rejects["items"]} == PLANTED["url"]
    gone = reader.get(f"/v1/documents/{job['id']}/{min(PLANTED['exact'])}/why").json()
    assert gone["status"] == "rejected" and gone["stage"] == "exact_dedup"
    assert reader.get(f"/v1/documents/{job['id']}/d050/why").json()["status"] == "kept"


def test_shards_are_served_from_the_bucket_with_range_and_etag(s3, reader, job, manifest):
    shard = manifest["shards"][0]
    stored = read_object(s3, f"jobs/{job['id']}/{shard['path']}")
    url = shard["url"]
    ranged = reader.get(url, headers={"Range": "bytes=10-1033"})
    assert ranged.status_code == 206 and ranged.content == stored[10:1034]
    assert ranged.headers["content-range"] == f"bytes 10-1033/{len(stored)}"
    whole = reader.get(url)
    assert whole.status_code == 200 and whole.content == stored
    assert hashlib.sha256(whole.content).hexdigest() == shard["sha256"]
    assert whole.headers["etag"] == f'"{shard["sha256"]}"'
    assert reader.get(url, headers={"If-None-Match": whole.headers["etag"]}).status_code == 304
    index = reader.get(shard["index_url"])
    assert hashlib.sha256(index.content).hexdigest() == shard["index_sha256"]
    tokenizer = reader.get(manifest["tokenizer"]["url"])
    assert tokenizer.status_code == 200
    assert hashlib.sha256(tokenizer.content).hexdigest() == manifest["tokenizer"]["sha256"]


def test_training_reader_streams_the_served_manifest(s3, server, tokens, reader, job, manifest, tmp_path,
                                                     monkeypatch):
    """The training client's reader, given the service's manifest URL: every shard comes over HTTP
    (the shard-bytes metric counts them) and its windows, end to end, are the tokens in the bucket."""
    from training.data.dataset import ManifestDataset  # the training client (torch-free part)

    assert manifest["totals"]["shards"] >= 2
    stored = np.concatenate([np.frombuffer(read_object(s3, f"jobs/{job['id']}/{s['path']}"), dtype=manifest["dtype"])
                             for s in manifest["shards"]])
    served_before = bytes_served(reader)
    monkeypatch.setenv("FLYWHEEL_TOKEN", tokens["read"])
    dataset = ManifestDataset(f"{server.url}/v1/manifests/{job['manifest_id']}", seq_len=32, seed=0,
                              cache_dir=tmp_path / "cache")
    try:
        windows = [dataset.window(i)[0] for i in range(dataset.sequences_per_epoch)]
    finally:
        dataset.close()
    read = np.concatenate([w[:-1] for w in windows] + [windows[-1][-1:]])
    assert len(stored) == manifest["totals"]["tokens"] and np.array_equal(read, stored[:len(read)])
    assert bytes_served(reader) - served_before >= sum(s["bytes"] for s in manifest["shards"])


def test_training_job_writes_checkpoints_and_metrics_to_the_bucket(s3, admin, reader, job, manifest):
    """POST /training-jobs with the service on S3: the job's actor trains from the s3:// manifest and
    its out_dir (train_config.json, metrics.jsonl, checkpoints/) is in the bucket; the service
    reads its progress back from there."""
    config = {"preset": "tiny", "steps": 3, "seq_len": 16, "global_batch_tokens": 64, "micro_batch": 4,
              "peak_tflops_per_worker": 0.05, "checkpoint_every_steps": 2}
    r = admin.post("/v1/training-jobs", json={"manifest_id": job["manifest_id"], "config": config})
    assert r.status_code == 201, r.text
    done = wait_for(lambda: (j := reader.get(f"/v1/training-jobs/{r.json()['id']}").json())["state"]
                    in ("succeeded", "failed", "cancelled") and j, timeout=240)
    assert done["state"] == "succeeded", done["error"]
    assert [p["step"] for p in done["loss_curve"]] == [1, 2, 3]
    assert done["checkpoints"] == ["step_00000002", "step_00000003"]
    out = f"{s3.bucket}/{PREFIX}/training/{done['id']}"
    stored = {i.path.removeprefix(out + "/") for i in s3.admin().get_file_info(pafs.FileSelector(out, recursive=True))
              if i.type == pafs.FileType.File}
    assert {"train_config.json", "metrics.jsonl", "checkpoints/step_00000003/meta.json",
            "checkpoints/step_00000003/.metadata"} <= stored


def test_missing_objects_answer_4xx_not_500(s3, reader, admin, job, manifest):
    """A corpus URI with no object behind it, and served files deleted from the bucket behind the
    service's back (an expired object): clear 4xx answers, before any byte of a body is sent."""
    r = admin.post("/v1/corpora", json={"uri": f"s3://{s3.bucket}/incoming/none.jsonl"})
    assert r.status_code == 422 and "not found" in r.json()["detail"], r.text
    shard, store = manifest["shards"][-1], f"{s3.bucket}/{PREFIX}/jobs/{job['id']}"
    s3.admin().delete_file(f"{store}/{shard['path']}")
    s3.admin().delete_file(f"{store}/{manifest['tokenizer']['path']}")
    for url in (shard["url"], manifest["tokenizer"]["url"]):
        assert reader.get(url).status_code == 410, url
        assert reader.head(url).status_code == 410, url
        assert reader.get(url, headers={"Range": "bytes=0-9"}).status_code == 410, url
    assert reader.get(shard["index_url"]).status_code == 200  # the rest is still served
