"""The API process SIGKILLed mid-job and started again: the job is found and finished (its actor
lived on in the cluster), or, when its actor died too, cleanly failed; no corpus is lost.

Everything is real and separate, as in production: a Ray head started with `ray start` on
loopback, `flywheel serve` as its own process (RAY_ADDRESS pointing at the head), a SQLite file
(the actors run on this machine, so they reach it), HTTP on a loopback port.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.api.conftest import wait_for
from tests.helpers import free_port, write_jsonl
from tests.reliability.report import record_fault

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
FINISHED = ("succeeded", "failed", "cancelled")
# Slow enough (~10-30 s on 2 busy cores) that the API can be killed while it runs.
CONFIG = {"seed": 5, "stages": ["exact_dedup", {"name": "heuristics", "min_words": 50},
                                {"name": "minhash_dedup", "threshold": 0.8}]}
WORDS = ("the of and to in is was for on that with as by at from this be are it not or have an they which "
         "river stone light morning paper garden window music letter forest silver bridge animal planet").split()


@dataclass
class RayHead:
    address: str
    temp: Path  # the cluster's --temp-dir: every one of its processes names it on its command line

    def processes(self) -> list[psutil.Process]:
        """This cluster's processes and their children (the workers), no other cluster's."""
        own = [p for p in psutil.process_iter(["cmdline"]) if any(str(self.temp) in a for a in p.info["cmdline"] or [])]
        return list({p.pid: p for q in own for p in [q, *q.children(recursive=True)]}.values())

    def stop(self) -> None:
        # Not `ray stop`: it stops every Ray on the machine, the tests' embedded one too (and
        # Ray ends a driver whose raylet dies: the pytest process itself).
        procs = self.processes()
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(procs, timeout=30)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray cluster of its own (not the tests' embedded one), stopped at the end."""
    port = free_port()
    head = RayHead(f"127.0.0.1:{port}", tmp_path_factory.mktemp("ray-head"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    try:
        subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                        "--num-cpus=2", f"--object-store-memory={200 * 2**20}", "--include-dashboard=false",
                        f"--temp-dir={head.temp}", "--disable-usage-stats"], check=True, env=env, capture_output=True)
        yield head
    finally:
        head.stop()


@pytest.fixture(scope="module")
def service_env(ray_head, tmp_path_factory):
    home = tmp_path_factory.mktemp("api-restart")
    env = {**os.environ, "FLYWHEEL_HOME": str(home), "FLYWHEEL_DATABASE_URL": f"sqlite:///{home / 'flywheel.db'}",
           "RAY_ADDRESS": ray_head.address, "FLYWHEEL_REAP_INTERVAL_S": "1", "FLYWHEEL_NUM_CPUS": "2"}
    token = subprocess.run([str(BIN / "flywheel"), "token", "create", "restart-test", "--scope", "admin"],
                           env=env, check=True, capture_output=True, text=True).stdout.split()[-1]
    return env, token


