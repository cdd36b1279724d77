"""Ray Train end to end: an elastic 2-worker run whose rank 1 is SIGKILLed mid-run finishes
through FailureConfig, resumed from the last reported checkpoint, without skipping or repeating
a sequence, and with the loss continuing from the checkpoint. Its out_dir is a local folder, or
an `s3://` URI (moto on loopback): checkpoints, metrics.jsonl and Ray's run state in the store."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from contract.jsonl import read_jsonl
from contract.layout import TrainingRun, join
from tests.s3 import local_s3
from tests.training.helpers import tiny_config, write_tiny_manifest
from training.launch import launch_ray, run_worker
from training.metrics_log import read_metrics

REPO = Path(__file__).resolve().parents[2]
STEPS, KILL_AT = 8, 5


@dataclass(frozen=True)
class KillOnce:
    """on_step hook: rank `rank` SIGKILLs its own process after `step`, on the first attempt
    only (the marker file survives the restart)."""

    marker: str
    step: int
    rank: int = 1

    def __call__(self, step: int, rank: int) -> None:
        if step == self.step and rank == self.rank and not os.path.exists(self.marker):
            Path(self.marker).write_text(json.dumps({"pid": os.getpid(), "step": step}))
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    """The run's out_dir: a local folder, or a prefix in moto's S3 (found through the AWS variables)."""
    if request.param == "local":
        yield str(tmp_path / "ray-run"), {}
        return
    pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")
    with local_s3() as s3, pytest.MonkeyPatch.context() as mp:
        for k, v in s3.env.items():
            mp.setenv(k, v)
        yield f"s3://{s3.bucket}/runs/ray-run", s3.env


@pytest.fixture
def ray_cluster(storage):
    import ray

    # Workers import this module to unpickle KillOnce: put the repository on their path. They
    # find the store through the same AWS variables as the driver.
    env = {"PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", **storage[1]}
    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False, ignore_reinit_error=True,
             runtime_env={"env_vars": env})  # fmt: skip
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_worker_run_resumes_from_checkpoint_and_finishes(tmp_path, storage, ray_cluster):
    torch.set_num_threads(1)
    manifest = write_tiny_manifest(tmp_path / "data")
    straight = tmp_path / "straight"
    run_worker(tiny_config(manifest, straight, steps=STEPS))
    expected = read_metrics(straight)

    out = storage[0]
    marker = tmp_path / "killed.json"
    # metrics_flush_s=0: on S3 every line is uploaded at once, so the lines past the checkpoint
    # the kill throws away are in the store to be rolled back, as they are on a local disk.
    cfg = tiny_config(manifest, out, steps=STEPS, workers=2, min_workers=1, ep=2, max_failures=2,
                      checkpoint_every_steps=2, metrics_flush_s=0)  # fmt: skip
    result = launch_ray(cfg, on_step=KillOnce(str(marker), KILL_AT))

    assert result.error is None
    assert json.loads(marker.read_text())["step"] == KILL_AT  # the kill did happen
    assert result.checkpoint.path.rstrip("/").endswith(f"ray-run/checkpoints/step_{STEPS:08d}")

    got = read_metrics(out)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    # The cursor has neither gap nor overlap and each step read what an uninterrupted run reads.
    assert [(r["consumed_start"], r["consumed"]) for r in got] == [(8 * i, 8 * (i + 1)) for i in range(STEPS)]
    assert [r["data_digest"] for r in got] == [r["data_digest"] for r in expected]
    torch.testing.assert_close(
        torch.tensor([r["loss"] for r in got]), torch.tensor([r["loss"] for r in expected]), rtol=0, atol=1e-3
    )
    # Work after the last checkpoint before the kill was thrown away and redone from it: the
    # same data and, since training resumed from the checkpoint, the same loss.
    rolled_back = read_jsonl(join(out, TrainingRun.rolled_back(TrainingRun.METRICS)))
    assert [r["step"] for r in rolled_back] == [KILL_AT]  # the step-4 checkpoint was used
    redone = got[KILL_AT - 1]
    assert rolled_back[0]["data_digest"] == redone["data_digest"]
    assert abs(rolled_back[0]["loss"] - redone["loss"]) < 1e-3
