"""Jobs that go wrong in ways a user cannot see: an actor that dies before it reports (restarted
a bounded number of times, then failed with the reason), a manifest that cannot be read when
the job finishes (failed with the real error, not "actor exited"), a read route that must not
write, and `flywheel serve` that must take every process it started (Ray's agents included)
with it when it is told to stop."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from api.db import Database
from api.ids import new_id
from api.jobs import JobRunner, run_job
from api.manifests import manifest_uri_of
from api.models import Job, JobStage, Manifest
from tests.api.conftest import corpus_records, wait_for, write_jsonl
from tests.api.serve_process import ServeProcess
from training.data.synthetic import write_synthetic_dataset

pytestmark = pytest.mark.slow

TERMINAL = ("succeeded", "failed", "cancelled")


def add_job(db: Database, state: str = "queued", output_uri: str = "/nowhere") -> str:
    job_id = new_id("job")
    with db.session() as s:
        s.add(Job(id=job_id, state=state, corpus_ids=[], config={}, output_uri=output_uri, phase=state,
                  stages=[JobStage(position=0, name="read", state="pending")]))
    return job_id


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'jobs.db'}")
    database.migrate()
    yield database
    database.dispose()


# --- an actor that dies before it reports -------------------------------------------------------

def die_before_reporting(database_url: str, job_id: str) -> str:
    """What a worker that crashes at start does: the process ends, nothing is written."""
    os._exit(3)


class DyingRunner(JobRunner):
    actor_prefix = "flywheel-test-dying-"
    execute = staticmethod(die_before_reporting)


def test_a_queued_job_whose_actor_keeps_dying_fails_after_its_attempts(ray_local, db):
    runner = DyingRunner(db, start_grace_s=0, max_start_attempts=3)
    job_id = add_job(db)

    def reaped_to_the_end() -> str | None:
        runner.reap()
        with db.session() as s:
            job = s.get(Job, job_id)
            return job.state != "queued" and job

    job = wait_for(reaped_to_the_end, timeout=180, interval=0.5)
    assert job.state == "failed" and job.attempts == 3 and job.finished_at is not None
    assert job.error.startswith("did not start after 3 attempts: ") and "actor" in job.error
    assert runner.reap() == {"failed": [], "restarted": []}  # a failed job is left alone


# --- a manifest that cannot be registered ---------------------------------------------------------

def test_an_unreadable_manifest_fails_the_job_with_the_real_reason(db, tmp_path):
    out = tmp_path / "out"
    job_id = add_job(db, output_uri=str(out))

    def work(database, job) -> None:  # the run "succeeds", but manifest.json cannot be read: a folder
        Path(manifest_uri_of(str(out))).mkdir(parents=True)

    def publish(session, job) -> dict:
        from api.manifests import register_job_manifest  # as execute_job registers it

        register_job_manifest(session, job.id, job.output_uri)
        return {}

    assert run_job(db.url, job_id, Job, work, phase="starting", publish=publish) == "failed"
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job.state == "failed" and job.finished_at is not None
        assert job.error.startswith("publishing the job's outputs failed: "), job.error
        assert "directory" in job.error.lower() and "actor" not in job.error
        assert s.scalar(select(Manifest).where(Manifest.job_id == job_id)) is None


# --- GET must not write ------------------------------------------------------------------------

def test_reading_a_job_writes_nothing(server, reader, admin, tmp_path):
    """A succeeded job without a manifest id (a run without `tokenize` writes none; an old row):
    GET answers what the row says and leaves the database as it was."""
    db = server.services.db
    out = tmp_path / "job-out"
    out.mkdir()
    job_id = add_job(db, state="succeeded", output_uri=str(out))
    # A valid manifest where the route's old fallback would have found and registered one.
    write_synthetic_dataset(out, total_tokens=20_000, target_tokens=10_000, vocab_size=5_000, seed=3,
                            dataset_id="get-writes-nothing")
    before = _job_row(db, job_id)
    r = reader.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["manifest_id"] is None
    assert _job_row(db, job_id) == before
    with db.session() as s:
        assert s.scalar(select(Manifest).where(Manifest.job_id == job_id)) is None


def _job_row(db: Database, job_id: str) -> dict:
    with db.session() as s:
        row = s.execute(select(Job.__table__).where(Job.id == job_id)).mappings().one()
        return dict(row)


# --- flywheel serve takes its processes with it ----------------------------------------------------

def test_sigterm_to_serve_leaves_no_process_behind(tmp_path):
    """Serve with its embedded Ray up (a job has run): after a SIGTERM, no process of its tree
    -- raylet, GCS, Ray's DashboardAgent and RuntimeEnvAgent, workers, the scan process -- is left."""
    records, _ = corpus_records(40)
    corpus = write_jsonl(tmp_path / "in" / "docs.jsonl", records)
    with ServeProcess(tmp_path / "home", "--no-auth") as serve:
        import httpx

        with httpx.Client(base_url=serve.url, timeout=120) as c:
            with open(corpus, "rb") as f:
                r = c.post("/v1/corpora", files={"file": ("docs.jsonl", f)})
            assert r.status_code == 201, r.text
            job = c.post("/v1/jobs", json={"corpus_ids": [r.json()["id"]], "config": {"stages": []}}).json()
            done = wait_for(lambda: (j := c.get(f"/v1/jobs/{job['id']}").json())["state"] in TERMINAL and j, 300, 1)
            assert done["state"] == "succeeded", done["error"]
        tree = serve.record_tree()
        names = " ".join(" ".join(p.cmdline()) for p in tree)
        assert "raylet" in names and "gcs_server" in names, names  # Ray is really up under serve
        code = serve.terminate(timeout=120)
        deadline = time.monotonic() + 60
        while serve.alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert serve.alive() == [], f"outlived flywheel serve:\n{json.dumps(serve.alive(), indent=1)}"
        assert code == 0, serve.log.read_text()[-3000:]  # a requested stop is a clean exit

