"""A run stopped and resumed at other world sizes trains on exactly the data, and reaches
exactly the losses, of a run that never stopped.

Phases of one run (schedule of 8 steps throughout):
  1. steps 1-3 on 2 ranks, EP=2 (experts split 4 + 4), checkpoint;
  2. steps 4-6 on 3 processes: the global batch of 8 sequences does not split 3 ways, so the
     layout snaps to 2 training ranks and one spare (which must follow along and exit);
  3. steps 7-8 on 1 process, no torch.distributed: the EP-sharded experts load into plain tensors.
"""

from __future__ import annotations

import json

import pytest
import torch

from contract.layout import TrainingRun
from tests.training.helpers import spawn, tiny_config, write_tiny_manifest
from training.checkpoint import CheckpointManager, read_meta
from training.launch import run_worker
from training.metrics_log import read_metrics
from training.train_config import TrainConfig

TOTAL = 8


def _run(rank: int, world: int, cfg_json: str) -> None:
    run_worker(TrainConfig.model_validate_json(cfg_json))


def config(manifest, out, steps, **overrides):
    schedule = {"lr": 3e-3, "router_lr": 3e-3, "schedule": {"total_steps": TOTAL, "warmup_steps": 2}}
    return tiny_config(manifest, out, steps=steps, optimizer=schedule, **overrides)


@pytest.mark.slow
def test_resume_on_other_world_sizes_continues_data_and_loss(tmp_path):
    manifest = write_tiny_manifest(tmp_path / "data")
    straight = tmp_path / "straight"
    run_worker(config(manifest, straight, TOTAL))
    expected = read_metrics(straight)

    out = tmp_path / "resumed"
    spawn(2, _run, config(manifest, out, 3, ep=2).model_dump_json())
    meta = read_meta(CheckpointManager(out / "checkpoints").latest())
    assert (meta["step"], meta["consumed"], meta["world"], meta["ep"]) == (3, 24, 2, 2)

    spawn(3, _run, config(manifest, out, 6, ep=2, resume=True).model_dump_json())
    run_worker(config(manifest, out, TOTAL, resume=True))
    got = read_metrics(out)

    assert [r["step"] for r in got] == list(range(1, TOTAL + 1))
    assert [(r["world"], r["ep"]) for r in got] == [(2, 2)] * 6 + [(1, 1)] * 2
    assert not (out / TrainingRun.rolled_back(TrainingRun.METRICS)).exists()
    # The cursor runs on without gap or overlap, and every step read the same sequences as the
    # uninterrupted run (the digest is over each step's (epoch, sequence) set, all ranks).
    assert [(r["consumed_start"], r["consumed"]) for r in got] == [(8 * i, 8 * (i + 1)) for i in range(TOTAL)]
    assert [r["data_digest"] for r in got] == [r["data_digest"] for r in expected]
    # Losses continue where they left: the resumed steps match the straight run (the small
    # difference is the balance loss over other micro-batch groupings, not the restart).
    torch.testing.assert_close(
        torch.tensor([r["loss"] for r in got]), torch.tensor([r["loss"] for r in expected]), rtol=0, atol=1e-3
    )
    steps = sorted(json.loads((p / "meta.json").read_text())["step"] for p in (out / "checkpoints").iterdir())
    assert steps == [6, 8]  # keep_checkpoints=2 pruned step 3


def test_metrics_after_the_checkpoint_are_rolled_back_on_resume(tmp_path):
    manifest = write_tiny_manifest(tmp_path / "data")
    out = tmp_path / "run"
    run_worker(config(manifest, out, 5, checkpoint_every_steps=2, keep_checkpoints=3))
    (out / "checkpoints" / "step_00000005" / "meta.json").unlink()  # as if the last save crashed
    run_worker(config(manifest, out, TOTAL, resume=True, checkpoint_every_steps=2, keep_checkpoints=3))
    assert [r["step"] for r in read_metrics(out)] == list(range(1, TOTAL + 1))
    rolled_back = [json.loads(line)["step"] for line in (out / TrainingRun.rolled_back(TrainingRun.METRICS)).read_text().splitlines()]
    assert rolled_back == [5]
