"""Corpora: streamed uploads (JSONL, gzip, Parquet), counts, sha256, size limit, URI registration,
and 4xx (never 500, never a partial corpus) for everything a client can get wrong."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from api.locations import LocationError, LocationForbidden, allowed_location
from tests.api.conftest import corpus_records, live_server, wait_for, write_jsonl


def _files_under(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _count(reader) -> int:
    return reader.get("/v1/corpora").json()["total"]


def test_upload_jsonl_is_counted_and_hashed(admin, reader, tmp_path):
    records, _ = corpus_records()
    path = write_jsonl(tmp_path / "web.jsonl", records, extra_lines=("{not json",))
    with open(path, "rb") as f:
        r = admin.post("/v1/corpora", files={"file": ("web.jsonl", f)}, data={"name": "crawl"})
    assert r.status_code == 201, r.text
    corpus = r.json()
    assert corpus["id"].startswith("cor_") and corpus["state"] == "ready" and corpus["name"] == "crawl"
    assert corpus["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert corpus["size_bytes"] == path.stat().st_size
    assert corpus["documents"] == len(records) and corpus["malformed"] == 1
    assert corpus["domains"] == {"web": sum(r.get("domain") != "wiki" for r in records),
                                 "wiki": sum(r.get("domain") == "wiki" for r in records)}
    assert reader.get(f"/v1/corpora/{corpus['id']}").json() == corpus
    assert corpus["id"] in [c["id"] for c in reader.get("/v1/corpora").json()["items"]]


def test_upload_gzip_and_parquet(admin, tmp_path):
    records, _ = corpus_records(60, seed=1)
    gz = tmp_path / "a.jsonl.gz"
    gz.write_bytes(gzip.compress(write_jsonl(tmp_path / "a.jsonl", records).read_bytes(), mtime=0))
    pq_path = tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": r["id"], "text": r["text"]} for r in records]), pq_path)
    for path in (gz, pq_path):
        with open(path, "rb") as f:
            r = admin.post("/v1/corpora", files={"file": (path.name, f)}, data={"domain": "books"})
        assert r.status_code == 201, r.text
        assert r.json()["documents"] == 60
    assert r.json()["domains"] == {"books": 60}  # the parquet rows carry no domain


def test_oversize_upload_is_413_and_leaves_nothing(server, admin, reader, tmp_path):
    before = _count(reader)
    limit = server.settings.max_upload_bytes
    big = tmp_path / "big.jsonl"
    # Declared Content-Length far over the limit: refused before the body is read.
    write_jsonl(big, [{"text": "x" * 1000}] * (3 * limit // 1000))
    with open(big, "rb") as f:
        r = admin.post("/v1/corpora", files={"file": ("big.jsonl", f)})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    # Just over the limit (inside the multipart allowance): refused while streaming.
    write_jsonl(big, [{"text": "y" * 998}] * (limit // 1000 + 1))
    assert limit < big.stat().st_size < limit + 4096
    with open(big, "rb") as f:
        r = admin.post("/v1/corpora", files={"file": ("big.jsonl", f)})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    assert _count(reader) == before
    storage = server.services.storage
    assert _files_under_storage(storage, "tmp") == []


def _files_under_storage(storage, key):
    from pathlib import Path

    root = Path(storage.path(key))
    return _files_under(root) if root.exists() else []


@pytest.mark.parametrize("name, body, status, words", [
    ("notes.txt", b'{"text": "a"}\n', 422, "unsupported file type"),
    ("empty.jsonl", b"", 422, "empty"),
    ("bad.parquet", b"PAR1 this is not parquet", 422, "no valid documents"),
    ("bad.jsonl.gz", b"\x1f\x8b\x08 not gzip at all", 422, "cannot be read"),
    ("junk.jsonl", b"{broken\n[1, 2]\n", 422, "no valid documents"),
])
def test_bad_uploads_are_4xx_and_unregistered(server, admin, reader, name, body, status, words):
    before = _count(reader)
    r = admin.post("/v1/corpora", files={"file": (name, body)})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert _count(reader) == before
    ids = {c["id"] for c in reader.get("/v1/corpora", params={"limit": 1000}).json()["items"]}
    folder = server.services.storage.path("corpora")  # absent until a first upload is accepted
    on_disk = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    assert on_disk == ids, "a corpus folder exists without its row"


def test_malformed_requests(admin):
    r = admin.post("/v1/corpora", files={"other": ("x.jsonl", b'{"text":"a"}\n')})
    assert r.status_code == 422 and "'file'" in r.json()["detail"]
    r = admin.post("/v1/corpora", content=b"hello", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = admin.post("/v1/corpora", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code in (400, 422)
    r = admin.post("/v1/corpora", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]
    r = admin.post("/v1/corpora", json={"uri": "/x", "colour": "red"})
    assert r.status_code == 422 and "colour" in r.json()["detail"]


def test_register_by_uri_inside_allowed_roots(server, admin, tmp_path):
    allowed = server.settings.home / "allowed"
    records, _ = corpus_records(40, seed=2)
    write_jsonl(allowed / "set" / "part-0.jsonl", records[:25])
    write_jsonl(allowed / "set" / "part-1.jsonl", records[25:])
    r = admin.post("/v1/corpora", json={"uri": str(allowed / "set"), "domain": "code"})
    assert r.status_code == 201, r.text
    c = r.json()
    assert c["source"] == "uri" and c["files"] == 2 and c["documents"] == 40 and c["sha256"] is None
    r = admin.post("/v1/corpora", json={"uri": "file://" + str(allowed / "set" / "part-0.jsonl")})
    assert r.status_code == 201 and r.json()["documents"] == 25

    outside = write_jsonl(tmp_path / "secret.jsonl", records[:3])
    (allowed / "link.jsonl").symlink_to(outside)
    cases = [
        (str(outside), 403), (str(allowed / "link.jsonl"), 403), (str(allowed / ".." / "x.jsonl"), 422),
        ("file://" + str(allowed) + "/%2e%2e/secret.jsonl", 422), ("relative/path.jsonl", 422),
        (str(allowed / "missing.jsonl"), 422), ("s3://bucket/data/", 403),
    ]
    for uri, status in cases:
        r = admin.post("/v1/corpora", json={"uri": uri})
        assert r.status_code == status, (uri, r.text)


def test_allowed_location_rules(tmp_path):
    with pytest.raises(LocationForbidden, match="disabled"):
        allowed_location(str(tmp_path), ())
    assert allowed_location("s3://lake/raw/a.jsonl", ("s3://lake/raw",)) == "s3://lake/raw/a.jsonl"
    with pytest.raises(LocationForbidden):
        allowed_location("s3://lake/rawer/a.jsonl", ("s3://lake/raw",))
    with pytest.raises(LocationError):
        allowed_location("s3://lake/raw/%2E%2E/b", ("s3://lake/raw",))


def test_large_corpus_is_counted_in_the_background(service_home, database_url, tmp_path):
    from api.auth import create_token

    records, _ = corpus_records(50, seed=3)
    path = write_jsonl(tmp_path / "later.jsonl", records)
    with live_server(service_home, database_url, scan_inline_bytes=0) as srv:
        with srv.services.db.session() as s:
            _, token = create_token(s, "bg", "admin", srv.settings.token_pepper)
        with srv.client(token) as c, open(path, "rb") as f:
            r = c.post("/v1/corpora", files={"file": ("later.jsonl", f)})
            assert r.status_code == 201 and r.json()["state"] == "scanning"
            cid = r.json()["id"]
            done = wait_for(lambda: (x := c.get(f"/v1/corpora/{cid}").json())["state"] != "scanning" and x, 30)
    assert done["state"] == "ready" and done["documents"] == 50


@pytest.mark.parametrize("path", [
    "/v1/corpora/..", "/v1/corpora/%2e%2e", "/v1/corpora/..%2F..%2Fetc%2Fpasswd", "/v1/corpora/%2Fetc%2Fpasswd",
    "/v1/corpora/cor_0123456789abcdef/../../healthz", "/v1/corpora/cor_..%2f..%2fx",
])
def test_path_traversal_in_corpus_id(server, tokens, path):
    # http.client sends the path byte for byte (httpx would normalise dot segments).
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", path, headers={"Authorization": f"Bearer {tokens['read']}"})
    status = conn.getresponse().status
    conn.close()
    assert 400 <= status < 500, (path, status)


def test_truncated_multipart_body_is_400(server, admin, reader):
    before = _count(reader)
    body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n'
            b'Content-Type: application/octet-stream\r\n\r\n{"text": "cut short"}\n')
    r = admin.post("/v1/corpora", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 400 and "boundary" in r.json()["detail"]
    assert _count(reader) == before and _files_under_storage(server.services.storage, "tmp") == []


def test_client_disconnect_mid_upload_leaves_nothing(server, tokens, reader):
    import socket

    before = _count(reader)
    host, port = server.url.removeprefix("http://").split(":")
    part = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="gone.jsonl"\r\n\r\n'
            + b'{"text": "partial"}\n' * 1000)
    head = (f"POST /v1/corpora HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {tokens['admin']}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 200000\r\n\r\n").encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + part)
        wait_for(lambda: _files_under_storage(server.services.storage, "tmp"), 10, 0.05)  # upload in flight
    wait_for(lambda: _files_under_storage(server.services.storage, "tmp") == [], 10, 0.1)
    assert _count(reader) == before
