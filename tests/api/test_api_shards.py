"""Manifests and shard serving: a dataset written with training.data where a finished job leaves it,
registered as the job's actor registers it, its id read through GET /jobs/{id}; Range (206/416),
ETag/If-None-Match (304), HEAD, sha256 of the bytes, tokenizer by hash, path tricks in every path
parameter, and the training-side validator reading the manifest over HTTP."""

from __future__ import annotations

import hashlib
import http.client
import json

import pytest

from api.ids import new_id
from api.manifests import register_job_manifest
from api.models import Job
from contract.manifest import parse_manifest
from tests.api.conftest import live_server
from training.data.synthetic import write_synthetic_dataset
from training.data.validate import validate_manifest


@pytest.fixture(scope="module")
def finished(server):
    """A succeeded job whose output folder holds manifest.json, shards/ and tokenizer.json."""
    services = server.services
    job_id = new_id("job")
    out = services.storage.path(f"jobs/{job_id}")
    write_synthetic_dataset(out, total_tokens=120_000, target_tokens=40_000, vocab_size=50_000, seed=3,
                            dataset_id="api-test")
    with services.db.session() as s:
        s.add(Job(id=job_id, state="succeeded", corpus_ids=[], config={"stages": [], "seed": 0},
                  output_uri=services.storage.uri(f"jobs/{job_id}"), phase="done"))
        s.flush()
        register_job_manifest(s, job_id, services.storage.uri(f"jobs/{job_id}"))  # as the job's actor does
    manifest = parse_manifest((services.storage.fs.open_input_stream(f"{out}/manifest.json").read()))
    return {"job_id": job_id, "out": out, "manifest": manifest}


@pytest.fixture(scope="module")
def manifest_id(finished, reader) -> str:
    job = reader.get(f"/v1/jobs/{finished['job_id']}").json()
    assert job["manifest_id"], job
    return job["manifest_id"]


def test_manifest_is_discovered_listed_and_resolved(server, reader, finished, manifest_id):
    listed = reader.get("/v1/manifests").json()
    assert [m["id"] for m in listed["items"]] == [manifest_id]
    summary = listed["items"][0]
    m = finished["manifest"]
    assert summary["tokens"] == m.totals.tokens and summary["shards"] == m.totals.shards >= 3
    doc = reader.get(summary["url"]).json()
    parse_manifest(json.dumps(doc))  # still a valid manifest
    for shard in doc["shards"]:
        assert shard["url"] == f"{server.url}/v1/manifests/{manifest_id}/shards/{shard['path'].split('/')[-1]}"
        assert shard["index_url"].endswith(shard["index_path"].split("/")[-1])
    assert doc["tokenizer"]["url"] == f"{server.url}/v1/tokenizers/{m.tokenizer.sha256}"


def test_whole_files_match_their_sha256(reader, finished, manifest_id):
    doc = reader.get(f"/v1/manifests/{manifest_id}").json()
    for shard in doc["shards"]:
        r = reader.get(shard["url"])
        assert r.status_code == 200
        assert int(r.headers["content-length"]) == shard["bytes"] == len(r.content)
        assert r.headers["etag"] == f'"{shard["sha256"]}"' and r.headers["accept-ranges"] == "bytes"
        assert hashlib.sha256(r.content).hexdigest() == shard["sha256"]
        idx = reader.get(shard["index_url"])
        assert hashlib.sha256(idx.content).hexdigest() == shard["index_sha256"]
    tok = reader.get(doc["tokenizer"]["url"])
    assert tok.status_code == 200 and hashlib.sha256(tok.content).hexdigest() == doc["tokenizer"]["sha256"]