@contextmanager
def service(env: dict, token: str):
    """`flywheel serve` in its own process; yields (client, process). SIGKILL it to crash it."""
    port = free_port()
    proc = subprocess.Popen([str(BIN / "flywheel"), "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                          timeout=60)

    def up():
        try:
            return client.get("/healthz").status_code == 200
        except httpx.TransportError:
            return proc.poll() is not None and pytest.fail("the service exited while starting")

    try:
        wait_for(up, timeout=90, interval=0.2)
        yield client, proc
    finally:
        client.close()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


def corpus_file(path: Path, docs: int = 4000, seed: int = 9) -> Path:
    rng = random.Random(seed)
    records = [{"id": f"d{i:05}", "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 300)))}
               for i in range(docs)]
    records += [{"id": f"copy{i}", "text": records[i]["text"]} for i in range(0, docs, 40)]
    return write_jsonl(path, records)


def job_state(client: httpx.Client, job_id: str) -> dict:
    return client.get(f"/v1/jobs/{job_id}").json()


def upload_and_start(api: httpx.Client, path: Path) -> tuple[dict, dict]:
    """Upload `path`, submit the slow job on it, return (corpus, job) once the job is running."""
    with open(path, "rb") as f:
        corpus = api.post("/v1/corpora", files={"file": ("corpus.jsonl", f)}).json()
    job = api.post("/v1/jobs", json={"corpus_ids": [corpus["id"]], "config": CONFIG}).json()
    started = wait_for(lambda: (j := job_state(api, job["id"]))["state"] != "queued" and j, timeout=120, interval=0.1)
    assert started["state"] == "running", started["error"]
    return corpus, job


def sigkill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def job_actor_pid(head: RayHead) -> int | None:
    """The worker process of a job actor in `head`'s cluster (Ray titles it `ray::_JobActor...`)."""
    for p in head.processes():
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.cmdline()[:1] and p.cmdline()[0].startswith("ray::_JobActor"):
                return p.pid
    return None


def test_api_killed_mid_job_finds_and_finishes_it(service_env, tmp_path):
    env, token = service_env
    path = corpus_file(tmp_path / "corpus.jsonl")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    with service(env, token) as (api, proc):
        corpus, job = upload_and_start(api, path)
        sigkill(proc)  # mid-job: the detached actor in the cluster keeps running
    with service(env, token) as (api, _):
        assert job_state(api, job["id"])["state"] in ("running", "succeeded")  # found, not failed
        done = wait_for(lambda: (j := job_state(api, job["id"]))["state"] in FINISHED and j, timeout=300)
        assert done["state"] == "succeeded", done["error"]
        stats = api.get(f"/v1/jobs/{job['id']}/stats").json()
        kept = api.get(f"/v1/corpora/{corpus['id']}").json()
    read = stats["stages"][0]
    records = sum(1 for _ in path.open())
    assert read["docs_in"] == records
    for s in stats["stages"]:
        assert s["docs_in"] == s["docs_out"] + sum(s["dropped"].values())
    assert kept["state"] == "ready" and kept["sha256"] == sha and kept["documents"] == records
    stored = Path(kept["uri"].removeprefix("file://"))
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha
    record_fault("API process SIGKILLed mid-job, restarted (job actor alive)", injected=1, survived=True,
                 records=records, lost=read["docs_in"] - records, check="job found and finished, corpus intact")


def test_api_and_job_actor_killed_fails_the_job_cleanly(ray_head, service_env, tmp_path):
    env, token = service_env
    path = corpus_file(tmp_path / "corpus.jsonl", seed=10)
    with service(env, token) as (api, proc):
        corpus, job = upload_and_start(api, path)
        pid = wait_for(lambda: job_actor_pid(ray_head), timeout=30, interval=0.1)
        sigkill(proc)
        os.kill(pid, signal.SIGKILL)  # the job dies with it: nothing can finish it now
    with service(env, token) as (api, _):
        done = wait_for(lambda: (j := job_state(api, job["id"]))["state"] in FINISHED and j, timeout=120)
        assert done["state"] == "failed"
        assert "actor" in done["error"] and done["finished_at"]
        kept = api.get(f"/v1/corpora/{corpus['id']}").json()
        assert kept["state"] == "ready" and kept["documents"] == sum(1 for _ in path.open())
        # The corpus is still usable: a new job on it runs to the end.
        again = api.post("/v1/jobs", json={"corpus_ids": [corpus["id"]], "config": {"stages": ["exact_dedup"]}})
        redo = wait_for(lambda: (j := job_state(api, again.json()["id"]))["state"] in FINISHED and j, timeout=300)
        assert redo["state"] == "succeeded", redo["error"]
    record_fault("API process and the job's actor SIGKILLed, API restarted", injected=2, survived=True,
                 records=kept["documents"], lost=0, check="job failed with a reason, corpus intact and reusable")
