"""`flywheel train` (training.cli.train_command) on a synthetic manifest, and its dry run."""

from __future__ import annotations

import json
import resource

import pytest

from tests.training.helpers import write_tiny_manifest
from training.checkpoint import CheckpointManager, read_meta
from training.cli import train_command
from training.metrics_log import read_metrics


def test_train_command_writes_metrics_and_checkpoints(tmp_path):
    manifest = write_tiny_manifest(tmp_path / "data")
    config = tmp_path / "run.json"
    config.write_text(json.dumps({
        "seq_len": 32, "global_batch_tokens": 256, "micro_batch": 4, "peak_tflops_per_worker": 0.05,
        "model": {"attn_dropout": 0.0}, "optimizer": {"lr": 3e-3},
    }))  # fmt: skip
    out = tmp_path / "out"
    summary = train_command(config, manifest=manifest, preset="tiny", steps=6, workers=1, out=out, local=True)

    records = read_metrics(out)
    assert [r["step"] for r in records] == list(range(1, 7))
    for key in ("loss", "balance_loss", "z_loss", "lr", "tokens_per_s", "mfu", "grad_norm", "expert_load"):
        assert key in records[0]
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in records)
    assert records[0]["lr"] == pytest.approx(3e-3)  # 6 steps: warmup capped at a tenth = 0 steps
    assert summary["steps"] == 6 and summary["loss_last"] == records[-1]["loss"]
    meta = read_meta(CheckpointManager(out / "checkpoints").latest())
    assert meta["step"] == 6 and meta["consumed"] == 6 * 8 and meta["manifest_id"] == "synthetic"

    # Asking for more steps continues the same run from its last checkpoint.
    train_command(config, manifest=manifest, preset="tiny", steps=8, workers=1, out=out, local=True)
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 9))


def test_moe_67b_dry_run_plans_without_allocating(capsys):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    train_command(None, preset="moe-67b", workers=256, ep=8, dry_run=True)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    text = capsys.readouterr().out
    assert "67.87B total, 16.67B active" in text
    assert "world 256 = efsdp 32 x ep 8" in text
    assert "layers.0.ffn.experts.gate_proj" in text and "(64, 640, 7168)" in text
    assert "AdamW m + v (fp32, sharded)" in text and "total" in text
    assert grown_mb < 200, f"a dry run must not allocate the model ({grown_mb:.0f} MB grew)"


def test_moe_67b_refuses_to_train(tmp_path):
    with pytest.raises(ValueError, match="dry-run"):
        train_command(None, manifest=str(tmp_path / "m.json"), preset="moe-67b", out=tmp_path, local=True)
