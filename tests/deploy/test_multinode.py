"""Flywheel as the distributed system it is meant to be: a Ray head with no CPUs and a worker node
that cannot see the driver's disk, with the local S3 server as the only shared storage.

The worker node runs in a mount namespace of its own with an empty tmpfs over pytest's temporary
folder (where the driver's config and everything the test writes live), so a curation that
passes here reads and writes nothing through a shared local disk. The head has `--num-cpus 0`:
every data task runs on the worker node (the test reads what each node's Ray workers ran from
their logs); only Ray Data's bookkeeping actors stay with the driver.

Ray 2.60 advertises the machine's address rather than 127.0.0.1 (`resolve_ip_for_localhost`), so
the nodes talk over this machine's own interface; nothing leaves the machine.

The cluster and the curated run are module fixtures, so a training leg can be appended that
reads `curated.manifest` from the store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tests.cluster import LocalRayCluster, RayNode, corpus_jsonl, curate, dedup_tokenize_config, mount_namespace_problem

pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")
pytestmark = pytest.mark.slow

DOCS, SEED = 1500, 7
# What may run on a head with no CPUs: Ray Data's statistics and autoscaling actors (0 CPUs, placed
# on the driver's node) and `parent`, the 0-CPU task of curation/dedup/report.py:raylet_pid.
HEAD_ONLY = {"_StatsActor", "_AutoscalingCoordinatorActor", "parent"}


@pytest.fixture(scope="module")
def s3():
    from tests.s3 import local_s3

    with local_s3() as store:
        yield store


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    """Head (0 CPUs) + one worker node (1 CPU) that sees pytest's temporary folder as empty."""
    problem = mount_namespace_problem()
    if problem:
        pytest.skip(f"MULTI-NODE TEST SKIPPED: a worker node needs a private tmpfs and {problem}")
    hidden = tmp_path_factory.getbasetemp()
    with LocalRayCluster(env=s3.env, head_cpus=0) as c:
        c.add_worker(num_cpus=1, hide=[hidden])
        yield c


@dataclass
class Curated:
    output: str  # s3://bucket/runs/multinode
    manifest: str  # its manifest.json URI
    driver_log: str
    worker: RayNode  # the node that ran it


@pytest.fixture(scope="module")
def curated(s3, cluster, tmp_path_factory) -> Curated:
    """Dedup + tokenize from s3:// to s3:// on the cluster, once per module."""
    s3.admin().create_dir(f"{s3.bucket}/raw")
    with s3.admin().open_output_stream(f"{s3.bucket}/raw/part-0.jsonl") as f:
        f.write(corpus_jsonl(DOCS, SEED))
    output = f"s3://{s3.bucket}/runs/multinode"
    config = dedup_tokenize_config(f"s3://{s3.bucket}/raw/", output, seed=SEED)
    log = curate(cluster, config, tmp_path_factory.mktemp("driver"), timeout_s=480)
    return Curated(output, f"{output}/manifest.json", log, cluster.workers[0])


def test_curation_runs_s3_to_s3_on_a_worker_node_without_a_shared_disk(s3, cluster, curated):
    fs = s3.admin()
    stats = json.loads(fs.open_input_stream(f"{s3.bucket}/runs/multinode/stats.json").read())
    names = [s["name"] for s in stats["stages"]]
    assert names == ["read", "exact_dedup", "minhash_dedup", "tokenize"], curated.driver_log
    exact, near = stats["stages"][1], stats["stages"][2]
    assert exact["dropped"] == {"exact_duplicate": len(range(0, DOCS, 40))}
    assert near["dropped"].get("near_duplicate", 0) >= len(range(5, DOCS, 40)) * 0.9
    for s in stats["stages"]:
        assert s["docs_in"] == s["docs_out"] + sum(s["dropped"].values())

    # The data work ran on the worker node; the 0-CPU head ran only Ray Data's bookkeeping actors
    # (pinned to the driver's node by Ray Data) and the MinHash report's 0-CPU probe task.
    on_head, on_worker = cluster.head.executed(), curated.worker.executed()
    assert set(on_head) <= HEAD_ONLY, on_head
    assert any(name.startswith(("ReadFiles", "MapBatches")) for name in on_worker), on_worker


