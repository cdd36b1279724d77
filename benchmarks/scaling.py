"""The same curation (dedup + tokenize, s3:// to s3://) on 1 node x 2 CPUs and on 2 nodes x 1 CPU
of this machine; writes `benchmarks/scaling.md`.

    .venv/bin/python benchmarks/scaling.py [--docs 8000] [--out benchmarks/scaling.md]

Both clusters are real `ray start` nodes (tests/cluster.py); the driver is `flywheel curate` on the
head, as a user runs it; moto's S3 on loopback is the only storage. Per run it reports:
- wall time of the driver and each stage's seconds (stats.json);
- driver-side work: the driver process's CPU seconds (getrusage of the waited-for child), and
  the tokenizer training, which streams a sample to the driver and trains there;
- the object store: each node's raylet exports Prometheus metrics (scraped every 0.25 s, exported
  every 0.5 s here): peak `ray_object_store_used_memory` summed over nodes, bytes spilled
  (`ray_spill_manager_objects_bytes{State="Spilled"}`, cumulative) and bytes received from another
  node's object manager (`ray_object_manager_bytes{Type="Received"}`: what moved between nodes,
  driver <-> worker included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster import LocalRayCluster, corpus_jsonl, curate, dedup_tokenize_config  # noqa: E402
from tests.s3 import local_s3  # noqa: E402

OBJECT_STORE_MB = 150
# Metrics every 0.5 s instead of Ray's 10 s, so the sampled peak means something.
METRICS_ENV = {"RAY_metrics_report_interval_ms": "500"}
SAMPLE = re.compile(r'^(ray_\w+)\{([^}]*)\}\s+(\S+)$')


def scrape(port: int) -> dict[tuple[str, str], float]:
    """{(metric, the label that tells series apart): value} of one node's raylet metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m is None or m.group(1) not in ("ray_object_store_used_memory", "ray_spill_manager_objects_bytes",
                                           "ray_object_manager_bytes"):
            continue
        kind = re.search(r'(?:State|Type)="([^"]*)"', m.group(2))
        values[(m.group(1), kind.group(1) if kind else "")] = float(m.group(3))
    return values


@dataclass
class StoreWatch:
    """Samples every node's metrics while a run goes on; keeps the peak of the summed store use
    and the last value of the cumulative counters."""

    ports: list[int]
    peak_used: float = 0.0
    last: dict[int, dict] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        used = 0.0
        for port in self.ports:
            try:
                self.last[port] = values = scrape(port)
            except OSError:
                continue  # the agent not serving yet
            used += values.get(("ray_object_store_used_memory", ""), 0.0)
        self.peak_used = max(self.peak_used, used)

    def run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(0.25)

    def __enter__(self) -> StoreWatch:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(1.5)  # one more export period: the counters' final values
        self._stop.set()
        self._thread.join()
        self.sample()

    def total(self, metric: str, kind: str) -> float:
        return sum(v.get((metric, kind), 0.0) for v in self.last.values())


def one_run(label: str, s3, head_cpus: int, worker_cpus: list[int], inputs: str) -> dict:
    with LocalRayCluster(env=s3.env, head_cpus=head_cpus, object_store_mb=OBJECT_STORE_MB,
                         system_env=METRICS_ENV) as cluster:
        for cpus in worker_cpus:
            cluster.add_worker(num_cpus=cpus)
        nodes = [cluster.head, *cluster.workers]
        output = f"s3://{s3.bucket}/runs/{label.replace(' ', '')}"
        load_before = os.getloadavg()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with StoreWatch([n.metrics_port for n in nodes]) as watch, tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            curate(cluster, dedup_tokenize_config(inputs, output), Path(tmp), timeout_s=1800)
            wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        stats = json.loads(s3.admin().open_input_stream(f"{output.removeprefix('s3://')}/stats.json").read())
        tokenize = next(s for s in stats["stages"] if s["name"] == "tokenize")
        return {
            "label": label, "nodes": len(nodes), "wall_s": wall, "load_before": load_before,
            "load_after": os.getloadavg(),
            "stages": {s["name"]: s["seconds"] for s in stats["stages"]},
            "docs_in": stats["stages"][0]["docs_in"], "docs_out": stats["stages"][-1]["docs_out"],
            "driver_cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "tokenizer_train_s": tokenize["extra"]["seconds"]["tokenizer"],
            "peak_store_mb": watch.peak_used / 2**20,
            "spilled_mb": watch.total("ray_spill_manager_objects_bytes", "Spilled") / 2**20,
            "between_nodes_mb": watch.total("ray_object_manager_bytes", "Received") / 2**20,
        }


