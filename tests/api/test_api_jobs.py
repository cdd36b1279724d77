"""Jobs end to end on a real embedded Ray: upload, url_dedup + exact_dedup, progress, stats,
rejects, why; cancel; an actor that dies; a restart that finds a job `running` without its actor;
and the CLI client (upload, submit, watch, stats) against the live server.

One job runs to the end (the module's `done_job`); the others are cancelled or killed early:
a full run costs tens of seconds on a loaded 2-core box."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from api.cli import commands as service_commands
from api.db import Database
from api.ids import new_id
from api.jobs import ACTOR_NAMESPACE, LOST_ON_RESTART, actor_name
from api.models import Job, JobStage
from curation.config import parse_config
from tests.api.conftest import corpus_records, live_server, sibling_database, wait_for, write_jsonl

pytestmark = pytest.mark.slow

# Two shuffle partitions: the default (4 per CPU) only adds tasks on 200 documents.
CONFIG = {"seed": 7, "stages": [{"name": "url_dedup", "partitions": 2},
                                {"name": "exact_dedup", "lowercase": True, "partitions": 2}]}
TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def corpus(admin, tmp_path_factory):
    records, planted = corpus_records(200)
    path = write_jsonl(tmp_path_factory.mktemp("in") / "web.jsonl", records, extra_lines=("{broken",))
    with open(path, "rb") as f:
        r = admin.post("/v1/corpora", files={"file": ("web.jsonl", f)})
    assert r.status_code == 201, r.text
    return {"id": r.json()["id"], "uri": r.json()["uri"], "planted": planted, "path": path}


def finish(client, job_id: str, timeout: float = 120) -> dict:
    return wait_for(lambda: (j := client.get(f"/v1/jobs/{job_id}").json())["state"] in TERMINAL and j, timeout)


@pytest.fixture(scope="module")
def done_job(ray_local, server, admin, reader, corpus):
    r = admin.post("/v1/jobs", json={"corpus_ids": [corpus["id"]], "config": CONFIG})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["state"] in ("queued", "running") and [s["name"] for s in job["stages"]] == ["read", "url_dedup", "exact_dedup"]
    return finish(reader, job["id"])


def test_job_runs_to_success_with_progress(done_job):
    assert done_job["state"] == "succeeded", done_job["error"]
    assert done_job["progress"] == 1.0 and done_job["error"] is None and done_job["manifest_id"] is None
    assert all(s["state"] == "done" for s in done_job["stages"])
    read, url, exact = done_job["stages"]
    assert (read["docs_in"], read["docs_out"], read["dropped"]) == (201, 200, {"malformed": 1})
    assert url["dropped"] == {"duplicate_url": 10} and exact["dropped"] == {"exact_duplicate": 10}
    assert done_job["docs_in"] == 201 and done_job["docs_out"] == 180
    assert done_job["config"] == {  # the recipe as validated; inputs/output are the service's
        "seed": 7, "default_domain": "web",
        "stages": [{"name": "url_dedup", "strip_www": False, "partitions": 2},
                   {"name": "exact_dedup", "lowercase": True, "collapse_whitespace": True,
                    "strip_punctuation": False, "partitions": 2}],
        "duplicate_ids": "reject"}


def test_stats_rejects_and_why(reader, done_job, corpus):
    job_id = done_job["id"]
    stats = reader.get(f"/v1/jobs/{job_id}/stats").json()
    assert [s["name"] for s in stats["stages"]] == ["read", "url_dedup", "exact_dedup"]
    assert stats["totals"]["docs_out"] == 180

    page = reader.get(f"/v1/jobs/{job_id}/rejects", params={"limit": 8}).json()
    assert page["total"] == 21 and len(page["items"]) == 8 and "text" not in page["items"][0]
    seen = []
    for offset in range(0, 21, 8):
        seen += [r["id"] for r in reader.get(f"/v1/jobs/{job_id}/rejects",
                                             params={"limit": 8, "offset": offset}).json()["items"]]
    assert len(seen) == len(set(seen)) == 21
    url = reader.get(f"/v1/jobs/{job_id}/rejects", params={"stage": "url_dedup", "limit": 100}).json()
    assert {r["id"] for r in url["items"]} == corpus["planted"]["url"] and url["total"] == 10
    exact = reader.get(f"/v1/jobs/{job_id}/rejects",
                       params={"reason": "exact_duplicate", "include_text": True, "limit": 100}).json()
    assert {r["id"] for r in exact["items"]} == corpus["planted"]["exact"]
    assert all(r["text"] for r in exact["items"]) and all(isinstance(r["detail"], dict) for r in exact["items"])
    assert reader.get(f"/v1/jobs/{job_id}/rejects", params={"stage": "read"}).json()["total"] == 1

    why = reader.get(f"/v1/documents/{job_id}/u003/why").json()
    assert (why["status"], why["stage"], why["reason"], why["detail"]["kept_id"]) == \
        ("rejected", "url_dedup", "duplicate_url", "d003")
    why = reader.get(f"/v1/documents/{job_id}/x000/why").json()
    assert why["reason"] == "exact_duplicate" and why["detail"]["kept_id"] == "d010" and why["text"]
    assert reader.get(f"/v1/documents/{job_id}/d010/why").json()["status"] == "kept"
    malformed = reader.get(f"/v1/jobs/{job_id}/rejects", params={"reason": "malformed"}).json()["items"][0]
    why = reader.get(f"/v1/documents/{job_id}/{malformed['id']}/why").json()
    assert why["stage"] == "read" and why["doc_id"] == malformed["id"]
    for missing in ("nope", "../../etc/passwd", "..%2F..%2Fstats.json"):
        assert reader.get(f"/v1/documents/{job_id}/{missing}/why").status_code == 404


def test_metrics_count_jobs_and_documents(reader, done_job):
    text = reader.get("/metrics").text
    assert re.search(r'^flywheel_jobs\{state="succeeded"\} [1-9]', text, re.M)
    assert re.search(r"^flywheel_documents_processed_total [1-9]", text, re.M)


def test_results_of_unfinished_or_missing_jobs(admin, reader, corpus):
    r = admin.post("/v1/jobs", json={"corpus_ids": [corpus["id"]], "config": CONFIG})
    job_id = r.json()["id"]
    assert reader.get(f"/v1/jobs/{job_id}/stats").status_code == 409
    assert admin.post(f"/v1/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    assert admin.post(f"/v1/jobs/{job_id}/cancel").status_code == 409
    assert reader.get("/v1/jobs/job_0123456789abcdef/stats").status_code == 404


def test_config_errors_are_422_with_one_line(admin, corpus):
    cases = [
        ({"stages": ["url_dedup", "minhsh"]}, "unknown stage 'minhsh'"),
        ({"stages": [{"name": "exact_dedup", "lowercas": True}]}, "unknown parameter"),
        ({"stages": [], "inputs": ["/etc"]}, "set by the service"),
        ({"stages": [], "seed": "x"}, "seed"),
    ]
    for config, words in cases:
        r = admin.post("/v1/jobs", json={"corpus_ids": [corpus["id"]], "config": config})
        assert r.status_code == 422 and words in r.json()["detail"] and "\n" not in r.json()["detail"], r.text
    r = admin.post("/v1/jobs", content=b'{"corpus_ids": [', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]
    r = admin.post("/v1/jobs", json={"corpus_ids": ["cor_ffffffffffffffff"], "config": {}})
    assert r.status_code == 422 and "no corpus" in r.json()["detail"]
    r = admin.post("/v1/jobs", json={"corpus_ids": ["../x"], "config": {}})
    assert r.status_code == 422


def test_cancel_kills_the_actor(ray_local, server, admin, reader, corpus):
    job_id = admin.post("/v1/jobs", json={"corpus_ids": [corpus["id"]], "config": CONFIG}).json()["id"]
    wait_for(lambda: reader.get(f"/v1/jobs/{job_id}").json()["state"] == "running", 60, 0.05)
    r = admin.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    wait_for(lambda: not server.services.runner.actor_alive(job_id), 30)
    assert reader.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"


def test_a_dead_actor_fails_its_job(ray_local, admin, reader, corpus):
    job_id = admin.post("/v1/jobs", json={"corpus_ids": [corpus["id"]], "config": CONFIG}).json()["id"]
    wait_for(lambda: reader.get(f"/v1/jobs/{job_id}").json()["state"] == "running", 60, 0.05)
    ray_local.kill(ray_local.get_actor(actor_name(job_id), namespace=ACTOR_NAMESPACE), no_restart=True)
    job = finish(reader, job_id, 30)
    assert job["state"] == "failed" and "actor" in job["error"]


def test_restart_fails_running_and_restarts_queued(ray_local, service_home, database_url, corpus, tmp_path):
    """A new service on a database a dead process left behind: no job stays running forever."""
    url = sibling_database(database_url, tmp_path)
    db = Database(url)
    db.migrate()
    lost, queued = new_id("job"), new_id("job")
    home = tmp_path / "home"
    output = str(home / "storage" / "jobs" / queued)
    config = parse_config(CONFIG, inputs=[corpus["uri"]], output=output).dump()
    with db.session() as s:
        s.add(Job(id=lost, state="running", corpus_ids=[corpus["id"]], config=config, output_uri="/nowhere",
                  phase="url_dedup (2/3)", stages=[JobStage(position=0, name="read", state="running")]))
        s.add(Job(id=queued, state="queued", corpus_ids=[corpus["id"]], config=config, output_uri=output,
                  stages=[JobStage(position=i, name=n) for i, n in enumerate(["read", "url_dedup", "exact_dedup"])]))
    db.dispose()
    from api.auth import create_token

    with live_server(home, url) as srv:
        with srv.services.db.session() as s:
            _, token = create_token(s, "t", "admin", srv.settings.token_pepper)
        with srv.client(token) as c:
            job = c.get(f"/v1/jobs/{lost}").json()
            assert job["state"] == "failed" and job["error"] == LOST_ON_RESTART and job["finished_at"]
            # The queued job never ran: it was handed to a new actor, which picks it up.
            wait_for(lambda: c.get(f"/v1/jobs/{queued}").json()["state"] != "queued", 60, 0.1)
            assert c.post(f"/v1/jobs/{queued}/cancel").status_code in (200, 409)


def test_cli_client(server, tokens, corpus, done_job, tmp_path):
    cli = service_commands
    run = CliRunner()
    common = ["--url", server.url, "--token", tokens["admin"]]
    up = run.invoke(cli, ["corpora", "upload", str(corpus["path"]), "--domain", "news", *common])
    assert up.exit_code == 0, up.output
    corpus_id = re.search(r'"id": "(cor_[0-9a-f]{16})"', up.stdout).group(1)
    config = tmp_path / "run.yaml"
    config.write_text("inputs: [ignored/]\noutput: ignored\nseed: 7\nstages:\n  - url_dedup\n  - exact_dedup\n")
    sub = run.invoke(cli, ["jobs", "submit", str(config), "--corpus", corpus_id, *common])
    assert sub.exit_code == 0, sub.output
    job_id = sub.stdout.strip()
    assert re.fullmatch(r"job_[0-9a-f]{16}", job_id) and "ignored" in sub.output
    with server.client(tokens["admin"]) as c:
        assert c.post(f"/v1/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    cancelled = run.invoke(cli, ["jobs", "watch", job_id, *common])
    assert cancelled.exit_code == 1 and "cancelled" in cancelled.output
    watched = run.invoke(cli, ["jobs", "watch", done_job["id"], *common])
    assert watched.exit_code == 0 and f"job {done_job['id']} succeeded" in watched.stdout
    stats = run.invoke(cli, ["jobs", "stats", done_job["id"], *common])
    assert stats.exit_code == 0 and "exact_dedup" in stats.stdout
    bad = run.invoke(cli, ["jobs", "stats", "job_0123456789abcdef", *common])
    assert bad.exit_code == 2 and "404" in bad.output
