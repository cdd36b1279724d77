"""Shared fixtures. Ray starts once per test session, small, and only for tests that ask."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# One intra-op thread per process: tests run several processes (Ray workers, gloo ranks) on
# 2 cores, and oversubscribed OpenMP threads made a 3 s test take 144 s.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def ray_local():
    """An embedded Ray sized for a 2-core CI box (200 MB object store, no dashboard)."""
    import ray

    from curation import runtime

    runtime.init_ray(num_cpus=2, object_store_mb=200)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch intra-op thread in tests that use torch: on a shared 2-core box two OpenMP
    threads spin against other processes (an overfit test took 144 s with 2, 3 s with 1)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