def test_ranges_etags_and_head(reader, finished, manifest_id):
    shard = finished["manifest"].shards[0]
    url = f"/v1/manifests/{manifest_id}/shards/{shard.path.split('/')[-1]}"
    whole = reader.get(url).content
    size = len(whole)
    for header, start, end in [("bytes=0-99", 0, 99), ("bytes=100-", 100, size - 1), ("bytes=-10", size - 10, size - 1),
                               (f"bytes=5-{size * 2}", 5, size - 1)]:
        r = reader.get(url, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.headers["content-range"] == f"bytes {start}-{end}/{size}"
        assert int(r.headers["content-length"]) == end - start + 1
        assert r.content == whole[start:end + 1]
    for header in (f"bytes={size}-", "bytes=-0"):
        r = reader.get(url, headers={"Range": header})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}"
    assert reader.get(url, headers={"Range": "bytes=0-1,5-6"}).status_code == 200  # multi-range: whole file
    etag = f'"{shard.sha256}"'
    r = reader.get(url, headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag
    assert reader.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    r = reader.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert r.status_code == 200 and len(r.content) == size  # If-Range mismatch: whole file
    r = reader.head(url)
    assert r.status_code == 200 and int(r.headers["content-length"]) == size and r.content == b""


def test_bytes_served_metric(reader, manifest_id):
    def served() -> float:
        text = reader.get("/metrics").text
        return float(next(line.split()[-1] for line in text.splitlines()
                          if line.startswith("flywheel_shard_bytes_served_total")))

    before = served()
    reader.get(f"/v1/manifests/{manifest_id}/shards/shard-00000.bin", headers={"Range": "bytes=0-999"})
    assert served() - before == 1000


@pytest.mark.parametrize("path", [
    "/v1/manifests/{m}/shards/..%2Fmanifest.json", "/v1/manifests/{m}/shards/..",
    "/v1/manifests/{m}/shards/%2e%2e", "/v1/manifests/{m}/shards/manifest.json",
    "/v1/manifests/{m}/shards/..%2F..%2F..%2Fflywheel.db", "/v1/manifests/{m}/shards/%2Fetc%2Fpasswd",
    "/v1/manifests/{m}/shards/shards%2Fshard-00000.bin", "/v1/manifests/{m}/shards/.shard-00000.bin.tmp",
    "/v1/manifests/..%2F{m}", "/v1/manifests/%2e%2e/shards/shard-00000.bin", "/v1/manifests/../../etc/passwd",
    "/v1/tokenizers/..%2Ftokenizer.json", "/v1/tokenizers/%2e%2e", "/v1/tokenizers/tokenizer.json",
    "/v1/jobs/..%2F..%2Fx", "/v1/jobs/%2e%2e/stats", "/v1/jobs/{j}/rejects?stage=..%2F..",
    "/v1/documents/%2e%2e/x/why",
])
def test_path_traversal_is_4xx(server, tokens, finished, manifest_id, path):
    path = path.format(m=manifest_id, j=finished["job_id"])
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", path, headers={"Authorization": f"Bearer {tokens['read']}"})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert 400 <= response.status < 500, (path, response.status, body[:200])


def test_training_validator_reads_the_served_manifest(service_home, database_url, finished, manifest_id):
    """The training client's validator, over HTTP: every shard URL resolves and hashes right."""
    with live_server(service_home, database_url, auth=False) as open_server:
        assert validate_manifest(f"{open_server.url}/v1/manifests/{manifest_id}") == []


def test_an_invalid_manifest_is_not_registered(server, reader):
    """A job whose manifest.json is broken keeps answering (no manifest_id, no 500)."""
    services = server.services
    job_id = new_id("job")
    with services.storage.open_write(f"jobs/{job_id}/manifest.json") as f:
        f.write(b'{"version": 1, "dataset_id": "x"}')
    with services.db.session() as s:
        s.add(Job(id=job_id, state="succeeded", corpus_ids=[], config={}, output_uri=services.storage.uri(f"jobs/{job_id}")))
    r = reader.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["manifest_id"] is None
    assert job_id not in [m["job_id"] for m in reader.get("/v1/manifests").json()["items"]]
