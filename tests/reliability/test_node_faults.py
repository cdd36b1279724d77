"""Node and actor faults on a real multi-node Ray (tests/cluster.py): the curation completes, and
its output is the undisturbed run's, row for row.

- A whole worker node is lost mid-curation: its process group (raylet, agents) and its Ray workers
  SIGKILLed at once, then a new worker node started. The head has no CPUs, so nothing runs until
  the new node joins; the blocks that lived in the dead node's object store are recomputed from
  their lineage (the driver owns them and is alive) and the failed tasks are retried.
- Mid-shuffle: the pipeline's shuffle (SHUFFLE_V2, pinned by `curation.runtime.init_ray`) is plain
  map/reduce tasks, so the fault is a SIGKILLed shuffle task's worker; it is re-run and the output
  does not change. Ray Data's actor-based `hash_shuffle` cannot survive a lost aggregator actor
  (2.60 never restarts one): asking for it through RAY_DATA_DEFAULT_SHUFFLE_STRATEGY changes
  nothing, so no aggregator exists to lose and a killer aimed at one finds none.

The cluster's only shared storage is the local S3 server: inputs and outputs are s3://.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from tests.cluster import (
    LocalRayCluster,
    RayNode,
    corpus_jsonl,
    curate,
    dedup_tokenize_config,
    finish_curation,
    start_curation,
)
from tests.reliability.report import record_fault

pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")
pytestmark = pytest.mark.slow

DOCS, SEED = 1500, 11
WORKER_CPUS = 2  # two tasks at once: a shuffle's map and reduce tasks overlap


@pytest.fixture(scope="module")
def s3():
    from tests.s3 import local_s3

    with local_s3() as store:
        fs = store.admin()
        fs.create_dir(f"{store.bucket}/raw")
        with fs.open_output_stream(f"{store.bucket}/raw/part-0.jsonl") as f:
            f.write(corpus_jsonl(DOCS, SEED))
        yield store


@pytest.fixture(scope="module")
def cluster(s3):
    with LocalRayCluster(env=s3.env, head_cpus=0) as c:
        c.add_worker(num_cpus=WORKER_CPUS)
        yield c


def config(s3, name: str) -> dict:
    return dedup_tokenize_config(f"s3://{s3.bucket}/raw/", f"s3://{s3.bucket}/runs/{name}", seed=SEED)


@pytest.fixture(scope="module")
def calm(s3, cluster, tmp_path_factory) -> str:
    """The undisturbed run, once per module; its name under runs/."""
    curate(cluster, config(s3, "calm"), tmp_path_factory.mktemp("calm"), timeout_s=300)
    return "calm"


def stage_counts(s3, run: str) -> list[dict]:
    stats = json.loads(s3.admin().open_input_stream(f"{s3.bucket}/runs/{run}/stats.json").read())
    return [{k: s[k] for k in ("name", "docs_in", "docs_out", "dropped", "tokens_in", "tokens_out")}
            for s in stats["stages"]]


def rows(s3, run: str, folder: str) -> list[dict]:
    """Every row of a run's Parquet folder, in id order (file names carry the run's id)."""
    table = pq.read_table(f"{s3.bucket}/runs/{run}/{folder}", filesystem=s3.admin())
    return sorted(table.to_pylist(), key=lambda r: (r["id"], json.dumps(r, sort_keys=True, default=str)))


def shard_digests(s3, run: str) -> list[tuple[str, str, int]]:
    """(shard file, sha256, tokens) of the run's manifest: the token stream, byte for byte."""
    manifest = json.loads(s3.admin().open_input_stream(f"{s3.bucket}/runs/{run}/manifest.json").read())
    return [(s["path"], s["sha256"], s["tokens"]) for s in manifest["shards"]]


def assert_same_output(s3, run: str, calm: str) -> int:
    assert stage_counts(s3, run) == stage_counts(s3, calm)
    assert rows(s3, run, "data") == rows(s3, calm, "data")
    assert rows(s3, run, "rejects") == rows(s3, calm, "rejects")
    assert shard_digests(s3, run) == shard_digests(s3, calm)
    return stage_counts(s3, calm)[0]["docs_in"]


