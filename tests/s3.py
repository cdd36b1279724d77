"""moto's S3 server on loopback, configured the way a pod is: through the standard AWS variables.

    with local_s3() as s3:             # s3.env: AWS_ENDPOINT_URL_S3, keys, region
        fs, _ = pafs.FileSystem.from_uri(f"s3://{s3.bucket}/")

`pyarrow.fs.FileSystem.from_uri` honours AWS_ENDPOINT_URL (Arrow 14, apache/arrow#36791) and
AWS_ENDPOINT_URL_S3 (Arrow 15, apache/arrow#39160); a bare `S3FileSystem()` does not
(apache/arrow#49643), so Flywheel's code goes through `from_uri` and needs no S3 options.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pyarrow.fs as pafs
import pytest

from tests.helpers import free_port

KEY, SECRET, REGION, BUCKET = "flywheel-test", "flywheel-test-secret", "us-east-1", "flywheel-test"


@dataclass
class LocalS3:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str = BUCKET
    env: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return self.endpoint.removeprefix("http://")

    def admin(self) -> pafs.S3FileSystem:
        """A filesystem with explicit options (for test set-up only: the code under test must
        find the store through the environment)."""
        return pafs.S3FileSystem(endpoint_override=self.host, scheme="http", access_key=KEY, secret_key=SECRET,
                                 region=REGION, allow_bucket_creation=True)  # fmt: skip


@contextlib.contextmanager
def local_s3(bucket: str = BUCKET) -> Iterator[LocalS3]:
    """Start moto on a free loopback port, create `bucket`, stop it on exit. Sets nothing in
    os.environ: callers apply `env` where they need it (a monkeypatch, a subprocess's env)."""
    from moto.server import ThreadedMotoServer  # moto[server] is a dev dependency

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    s3 = LocalS3(endpoint, bucket, env)
    try:
        # moto keeps one in-memory store per process, whatever the server: start from an empty
        # one, or a bucket of an earlier test module (a training run's checkpoints) is still there.
        httpx.post(f"{endpoint}/moto-api/reset", timeout=30).raise_for_status()
        s3.admin().create_dir(bucket)
        yield s3
    finally:
        server.stop()


@contextlib.contextmanager
def ray_started_after_env() -> Iterator[None]:
    """A Ray started *after* the AWS variables are in os.environ, so its workers inherit them.

    A Ray already running in this test session (the `ray_local` fixture) was started without
    them; it is stopped here and started again, same size, once the variables are gone.
    """
    import ray  # Ray: only the tests that run pipelines on S3 start one

    from curation import runtime  # Ray Data, as above

    was_running = ray.is_initialized()
    if was_running:
        ray.shutdown()
    runtime.init_ray(num_cpus=2, object_store_mb=200)
    try:
        yield
    finally:
        ray.shutdown()
        if was_running:
            with pytest.MonkeyPatch.context() as mp:
                for k in ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
                    mp.delenv(k, raising=False)
                runtime.init_ray(num_cpus=2, object_store_mb=200)
