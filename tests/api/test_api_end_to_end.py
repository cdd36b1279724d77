"""The whole service path a training client relies on: upload a corpus, run a job that ends in
a tokenize stage on Ray, read its stats, fetch the manifest and download a shard by Range,
checking every byte against the manifest's sha256."""

from __future__ import annotations

import hashlib

import pytest

from tests.api.conftest import corpus_records, wait_for, write_jsonl

pytestmark = pytest.mark.slow

CONFIG = {"seed": 3, "stages": [{"name": "exact_dedup", "partitions": 2},
                                {"name": "tokenize", "vocab_size": 512, "shard_tokens": 4096}]}


def test_upload_job_manifest_and_ranged_shard_download(ray_local, server, admin, reader, tmp_path):
    records, _ = corpus_records(200, seed=5)
    path = write_jsonl(tmp_path / "web.jsonl", records)
    with open(path, "rb") as f:
        corpus = admin.post("/v1/corpora", files={"file": ("web.jsonl", f)})
    assert corpus.status_code == 201, corpus.text
    job = admin.post("/v1/jobs", json={"corpus_ids": [corpus.json()["id"]], "config": CONFIG}).json()
    done = wait_for(lambda: (j := reader.get(f"/v1/jobs/{job['id']}").json())["state"]
                    in ("succeeded", "failed", "cancelled") and j, timeout=240)
    assert done["state"] == "succeeded", done["error"]
    assert done["manifest_id"]

    stats = reader.get(f"/v1/jobs/{job['id']}/stats").json()
    names = [s["name"] for s in stats["stages"]]
    assert names == ["read", "exact_dedup", "tokenize"]
    assert all(s["docs_in"] == s["docs_out"] + sum(s["dropped"].values()) for s in stats["stages"])

    manifest = reader.get(f"/v1/manifests/{done['manifest_id']}").json()
    assert manifest["dtype"] == "uint16" and manifest["tokenizer"]["vocab_size"] <= 512
    assert manifest["totals"]["documents"] == stats["stages"][-1]["docs_out"]
    shard = manifest["shards"][0]
    assert shard["url"].startswith("http://127.0.0.1:")
    name = shard["path"].rsplit("/", 1)[-1]
    url = f"/v1/manifests/{done['manifest_id']}/shards/{name}"

    whole = reader.get(url)
    assert whole.status_code == 200 and int(whole.headers["content-length"]) == shard["bytes"]
    assert hashlib.sha256(whole.content).hexdigest() == shard["sha256"]
    assert whole.headers["etag"].strip('"') == shard["sha256"]
    # the same bytes in two Range requests
    half = shard["bytes"] // 2
    first = reader.get(url, headers={"Range": f"bytes=0-{half - 1}"})
    rest = reader.get(url, headers={"Range": f"bytes={half}-"})
    assert first.status_code == rest.status_code == 206
    assert hashlib.sha256(first.content + rest.content).hexdigest() == shard["sha256"]
    assert reader.get(url, headers={"If-None-Match": whole.headers["etag"]}).status_code == 304
