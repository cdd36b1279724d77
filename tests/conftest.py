"""Shared fixtures. Ray starts once per test session, small, and only for tests that ask."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def ray_local():
    """An embedded Ray sized for a 2-core CI box (200 MB object store, no dashboard)."""
    import ray

    from curation import runtime

    runtime.init_ray(num_cpus=2, object_store_mb=200)
    yield ray
    ray.shutdown()
