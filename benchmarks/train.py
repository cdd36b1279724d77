"""Training throughput on CPU: the MoE FFN against a dense FFN of the same active parameters,
and a whole training step on 1 against 2 local gloo workers.

    .venv/bin/python benchmarks/train.py [--tokens 2048] [--seconds 4] [--steps 12] [--preset tiny]

Table 1 (one process, one thread, best timing window, forward + backward of one FFN layer on `--tokens` tokens,
the small preset's shapes: D 512, 16 experts of F 384, top-2 + 1 shared):
- dense:   one SwiGLU of width (K' + Ks) F = 1152, the same FLOPs per token as the MoE's experts;
- moe:     router, permute, routed experts (grouped_mm or padded bmm), combine, shared expert.
Table 2 (a synthetic manifest made here, the given preset, global batch fixed): tokens/s of
optimiser steps (median and best of the steps after the first two) with 1 process, and 2 processes as
FSDP x EP (ep=2) and as FSDP only (ep=1). Each process gets cores / processes threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from training.config import MoEConfig, small  # noqa: E402
from training.data.synthetic import write_synthetic_dataset  # noqa: E402
from training.launch import launch_local  # noqa: E402
from training.metrics_log import read_metrics  # noqa: E402
from training.moe import FeedForward, MoE  # noqa: E402
from training.train_config import TrainConfig  # noqa: E402


def time_layer(layer: torch.nn.Module, x: torch.Tensor, seconds: float, windows: int = 5) -> float:
    """Tokens/s of forward + backward through `layer`: the best of `windows` timing windows
    (first call excluded). On a shared box the best window is the least disturbed one."""

    def once() -> None:
        out = layer(x)
        out = out[0] if isinstance(out, tuple) else out
        out.float().square().mean().backward()

    once()
    best = 0.0
    for _ in range(windows):
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / windows:
            once()
            runs += 1
        best = max(best, runs * x.shape[0] / (time.perf_counter() - start))
    return best


def ffn_table(tokens: int, seconds: float) -> list[tuple[str, float, float]]:
    cfg = small(32_000)
    moe_cfg: MoEConfig = cfg.moe
    torch.manual_seed(0)
    x = torch.randn(tokens, cfg.dim, requires_grad=True)
    rows = []
    dense = FeedForward(cfg.dim, cfg.dense_dim)
    rows.append((f"dense SwiGLU D{cfg.dim} F{cfg.dense_dim}", sum(p.numel() for p in dense.parameters()),
                 time_layer(dense, x, seconds)))  # fmt: skip
    for impl in ("grouped_mm", "bmm"):
        layer = MoE(cfg.dim, moe_cfg.model_copy(update={"experts_impl": impl}))
        layer.init_weights(cfg.init_std)
        active = sum(p.numel() for n, p in layer.named_parameters() if not n.startswith("experts."))
        active += moe_cfg.n_activated_experts * 3 * cfg.dim * moe_cfg.expert_dim
        rows.append((f"MoE {moe_cfg.n_routed_experts}x{moe_cfg.expert_dim} top-{moe_cfg.n_activated_experts}"
                     f"+{moe_cfg.n_shared_experts} ({impl})", active, time_layer(layer, x, seconds)))  # fmt: skip
    return rows


def run_training(manifest: str, out: Path, preset: str, workers: int, ep: int, steps: int) -> tuple[float, float]:
    """(median, best) tokens/s over the steps after the first two."""
    cfg = TrainConfig.model_validate({
        "preset": preset, "manifest": manifest, "out_dir": str(out), "steps": steps, "seq_len": 128,
        "global_batch_tokens": 128 * 16, "micro_batch": 8, "ep": ep, "workers": workers, "resume": False,
        "checkpoint_interval_s": 1e9, "peak_tflops_per_worker": 1.0, "model": {"attn_dropout": 0.0},
    })  # fmt: skip
    launch_local(cfg, nprocs=workers)
    speeds = [r["tokens_per_s"] for r in read_metrics(out)[2:]]
    return statistics.median(speeds), max(speeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    args = parser.parse_args()

    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"\nFFN layer, forward + backward, {args.tokens} tokens, 1 thread")
    print(f"{'layer':44s} {'active params':>14s} {'tokens/s':>10s} {'vs dense':>9s}")
    rows = ffn_table(args.tokens, args.seconds)
    for name, active, tps in rows:
        print(f"{name:44s} {active:14,d} {tps:10,.0f} {tps / rows[0][2]:9.2f}")

    with tempfile.TemporaryDirectory() as tmp:
        manifest = str(write_synthetic_dataset(Path(tmp) / "data", total_tokens=400_000, vocab_size=32_000,
                                               target_tokens=100_000, seed=0))  # fmt: skip
        print(f"\nTraining steps, preset {args.preset}, 2,048 tokens per step, {args.steps} steps")
        print(f"{'workers':30s} {'median tok/s':>12s} {'best tok/s':>10s} {'vs 1 (median)':>13s}")
        base = None
        for label, workers, ep in (("1 process", 1, 1), ("2 processes, FSDP x EP (ep 2)", 2, 2),
                                   ("2 processes, FSDP only (ep 1)", 2, 1)):  # fmt: skip
            median, best = run_training(manifest, Path(tmp) / f"run-{workers}-{ep}", args.preset, workers, ep, args.steps)
            base = base or median
            print(f"{label:30s} {median:12,.0f} {best:10,.0f} {median / base:13.2f}")


if __name__ == "__main__":
    main()
