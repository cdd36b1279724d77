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
import subprocess
import sys
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