def test_manifest_validates_from_the_store(s3, cluster, curated):
    env = {**cluster.env}
    flywheel = str(Path(sys.executable).with_name("flywheel"))
    done = subprocess.run([flywheel, "validate-manifest", curated.manifest], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    from contract.manifest import parse_manifest

    fs = s3.admin()
    manifest = parse_manifest(fs.open_input_stream(f"{s3.bucket}/runs/multinode/manifest.json").read())
    assert manifest.totals.shards >= 2 and manifest.totals.documents > 0
    listed = sorted(i.path.rsplit("/", 1)[1]
                    for i in fs.get_file_info(pafs.FileSelector(f"{s3.bucket}/runs/multinode/shards")))
    named = sorted(p.rsplit("/", 1)[1] for s in manifest.shards for p in (s.path, s.index_path))
    assert listed == named  # the worker published straight to the store, and left no scratch there


# --- the training leg: Ray Train on two worker nodes, from the store, into the store --------------

TRAIN_STEPS, KILL_AFTER = 16, 4
TRAIN_CONFIG = {"preset": "tiny", "seq_len": 32, "global_batch_tokens": 256, "micro_batch": 4,
                "steps": TRAIN_STEPS, "checkpoint_every_steps": 3, "metrics_flush_s": 0, "max_failures": 2,
                "peak_tflops_per_worker": 0.05, "device": "cpu", "optimizer": {"lr": 3e-3}}


def kill_one_train_worker(node: RayNode) -> int | None:
    """SIGKILL the first Ray Train worker process (`ray::RayTrainWorker...`) on `node`; its pid."""
    import psutil  # installed with Ray

    for proc in node.processes():
        try:
            if (proc.cmdline() or [""])[0].startswith("ray::RayTrainWorker"):
                os.kill(proc.pid, signal.SIGKILL)
                return proc.pid
        except (psutil.Error, ProcessLookupError):
            continue
    return None


def test_training_streams_from_the_store_and_resumes_after_a_killed_worker(s3, cluster, curated, tmp_path_factory,
                                                                           monkeypatch):
    """`flywheel train --manifest s3://… --out s3://… --workers 2` with one rank on each of two worker
    nodes (no shared disk: each node's shard cache is in its own tmpfs). One rank is SIGKILLed after
    step KILL_AFTER; Ray Train restarts the group from the last checkpoint in the store, and the
    steps' data is exactly an undisturbed single-process run's: no sequence repeated or skipped."""
    from training.launch import run_worker
    from training.metrics_log import read_metrics
    from training.train_config import TrainConfig

    hidden = tmp_path_factory.getbasetemp()
    second = cluster.add_worker(num_cpus=1, hide=[hidden])
    out = f"s3://{s3.bucket}/runs/train"
    workdir = tmp_path_factory.mktemp("train-driver")
    config = {**TRAIN_CONFIG, "cache_dir": str(hidden / "shard-cache")}  # inside each node's private tmpfs
    (workdir / "train.json").write_text(json.dumps(config))
    flywheel = str(Path(sys.executable).with_name("flywheel"))
    env = {**cluster.env, "RAY_ADDRESS": cluster.address}
    log_path = workdir / "driver.log"
    with open(log_path, "wb") as log:
        driver = subprocess.Popen([flywheel, "train", str(workdir / "train.json"), "--manifest", curated.manifest,
                                   "--out", out, "--workers", "2"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, cwd=workdir, start_new_session=True)
    fs, metrics = s3.admin(), f"{s3.bucket}/runs/train/metrics.jsonl"
    killed = None
    try:
        deadline = time.monotonic() + 300
        while killed is None and driver.poll() is None and time.monotonic() < deadline:
            if fs.get_file_info(metrics).type == pafs.FileType.File:
                steps = fs.open_input_stream(metrics).read().decode().splitlines()
                if len(steps) >= KILL_AFTER:
                    killed = kill_one_train_worker(second) or kill_one_train_worker(cluster.workers[0])
            time.sleep(0.1)
        assert killed, f"no training worker was killed (exit {driver.poll()}):\n{log_path.read_text()[-3000:]}"
        assert driver.wait(timeout=400) == 0, log_path.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)

    for k, v in cluster.env.items():
        monkeypatch.setenv(k, v)
    got = read_metrics(out)
    assert [r["step"] for r in got] == list(range(1, TRAIN_STEPS + 1))
    assert [(r["consumed_start"], r["consumed"]) for r in got] == [(8 * i, 8 * (i + 1)) for i in range(TRAIN_STEPS)]
    assert {r["world"] for r in got} == {2}
    # The group was restarted from a checkpoint in the store (rank 0 prints its starting step).
    starts = [line for line in log_path.read_text(errors="replace").splitlines() if "tokens/step, from step" in line]
    assert len(starts) >= 2 and "from step 0 " in starts[0] and "from step 0 " not in starts[-1], starts

    # The same steps in one local process read the same sequences (an order-free digest per step).
    straight = TrainConfig.model_validate({**config, "manifest": curated.manifest, "workers": 1, "resume": False,
                                           "out_dir": str(tmp_path_factory.mktemp("straight")),
                                           "cache_dir": str(tmp_path_factory.mktemp("cache"))})
    run_worker(straight)
    expected = read_metrics(straight.out_dir)
    assert [r["data_digest"] for r in got] == [r["data_digest"] for r in expected]
