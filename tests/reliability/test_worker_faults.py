"""A Ray worker SIGKILLed in the middle of a curation run: the run completes, and its output is
the undisturbed run's, row for row.

The kills are real: a watcher thread polls the process table and SIGKILLs the first worker seen
executing each target task (Ray names a worker's process after the task it runs, e.g.
`ray::MapBatches(_kept)->MapBatches(_StageTask)`). Ray re-executes the lost task from its
lineage; every stage is deterministic, so the result must not change.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from curation.config import parse_config
from curation.pipeline import run_pipeline
from tests.helpers import write_jsonl
from tests.reliability.report import record_fault

pytestmark = pytest.mark.slow

# Row-local filter tasks (heuristics), MinHash signature tasks and the read tasks.
TARGETS = ("MapBatches(_StageTask)", "MapBatches(signature_rows)", "MapBatches(_read_batch)")
WORDS = ("the of and to in is was for on that with as by at from this be are it not or have an they which "
         "river stone light morning paper garden window music letter forest silver bridge animal planet").split()


class WorkerKiller(threading.Thread):
    """SIGKILL the first Ray worker seen running each of `targets` (once per target)."""

    def __init__(self, targets: tuple[str, ...], poll_s: float = 0.01):
        super().__init__(daemon=True)
        self.targets, self.poll_s = list(targets), poll_s
        self.killed: list[tuple[str, int]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set() and self.targets:
            for proc in psutil.process_iter(["cmdline"]):
                title = (proc.info["cmdline"] or [""])[0]
                hit = next((t for t in self.targets if title.startswith("ray::") and t in title), None)
                if hit is not None:
                    try:
                        os.kill(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue  # finished between the listing and the kill: try the next one
                    self.killed.append((hit, proc.pid))
                    self.targets.remove(hit)
            time.sleep(self.poll_s)

    def stop(self) -> None:
        self._done.set()
        self.join()


def corpus(path: Path, docs: int = 5000, seed: int = 3) -> Path:
    rng = random.Random(seed)
    records = [{"id": f"d{i:05}", "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(60, 400)))}
               for i in range(docs)]
    records += [{"id": f"copy{i}", "text": records[i]["text"]} for i in range(0, docs, 50)]  # dedup has work
    return write_jsonl(path, records)


def config(inputs: Path, output: Path):
    return parse_config({"inputs": [str(inputs)], "output": str(output), "seed": 11, "stages": [
        "exact_dedup", {"name": "heuristics", "min_words": 80}, {"name": "minhash_dedup", "threshold": 0.8}]})


def rows(folder: Path) -> list[dict]:
    """Every row of a folder of Parquet files, in id order (file names carry a write uuid)."""
    table = pq.read_table(folder)
    return sorted(table.to_pylist(), key=lambda r: (r["id"], json.dumps(r, sort_keys=True, default=str)))


def counts(stats_path: Path) -> list[dict]:
    stats = json.loads(stats_path.read_text())
    return [{k: s[k] for k in ("name", "docs_in", "docs_out", "dropped", "tokens_in", "tokens_out")}
            for s in stats["stages"]]


def test_killed_workers_do_not_change_the_output(ray_local, tmp_path):
    inputs = corpus(tmp_path / "in.jsonl")
    calm = run_pipeline(config(inputs, tmp_path / "calm"))

    killer = WorkerKiller(TARGETS)
    killer.start()
    try:
        hit = run_pipeline(config(inputs, tmp_path / "hit"))
    finally:
        killer.stop()
    print("killed:", killer.killed)
    # At least the long tasks were caught running (the read tasks may finish between two polls).
    assert len(killer.killed) >= 2, killer.killed

    assert counts(Path(hit.stats_path)) == counts(Path(calm.stats_path))
    assert rows(Path(hit.data_dir)) == rows(Path(calm.data_dir))
    assert rows(Path(hit.rejects_dir)) == rows(Path(calm.rejects_dir))
    read = calm.stats.stages[0]
    final = calm.stats.stages[-1]
    lost = read.docs_in - final.docs_out - sum(sum(s.dropped.values()) for s in calm.stats.stages)
    assert lost == 0
    record_fault("Ray worker SIGKILLed mid-task (curation: read, heuristics, MinHash)", injected=len(killer.killed),
                 survived=True, records=read.docs_in, lost=lost, check="output identical to an undisturbed run")