NOTES = """How to read it:
- Both layouts have 2 CPUs for tasks and the same driver; the difference is what crossing a node costs.
  On one machine the "network" is the local interface (Ray 2.60 advertises the machine's address,
  not 127.0.0.1), so the transfer is cheap and the times mostly show scheduling noise: on a box
  shared with other test runs, two runs can differ by up to 2x (compare the load averages).
- Moved between nodes counts every object the object managers pulled from another node, the
  driver's pulls (tokenizer sample, tallies, shard records) included; on one node it is 0 by
  definition. The object store peak is summed over nodes: on 2 nodes a block used on the other
  node is held twice (the creating node's copy and the pulled one) until it is freed.
- Driver-side work: the driver's CPU time covers Ray Data's streaming executor, the per-stage
  bookkeeping (`per_block` results summed on the driver) and the BPE training on a streamed
  sample (`tokenize` stage, `seconds.tokenizer` in stats.json); the rest of the wall time is the
  cluster's.
- Nothing spilled: the run's blocks (~70 MB at most) fit the 150 MB stores. Pass `--docs` to
  push it past them."""


def render(runs: list[dict], docs: int, command: str) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Scaling: 1 node x 2 CPUs vs 2 nodes x 1 CPU",
        "",
        f"Written by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Machine: {os.cpu_count()} "
        f"CPUs ({cpu}), {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, shared "
        "with other engineers' test runs (see the load averages). Each node: `ray start --block`, "
        f"{OBJECT_STORE_MB} MB object store; the driver (`flywheel curate`) runs on the head; corpus "
        f"{docs:,} documents + copies in moto S3 on loopback; dedup (exact + MinHash) + tokenize, s3:// to s3://.",
        "",
        "| | " + " | ".join(r["label"] for r in runs) + " |",
        "|---|" + "---:|" * len(runs),
    ]

    def row(name: str, fmt) -> None:
        lines.append(f"| {name} | " + " | ".join(fmt(r) for r in runs) + " |")

    row("wall time (driver start to exit)", lambda r: f"{r['wall_s']:.1f} s")
    for stage in runs[0]["stages"]:
        row(f"&nbsp;&nbsp;stage `{stage}`", lambda r, s=stage: f"{r['stages'][s]:.1f} s")
    row("driver CPU time (whole run)", lambda r: f"{r['driver_cpu_s']:.1f} s")
    row("&nbsp;&nbsp;of which tokenizer training on the driver (wall)", lambda r: f"{r['tokenizer_train_s']:.1f} s")
    row("peak object store use (all nodes, sampled)", lambda r: f"{r['peak_store_mb']:.1f} MB")
    row("spilled to disk", lambda r: f"{r['spilled_mb']:.1f} MB")
    row("moved between nodes (object manager, received)", lambda r: f"{r['between_nodes_mb']:.1f} MB")
    row("documents in -> out", lambda r: f"{r['docs_in']:,} -> {r['docs_out']:,}")
    row("load average before (1/5/15 min)", lambda r: "/".join(f"{x:.1f}" for x in r["load_before"]))
    row("load average after", lambda r: "/".join(f"{x:.1f}" for x in r["load_after"]))
    lines += ["", NOTES]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=8000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "scaling.md")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per process on a 2-core box, as in tests
    with local_s3() as s3:
        fs = s3.admin()
        fs.create_dir(f"{s3.bucket}/raw")
        with fs.open_output_stream(f"{s3.bucket}/raw/part-0.jsonl") as f:
            f.write(corpus_jsonl(args.docs, seed=7))
        inputs = f"s3://{s3.bucket}/raw/"
        runs = [one_run("1 node x 2 CPUs", s3, 2, [], inputs),
                one_run("2 nodes x 1 CPU", s3, 1, [1], inputs)]
    command = ".venv/bin/python benchmarks/scaling.py" + (f" --docs {args.docs}" if args.docs != 8000 else "")
    text = render(runs, args.docs, command)
    print(text)
    print(json.dumps(runs, indent=1))
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
