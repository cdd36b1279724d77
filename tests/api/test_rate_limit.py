"""Issue 16, item 9: bounded responses and rate limits.

- `/rejects?include_text=true` cuts each text to TEXT_PREVIEW_CHARS, as `/why` does.
- Writes are limited per token, invalid tokens per client address: past the allowance a 429
  with `Retry-After`; other tokens and other clients are not affected, reads are not counted.
Real uvicorn on loopback (a second client address is 127.0.0.2), SQLite and PostgreSQL.
"""

from __future__ import annotations

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from api.auth import create_token
from api.ids import new_id
from api.models import Job
from api.rate_limit import TokenBucket
from api.results import TEXT_PREVIEW_CHARS
from curation.pipeline import REJECT_COLUMNS
from tests.api.conftest import live_server

BAD_JOB = {"corpus_ids": ["cor_0123456789abcdef"], "config": {}}  # a write that ends in a 422, queuing nothing


def finished_job_with_rejects(services, texts: list[str]) -> str:
    """A succeeded job whose rejects Parquet file holds one row per text."""
    job_id = new_id("job")
    out = services.storage.path(f"jobs/{job_id}")
    n = len(texts)
    rejects = {"id": [f"r{i}" for i in range(n)], "stage": ["exact_dedup"] * n, "reason": ["exact_duplicate"] * n,
               "detail": ['{"kept_id": "k1"}'] * n, "domain": ["web"] * n, "source": ["a.jsonl"] * n,
               "n_tokens": [len(t.split()) for t in texts], "text": texts}
    assert list(rejects) == REJECT_COLUMNS
    services.storage.fs.create_dir(f"{out}/rejects")
    with services.storage.fs.open_output_stream(f"{out}/rejects/exact_dedup-00000-test.parquet") as f:
        pq.write_table(pa.table(rejects), f)
    with services.db.session() as s:
        s.add(Job(id=job_id, state="succeeded", corpus_ids=[], config={"stages": []},
                  output_uri=services.storage.uri(f"jobs/{job_id}"), phase="done"))
    return job_id


def test_rejects_texts_are_cut_like_why(server, reader):
    long_text = "é" + "word " * 5000  # 25,001 characters, a multi-byte one first
    job_id = finished_job_with_rejects(server.services, [long_text, "short one"])
    page = reader.get(f"/v1/jobs/{job_id}/rejects", params={"include_text": "true", "limit": 1000})
    assert page.status_code == 200
    texts = {item["id"]: item["text"] for item in page.json()["items"]}
    assert texts == {"r0": long_text[:TEXT_PREVIEW_CHARS], "r1": "short one"}
    why = reader.get(f"/v1/documents/{job_id}/r0/why").json()
    assert why["text"] == texts["r0"]
    without = reader.get(f"/v1/jobs/{job_id}/rejects").json()["items"]
    assert all("text" not in item for item in without)


def admin_tokens(server, n: int) -> list[str]:
    with server.services.db.session() as s:
        return [create_token(s, f"writer-{i}", "admin", server.settings.token_pepper)[1] for i in range(n)]


def retry_after(response: httpx.Response) -> int:
    assert response.status_code == 429, (response.status_code, response.text)
    assert "too many" in response.json()["detail"]
    return int(response.headers["Retry-After"])


def test_writes_past_the_limit_are_429_per_token(tmp_path, database_url):
    with live_server(tmp_path, database_url, write_limit_per_minute=3) as server:
        first, second = admin_tokens(server, 2)
        with server.client(first) as c:
            assert [c.post("/v1/jobs", json=BAD_JOB).status_code for _ in range(3)] == [422] * 3
            wait = retry_after(c.post("/v1/jobs", json=BAD_JOB))
            assert 1 <= wait <= 20  # 3 a minute: one more in at most 20 s
            retry_after(c.post("/v1/jobs/job_0123456789abcdef/cancel"))  # every write route shares the bucket
            assert [c.get("/v1/jobs").status_code for _ in range(10)] == [200] * 10  # reads are not counted
        with server.client(second) as c:
            assert c.post("/v1/jobs", json=BAD_JOB).status_code == 422


def test_invalid_tokens_past_the_limit_are_429_per_client(tmp_path, database_url):
    with live_server(tmp_path, database_url, token_failure_limit_per_minute=3) as server:
        (valid,) = admin_tokens(server, 1)
        with server.client() as c:  # no token at all is no guess: not counted
            assert [c.get("/v1/jobs").status_code for _ in range(10)] == [401] * 10
        with server.client("fw_guess") as c:
            assert [c.get("/v1/jobs").status_code for _ in range(3)] == [401] * 3
            assert 1 <= retry_after(c.get("/v1/jobs")) <= 20
        with server.client(valid) as c:  # this client's tokens are not looked up until the bucket refills
            retry_after(c.get("/v1/jobs"))
        elsewhere = httpx.HTTPTransport(local_address="127.0.0.2")
        with server.client(valid, transport=elsewhere) as c:
            assert c.get("/v1/jobs").status_code == 200


def test_the_sign_in_form_counts_invalid_tokens_too(tmp_path, database_url):
    """The dashboard's POST /sign-in is a second place to guess tokens: same limit, same 429."""
    with live_server(tmp_path, database_url, token_failure_limit_per_minute=2) as server:
        (valid,) = admin_tokens(server, 1)
        with server.client() as c:
            codes = [c.post("/sign-in", data={"token": "fw_guess", "next": "/"}).status_code for _ in range(2)]
            assert codes == [401, 401]
            blocked = c.post("/sign-in", data={"token": valid, "next": "/"})
            assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) >= 1
            assert "set-cookie" not in blocked.headers and "too many" in blocked.text
        with server.client(valid) as c:  # a dashboard page with a bearer token, from the same client
            page = c.get("/")
            assert page.status_code == 429 and int(page.headers["Retry-After"]) >= 1


def test_limits_are_off_at_zero(tmp_path, database_url):
    with live_server(tmp_path, database_url, write_limit_per_minute=0, token_failure_limit_per_minute=0) as server:
        (valid,) = admin_tokens(server, 1)
        with server.client("fw_guess") as c:
            assert {c.get("/v1/jobs").status_code for _ in range(30)} == {401}
        with server.client(valid) as c:
            assert {c.post("/v1/jobs", json=BAD_JOB).status_code for _ in range(30)} == {422}


class Clock:
    """A settable monotonic clock: the bucket's refill is arithmetic on it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_refills_at_the_steady_rate():
    clock = Clock()
    bucket = TokenBucket(60, clock=clock)  # one a second, bursts of 60
    assert [bucket.take("a") for _ in range(60)] == [0.0] * 60
    assert bucket.take("a") == pytest.approx(1.0)
    assert bucket.take("b") == 0.0
    clock.now += 0.5
    assert bucket.wait_s("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.take("a") == 0.0 and bucket.take("a") > 0


def test_bucket_forgets_keys_past_its_bound():
    clock = Clock()
    bucket = TokenBucket(10, max_keys=100, clock=clock)
    for i in range(1000):
        bucket.take(f"client-{i}")
    assert len(bucket._buckets) <= 100
