"""Small summaries for stats.json shared by the dedup stages: memory, histograms, rates."""

from __future__ import annotations

import json
import os
import resource
from collections import Counter
from typing import Any, Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.dedup.shuffle import map_partitions, runs
from curation.runtime import per_block
from curation.stages.base import REASON


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def raylet_pid() -> int | None:
    """The pid of this node's raylet (the parent of its Ray workers), asked of a tiny task."""
    import ray  # Ray: a report also runs on stats files alone

    @ray.remote(num_cpus=0)
    def parent() -> int:
        return os.getppid()

    return ray.get(parent.remote()) if ray.is_initialized() else None


def ray_worker_pids(raylet: int | None) -> list[int]:
    """Local processes started by `raylet` (workers, agents): other Ray clusters on the same
    machine are not counted."""
    if raylet is None or not os.path.isdir("/proc"):
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == raylet:
                pids.append(int(entry))
    return pids


def rss_mb(pids: list[int], field: str = "VmRSS:") -> float:
    return sum(_status_kb(p, field) for p in pids) / 1024


def peak_memory_mb() -> dict[str, float]:
    """Peak RSS of the driver, and the sum of the peak RSS (VmHWM) of this node's Ray workers
    still alive: an upper bound of their peak together (pages of the shared object store are
    counted in every process that mapped them). Linux /proc; remote nodes are not seen."""
    driver_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = rss_mb(ray_worker_pids(raylet_pid()), "VmHWM:")
    return {"driver_peak_rss_mb": round(driver_kb / 1024, 1), "ray_workers_peak_rss_mb": round(workers, 1)}


def size_histogram(sizes: Iterable[int]) -> dict[str, int]:
    """Cluster sizes in power-of-two bins: "2", "3-4", "5-8", ..."""
    hist: Counter[str] = Counter()
    for s in sizes:
        lo, hi = 2, 2
        while s > hi:
            lo, hi = hi + 1, hi * 2
        hist[str(lo) if lo == hi else f"{lo}-{hi}"] += 1
    return dict(sorted(hist.items(), key=lambda kv: int(kv[0].split("-")[0])))


def merge_histograms(hists: Iterable[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for h in hists:
        total.update(h)
    return dict(sorted(total.items(), key=lambda kv: int(kv[0].split("-")[0])))


def _rate_partials(batch: pa.Table, column: str, reasons: list[str]) -> pa.Table:
    dup = pc.is_in(batch[REASON], value_set=pa.array(reasons, pa.string())).cast(pa.int64())
    t = pa.table({"key": pc.fill_null(batch[column].cast(pa.string()), ""), "dup": dup})
    g = t.group_by("key").aggregate([("dup", "count"), ("dup", "sum")])
    return pa.table({"key": g["key"], "docs": g["dup_count"].cast(pa.int64()), "dups": g["dup_sum"].cast(pa.int64())})


def duplicate_rates(out, column: str, reasons: list[str]) -> dict[str, dict[str, Any]]:
    """{value of `column`: {docs, duplicates, rate}} over a stage's (materialized) output:
    partial counts per block, summed here; one small row per (block, value) reaches the driver."""

    totals: dict[str, list[int]] = {}
    for part in per_block(out, _block_rates, column, reasons):
        for row in part.to_pylist():
            acc = totals.setdefault(row["key"], [0, 0])
            acc[0] += row["docs"]
            acc[1] += row["dups"]
    return {k: {"docs": d, "duplicates": x, "rate": round(x / d, 6) if d else 0.0}
            for k, (d, x) in sorted(totals.items())}


def _block_rates(batch: pa.Table, _index: int, column: str, reasons: list[str]) -> pa.Table:
    if batch.num_rows == 0:
        return pa.table({"key": pa.array([], pa.string()), "docs": pa.array([], pa.int64()),
                         "dups": pa.array([], pa.int64())})
    return _rate_partials(batch, column, reasons)


def dropped_rows(batch: pa.Table, reasons: list[str]) -> pa.Table:
    return batch.filter(pc.is_in(batch[REASON], value_set=pa.array(reasons, pa.string())))


def _cluster_partials(part: pa.Table, top: int) -> pa.Table:
    """Per partition (every row of a cluster is in one): size histogram and largest clusters."""
    part = part.sort_by([("cluster", "ascending"), ("id", "ascending")])
    clusters = part["cluster"].to_pylist()
    kept, ids = part["kept"].to_pylist(), part["id"].to_pylist()
    starts, lengths = runs(np.asarray(clusters, dtype=object))
    sizes = lengths + 1  # the kept document is not among the dropped rows
    order = np.lexsort((np.arange(len(sizes)), -sizes))[:top]
    largest = [{"cluster": clusters[starts[i]], "size": int(sizes[i]),
                "sample_ids": [kept[starts[i]], ids[starts[i]]]} for i in order]
    summary = {"clusters": len(sizes), "histogram": size_histogram(sizes.tolist()), "largest": largest}
    return pa.table({"summary": [json.dumps(summary)]})


def cluster_summary(out, cluster_rows: Callable[[pa.Table], pa.Table], n_parts: int, rows: int,
                    top: int = 20, local_rows: int = 2_000_000) -> dict[str, Any]:
    """Duplicate clusters count, size histogram and the `top` largest clusters (two sample ids
    each: the kept one and a dropped one), from `cluster_rows(block)`: rows (cluster, kept, id),
    one per dropped item. Up to `local_rows` rows they are summarised on the driver (a Ray
    shuffle costs ~1 s to start), beyond it per hash partition of the cluster."""
    if rows <= local_rows:

        tables = [t for t in per_block(out, _apply_rows, cluster_rows) if t.num_rows]
        parts = [json.loads(_cluster_partials(pa.concat_tables(tables), top)["summary"][0].as_py())] if tables else []
    else:
        found = map_partitions(out.map_batches(cluster_rows, batch_format="pyarrow"), ["cluster"], n_parts,
                               _cluster_partials, top=top).take_all()
        parts = [json.loads(r["summary"]) for r in found]
    largest = sorted((c for s in parts for c in s["largest"]), key=lambda c: (-c["size"], c["cluster"]))[:top]
    return {"duplicate_clusters": sum(s["clusters"] for s in parts),
            "cluster_size_histogram": merge_histograms(s["histogram"] for s in parts),
            "largest_clusters": largest}


def _apply_rows(batch: pa.Table, _index: int, fn: Callable[[pa.Table], pa.Table]) -> pa.Table:
    return fn(batch) if batch.num_rows else pa.table({})
