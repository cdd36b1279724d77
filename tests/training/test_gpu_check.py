"""benchmarks/gpu_check.sh without a GPU, and the arithmetic and checks it reports on one."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.config import count_params
from training.planner import model_flops_per_token

REPO = Path(__file__).resolve().parents[2]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = load_gpu_check()


def test_without_a_gpu_it_says_so_and_exits_0():
    report = REPO / "benchmarks" / "gpu.md"
    before = report.stat().st_mtime_ns if report.exists() else None
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # hides any GPU this machine may have
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "gpu_check: no CUDA GPU here" in proc.stdout and "nothing measured" in proc.stdout
    assert (report.stat().st_mtime_ns if report.exists() else None) == before  # nothing written


def test_without_torch_it_says_so_and_exits_0(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")  # a Python whose `import torch` fails
    fake.chmod(0o755)
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env={**os.environ, "PYTHON": str(fake)},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0 and "has no torch" in proc.stdout


def test_mfu_arithmetic():
    # 50,000 tokens/s of a 6.96 GFLOP/token model on a 989 TFLOP/s GPU: 35.2%.
    assert gpu_check.mfu(50_000, 6.96e9, 989) == pytest.approx(50_000 * 6.96e9 / 989e12)
    assert gpu_check.mfu(50_000, 6.96e9, 989) == pytest.approx(0.3519, abs=1e-4)
    assert gpu_check.mfu(0, 1e9, 989) == 0
    assert gpu_check.peak_tflops_of("NVIDIA H200") == (989, "h200")
    assert gpu_check.peak_tflops_of("NVIDIA H100 80GB HBM3") == (989, "h100")
    assert gpu_check.peak_tflops_of("NVIDIA A100-SXM4-80GB") == (312, "a100-80g")
    assert gpu_check.peak_tflops_of("Some Future GPU")[0] == gpu_check.H200_PEAK_TFLOPS == 989


def test_runs_are_valid_train_configs_and_the_1b_is_1b_active(tmp_path):
    for name in gpu_check.RUNS:
        cfg = gpu_check.train_config(name, "manifest.json", str(tmp_path), 989.0)
        assert cfg.compile and cfg.activation_checkpointing != "none" and cfg.param_dtype == "bfloat16"
        assert cfg.global_batch_tokens == 2 * cfg.micro_batch * cfg.seq_len
    big = gpu_check.train_config("moe-1b", "manifest.json", str(tmp_path), 989.0).build_model_config(gpu_check.VOCAB)
    counts = count_params(big)
    assert 1.0e9 < counts["active"] < 1.2e9 and counts["total"] < 3e9  # 16 B/param of state: < 48 GB
    # The docstring's FLOPs per token, and the tokens/s 35% MFU on an H200 takes.
    flops = model_flops_per_token(big, 2048)
    assert flops == pytest.approx(6.96e9, rel=0.01)
    assert 0.35 * 989e12 / flops == pytest.approx(49_700, rel=0.01)


def test_grouped_mm_check_on_cpu():
    """The same comparison the GPU phase runs, on CPU shapes: bf16 is really used (errors > 0)
    and stays within the stated tolerance, an empty expert included."""
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("this torch has no _grouped_mm")
    errors = gpu_check.grouped_mm_errors("cpu", dim=64, hidden=48, counts=[30, 0, 50, 20])
    assert set(errors) == {"output", "grad input", "grad gate", "grad up", "grad down"}
    assert all(0 < e < gpu_check.GROUPED_MM_TOLERANCE for e in errors.values()), errors


def test_report_names_failures_and_the_target():
    results = {
        "grouped_mm": {"errors": {"output": 3e-3}, "tolerance": 2e-2, "passed": True},
        "small": {"error": "ran past its 150 s budget"},
        "moe-1b": {"params": {"total": 2.65e9, "active": 1.09e9}, "tokens_per_step": 32768, "tokens_per_s": 52_000.0,
                   "mfu": 0.366, "peak_memory_gb": 61.2, "loss_first_last": (10.4, 9.8), "wall_s": 140.0},
    }  # fmt: skip
    text = gpu_check.report_markdown("NVIDIA H200", 989, "h200", results)
    assert "| small | failed: ran past its 150 s budget" in text
    assert "| moe-1b | 2.65B / 1.09B | 32,768 | 52,000 | 36.6% | 61.2 GB |" in text
    assert "PASS: output 3.00e-03" in text and "36.6%, met" in text
    assert sys.executable  # the phases run under the same interpreter as the parent
