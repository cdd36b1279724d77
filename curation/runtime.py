"""Where curation runs: an embedded local Ray by default, a cluster when RAY_ADDRESS is set.

Environment knobs (all optional):
  RAY_ADDRESS                    connect to this cluster instead of starting one
  FLYWHEEL_NUM_CPUS              CPUs of the embedded Ray (default: all)
  FLYWHEEL_OBJECT_STORE_MB       object store of the embedded Ray (default: Ray's, ~30% of RAM)
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from typing import Any

log = logging.getLogger(__name__)
_INIT_LOCK = threading.Lock()


def init_ray(*, num_cpus: int | None = None, object_store_mb: int | None = None) -> None:
    """Start (or join) Ray once per process and set the Ray Data defaults runs rely on."""
    import ray  # Ray (~1 s): imported by the first run, not by the CLI or the service
    import ray.data  # as above
    from ray.data.context import ShuffleStrategy  # as above

    with _INIT_LOCK:  # the service calls this from request threads and its reaper at once
        _init_once(ray, num_cpus, object_store_mb)
    ctx = ray.data.DataContext.get_current()
    # Same config + same input = same output: keep block order through every operator.
    ctx.execution_options.preserve_order = True
    # Shuffles as map/reduce tasks, whatever RAY_DATA_DEFAULT_SHUFFLE_STRATEGY says: a lost task
    # is re-run from lineage, while the actor-based `hash_shuffle` keeps partitions in aggregator
    # actors Ray Data 2.60 never restarts (one lost aggregator fails the run) and needs a CPU per
    # aggregator (it waits forever on a 1-CPU node). tests/reliability/test_node_faults.py.
    ctx.shuffle_strategy = ShuffleStrategy.SHUFFLE_V2
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def _init_once(ray, num_cpus: int | None, object_store_mb: int | None) -> None:
    if not ray.is_initialized():
        # Local use: Ray's token auth only adds a warning here (ENVIRONMENT.md).
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            num_cpus = num_cpus or _env_int("FLYWHEEL_NUM_CPUS")
            store = object_store_mb or _env_int("FLYWHEEL_OBJECT_STORE_MB")
            cpus = num_cpus or os.cpu_count() or 1
            ray.init(
                num_cpus=num_cpus,
                object_store_memory=store * 1024 * 1024 if store else None,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                # NOTE: Ray keeps only ~num_cpus idle workers; a pipeline alternates map tasks and
                # shuffle tasks, so every switch restarted workers (1-5 s each). Twice the CPUs
                # took the MinHash stage from 52 s to 2.5 s on 2 cores.
                _system_config={"num_workers_soft_limit": 2 * cpus},
            )


def cluster_cpus() -> int:
    import ray  # Ray, as above

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    return int(v) if v else None


def block_refs(ds) -> list:
    """The object refs of a materialized dataset's blocks, in order."""
    return [entry.ref for bundle in ds.iter_internal_ref_bundles() for entry in bundle.blocks]


def per_block(ds, fn, *args: Any) -> list:
    """[fn(block, index, *args) for each block of a materialized dataset], as plain Ray tasks.

    NOTE: a Ray Data execution costs ~0.4 s to start here whatever its size; a task ~10 ms.
    The pipeline's per-stage bookkeeping (tallies, rejects, summaries) runs this way.
    """
    import ray  # Ray, as above

    task = _per_block_task()
    return ray.get([task.remote(fn, ref, i, *args) for i, ref in enumerate(block_refs(ds))])


@functools.cache
def _per_block_task():
    import ray  # Ray, as above

    @ray.remote(max_retries=3)
    def apply(fn, block, index, *args):
        return fn(block, index, *args)

    return apply