def wait_for_line(log: Path, text: str, proc, timeout_s: float) -> None:
    """Until the driver's log has a line containing `text` (the driver prints each finished stage)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and any(text in line for line in log.read_text(errors="replace").splitlines()):
            return
        time.sleep(0.2)
    raise AssertionError(f"the driver never printed {text!r} (exit {proc.poll()}):\n{log.read_text()[-3000:]}")


def test_worker_node_lost_mid_curation_then_replaced(s3, cluster, calm, tmp_path):
    workdir = tmp_path / "driver"
    driver = start_curation(cluster, config(s3, "node-lost"), workdir)
    # After exact_dedup: the read and exact_dedup stages' blocks live in the worker's object store
    # only, and MinHash tasks are running; losing the node loses both.
    wait_for_line(workdir / "driver.log", "exact_dedup ", driver, timeout_s=240)
    lost = cluster.workers[-1]
    cluster.kill_worker(lost)
    replacement = cluster.add_worker(num_cpus=WORKER_CPUS)
    log = finish_curation(cluster, driver, workdir, timeout_s=400)
    # Ray's own words that lineage reconstruction ran ("Attempting to recover N lost objects by
    # resubmitting their tasks"): the outputs below were recomputed, not found on a live node.
    assert "lost objects" in log, log[-3000:]

    records = assert_same_output(s3, "node-lost", calm)
    assert replacement.executed(), "the new node ran nothing"
    record_fault("worker node lost mid-curation (raylet + workers SIGKILLed), new node started; dedup + tokenize, "
                 "s3:// to s3://", injected=1, survived=True, records=records, lost=0,
                 check="stats, kept rows, rejects and shard sha256s identical to an undisturbed run")


class NodeWorkerKiller(threading.Thread):
    """SIGKILL the first Ray worker of `node` seen running each of `targets` (a proctitle prefix:
    Ray names a worker's process after what it runs, `ray::HashShuffleReduce(...)`), once each."""

    def __init__(self, node: RayNode, targets: tuple[str, ...], poll_s: float = 0.01):
        super().__init__(daemon=True)
        self.node, self.targets, self.poll_s = node, list(targets), poll_s
        self.killed: list[str] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set() and self.targets:
            for proc in self.node.processes():
                try:
                    title = (proc.cmdline() or [""])[0]
                except psutil.Error:
                    continue
                hit = next((t for t in self.targets if title.startswith(t)), None)
                if hit is None:
                    continue
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue  # finished between the listing and the kill
                self.killed.append(title)
                self.targets.remove(hit)
            time.sleep(self.poll_s)

    def stop(self) -> None:
        self._done.set()
        self.join()


def run_with_killer(cluster, s3, run: str, workdir: Path, targets: tuple[str, ...], env: dict | None = None):
    killer = NodeWorkerKiller(cluster.workers[-1], targets)
    killer.start()
    try:
        driver = start_curation(cluster, config(s3, run), workdir, extra_env=env)
        driver.wait(timeout=300)
    finally:
        killer.stop()
    return driver.returncode, killer.killed


def test_shuffle_workers_killed_mid_shuffle(s3, cluster, calm, tmp_path):
    """Ray 2.60's default shuffle (SHUFFLE_V2): map and reduce tasks, re-run from lineage."""
    rc, killed = run_with_killer(cluster, s3, "shuffle-task-lost", tmp_path,
                                 ("ray::HashShuffleMap", "ray::HashShuffleReduce"))
    assert rc == 0, (tmp_path / "driver.log").read_text()[-3000:]
    assert killed, "no shuffle task was caught running"
    records = assert_same_output(s3, "shuffle-task-lost", calm)
    record_fault("Ray worker running a hash-shuffle map/reduce task SIGKILLed mid-shuffle (Ray 2.60 default "
                 "SHUFFLE_V2; 2 nodes, s3://)", injected=len(killed), survived=True, records=records, lost=0,
                 check="stats, kept rows, rejects and shard sha256s identical to an undisturbed run")


def test_a_hash_shuffle_aggregator_cannot_be_lost(s3, cluster, calm, tmp_path):
    """RAY_DATA_DEFAULT_SHUFFLE_STRATEGY=hash_shuffle in the driver's environment, a killer waiting
    for any HashShuffleAggregator and for shuffle tasks: the pipeline keeps its task-based shuffle
    (runtime.init_ray pins SHUFFLE_V2), so no aggregator ever runs, the tasks it kills are re-run,
    and the output is the undisturbed run's."""
    rc, killed = run_with_killer(cluster, s3, "aggregator-asked", tmp_path,
                                 ("ray::HashShuffleAggregator", "ray::HashShuffleMap", "ray::HashShuffleReduce"),
                                 env={"RAY_DATA_DEFAULT_SHUFFLE_STRATEGY": "hash_shuffle"})
    assert rc == 0, (tmp_path / "driver.log").read_text()[-3000:]
    assert killed and not any(k.startswith("ray::HashShuffleAggregator") for k in killed), killed
    records = assert_same_output(s3, "aggregator-asked", calm)
    record_fault("hash-shuffle aggregator actors asked for (RAY_DATA_DEFAULT_SHUFFLE_STRATEGY=hash_shuffle), killer "
                 "aimed at aggregators and shuffle tasks", injected=len(killed), survived=True, records=records,
                 lost=0, check="no aggregator ever ran (SHUFFLE_V2 pinned: Ray Data 2.60 never restarts a lost "
                               "aggregator); output identical to an undisturbed run")
