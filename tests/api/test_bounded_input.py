"""Input the service must bound before it costs memory: multipart part headers and the parts it
ignores, a body that goes on past its closing boundary, a request head of megabytes, a corpus
that is a decompression bomb, and a corpus scan that needs more memory than it may have (it runs
in a limited child process, so only the scan fails, never the web process)."""

from __future__ import annotations

import gzip
import socket
import uuid
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import live_server, sibling_database, wait_for, write_jsonl
from tests.api.serve_process import ServeProcess

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
DOCS = [{"id": f"b{i}", "text": f"an ordinary document number {i}"} for i in range(5)]


def multipart(parts: list[tuple[dict[str, str], bytes]]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data body made of (headers, data) parts."""
    boundary = uuid.uuid4().hex
    out = bytearray()
    for headers, data in parts:
        out += f"--{boundary}\r\n".encode()
        for name, value in headers.items():
            out += f"{name}: {value}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def file_part(data: bytes, name: str = "docs.jsonl", **extra: str) -> tuple[dict[str, str], bytes]:
    return {"Content-Disposition": f'form-data; name="file"; filename="{name}"', **extra}, data


def jsonl(records: list[dict]) -> bytes:
    import json

    return "".join(json.dumps(r) + "\n" for r in records).encode()


def corpus_count(server) -> int:
    from api.models import Corpus

    with server.services.db.session() as s:
        return s.query(Corpus).count()


# --- multipart ---------------------------------------------------------------------------------

def test_part_headers_past_the_allowance_are_413(server, admin):
    """python-multipart bounds the headers of one part; forty empty parts with 2 KiB of headers
    each pass that, hold no data, and add up to 80 KiB of parsing."""
    before = corpus_count(server)
    empty = [({"Content-Disposition": f'form-data; name="e{i}"', "X-Padding": "p" * 2048}, b"") for i in range(40)]
    body, ctype = multipart([*empty, file_part(jsonl(DOCS))])
    r = admin.post("/v1/corpora", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 413, r.text
    assert "part headers and fields" in r.json()["detail"]
    assert corpus_count(server) == before


def test_parts_the_service_ignores_count_against_the_allowance(server, admin):
    """Twenty 8 KiB parts of no known name: nothing kept, but the parser was fed 160 KiB."""
    junk = [({"Content-Disposition": f'form-data; name="junk{i}"'}, b"j" * 8192) for i in range(20)]
    body, ctype = multipart([*junk, file_part(jsonl(DOCS))])
    r = admin.post("/v1/corpora", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 413, r.text
    assert "part headers and fields" in r.json()["detail"]


def test_a_few_small_fields_still_upload(server, admin):
    fields = [({"Content-Disposition": 'form-data; name="name"'}, b"small corpus"),
              ({"Content-Disposition": 'form-data; name="domain"'}, b"web")]
    body, ctype = multipart([*fields, file_part(jsonl(DOCS))])
    r = admin.post("/v1/corpora", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 201, r.text
    assert r.json()["documents"] == len(DOCS) and r.json()["name"] == "small corpus"


def test_a_chunked_body_that_goes_on_past_its_closing_boundary_is_413(server, admin):
    """No Content-Length to refuse up front; the parser skips an epilogue, so only a count of the
    body's bytes stops it."""
    body, ctype = multipart([file_part(jsonl(DOCS))])
    limit = server.settings.max_upload_bytes

    def chunks():
        yield body
        for _ in range(limit // (64 * 1024) + 4):
            yield b"e" * (64 * 1024)

    r = admin.post("/v1/corpora", content=chunks(), headers={"Content-Type": ctype})
    assert r.status_code == 413, r.text
    assert "upload body exceeds" in r.json()["detail"]


# --- decompression ------------------------------------------------------------------------------

def test_a_decompression_bomb_is_refused_with_its_reason(server, admin, tmp_path):
    """128 MiB of NULs in ~130 KB of gzip: the scan stops at the decompression limit (64 MiB) and
    says so, instead of inflating it all."""
    path = tmp_path / "bomb.jsonl.gz"
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as f:
        for _ in range(128):
            f.write(bytes(MIB))
    assert path.stat().st_size < server.settings.max_upload_bytes
    with open(path, "rb") as f:
        r = admin.post("/v1/corpora", files={"file": ("bomb.jsonl.gz", f)})
    assert r.status_code == 422, r.text
    assert "no valid documents" in r.json()["detail"] and "decompression_limit" in r.json()["detail"]


# --- the scan runs in a memory-limited process ------------------------------------------------

def starved_server(home: Path, database_url: str, **overrides):
    """A service whose scan process may map 64 MiB: pyarrow alone needs more, so every scan fails."""
    (home / "allowed").mkdir(parents=True)
    database = sibling_database(database_url, home)  # its own, empty
    return live_server(home, database, auth=False, scan_memory_bytes=64 * MIB, **overrides)


def test_an_inline_scan_out_of_memory_fails_the_upload_not_the_service(tmp_path, database_url):
    with starved_server(tmp_path / "home", database_url) as server, server.client() as c:
        r = c.post("/v1/corpora", files={"file": ("docs.jsonl", jsonl(DOCS))})
        assert r.status_code == 422, r.text
        assert "corpus scan" in r.json()["detail"] and "64 MiB" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200
        assert c.get("/v1/corpora").json()["total"] == 0  # nothing half-registered


def test_a_background_scan_out_of_memory_marks_the_corpus_invalid(tmp_path, database_url):
    with starved_server(tmp_path / "home", database_url, scan_inline_bytes=0) as server, server.client() as c:
        path = write_jsonl(tmp_path / "home" / "allowed" / "docs.jsonl", DOCS)
        r = c.post("/v1/corpora", json={"uri": str(path)})
        assert r.status_code == 201 and r.json()["state"] == "scanning", r.text
        corpus = wait_for(lambda: (b := c.get(f"/v1/corpora/{r.json()['id']}").json())["state"] != "scanning" and b,
                          120)
        assert corpus["state"] == "invalid" and "corpus scan" in corpus["error"], corpus
        assert c.get("/healthz").status_code == 200


# --- the request head ------------------------------------------------------------------------------

def test_serve_refuses_a_request_head_of_megabytes(tmp_path):
    with ServeProcess(tmp_path / "home", "--no-auth") as serve:
        with socket.create_connection(("127.0.0.1", serve.port), timeout=30) as conn:
            answer = _send_huge_header(conn)
        assert not answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert httpx.get(f"{serve.url}/healthz", timeout=10).status_code == 200  # the server is fine


def _send_huge_header(conn: socket.socket) -> bytes:
    """Send a GET with an 8 MiB header; what comes back (b"" if the server closed at once)."""
    try:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (8 * MIB) + b"\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused mid-send: the server stopped reading
    try:
        return conn.recv(4096)
    except ConnectionResetError:
        return b""
