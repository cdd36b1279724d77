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

    .venv/bin/python benchmarks/train.py --switches [--steps 12] [--repeats 2] [--preset tiny]

Switches (issue 17's memory and speed switches and parallel layouts, one run): for each, runs
with it off and on, back to back in ABBA order (a shared box drifts less within a group), the
best of `--repeats` each way, as wall-clock tokens/s from the end of step 2 to the last step (so
a recompile, a checkpoint save or a pipeline's idle time between steps all count) and their
ratio on / off. Single-process
switches against 1 process; fsdp_prefetch, tp=2 and pp=2 on 2 processes against 2 processes of
plain FSDP. A switch whose field fails validation or whose run raises (e.g. FlexAttention, which has no
CPU backward in torch 2.13) is reported as skipped with the reason. Writes benchmarks/train_switches.md.
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


def bench_config(manifest: str, out: Path, preset: str, workers: int, steps: int, **overrides) -> TrainConfig:
    """2,048 tokens per step (16 x 128-token sequences, micro-batches of 8), no dropout."""
    return TrainConfig.model_validate({
        "preset": preset, "manifest": manifest, "out_dir": str(out), "steps": steps, "seq_len": 128,
        "global_batch_tokens": 128 * 16, "micro_batch": 8, "workers": workers, "resume": False,
        "checkpoint_interval_s": 1e9, "peak_tflops_per_worker": 1.0, "model": {"attn_dropout": 0.0}, **overrides,
    })  # fmt: skip


def run_training(manifest: str, out: Path, preset: str, workers: int, ep: int, steps: int) -> tuple[float, float]:
    """(median, best) tokens/s over the steps after the first two."""
    cfg = bench_config(manifest, out, preset, workers, steps, ep=ep)
    launch_local(cfg, nprocs=workers)
    speeds = [r["tokens_per_s"] for r in read_metrics(out)[2:]]
    return statistics.median(speeds), max(speeds)


# ---------------------------------------------------------------------------------------------
# Switches: each on against off
# ---------------------------------------------------------------------------------------------

# (label, processes, overrides when on, overrides when off). Both runs of async_checkpoint save
# every 4 steps, so what differs is whether training waits for the write.
SWITCHES = [
    ("activation_checkpointing: selective", 1, {"activation_checkpointing": "selective"}, {}),
    ("activation_checkpointing: full", 1, {"activation_checkpointing": "full"}, {}),
    ("compile", 1, {"compile": True}, {}),
    ("attention: flex (vs sdpa)", 1, {"attention": "flex"}, {"attention": "sdpa"}),
    ("loss_chunk_tokens: 256", 1, {"loss_chunk_tokens": 256}, {}),
    ("async_checkpoint (save every 4 steps)", 1, {"async_checkpoint": True, "checkpoint_every_steps": 4},
     {"checkpoint_every_steps": 4}),
    ("fsdp_prefetch (2 ranks, ep 2)", 2, {"fsdp_prefetch": True, "ep": 2}, {"ep": 2}),
    ("tp=2 (vs 2 ranks of FSDP)", 2, {"tp": 2}, {}),
    ("pp=2 (vs 2 ranks of FSDP)", 2, {"pp": 2}, {}),
]  # fmt: skip


def wall_tokens_per_s(out: Path) -> float:
    """Tokens over wall-clock time from the end of step 2 to the last step's record."""
    rows = read_metrics(out)
    if len(rows) < 4:
        raise ValueError(f"{len(rows)} steps: too few to time")
    return (rows[-1]["tokens"] - rows[1]["tokens"]) / (rows[-1]["time"] - rows[1]["time"])


def run_switch(manifest: str, root: Path, preset: str, steps: int, workers: int, overrides: dict) -> float:
    out = root / f"run-{len(list(root.iterdir()))}"
    launch_local(bench_config(manifest, out, preset, workers, steps, **overrides), nprocs=workers)
    return wall_tokens_per_s(out)


def switch_rows(manifest: str, root: Path, preset: str, steps: int, repeats: int) -> list[dict]:
    """Off and on `repeats` times each in ABBA order (drift cancels), the best run of each: on a
    shared box the fastest run is the least disturbed one."""
    rows = []
    for label, workers, on, off in SWITCHES:
        row = {"switch": label, "processes": workers}
        try:
            bench_config(manifest, root, preset, workers, steps, **on)  # validation first: cheap
            speeds = {"off": [], "on": []}
            for i in range(repeats):
                for key in ("off", "on") if i % 2 == 0 else ("on", "off"):
                    speeds[key].append(run_switch(manifest, root, preset, steps, workers, on if key == "on" else off))
            row.update({key: max(values) for key, values in speeds.items()})
        except Exception as e:  # noqa: BLE001  a switch not built yet: skipped, with its reason
            row["skipped"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"
        rows.append(row)
        print(format_switch_row(row), flush=True)
    return rows


def format_switch_row(row: dict) -> str:
    if "skipped" in row:
        return f"| {row['switch']} | {row['processes']} | | | | skipped: {row['skipped']} |"
    return (f"| {row['switch']} | {row['processes']} | {row['off']:,.0f} | {row['on']:,.0f} | "
            f"{row['on'] / row['off']:.2f} | |")


def switches_markdown(rows: list[dict], preset: str, steps: int, repeats: int, header: str) -> str:
    lines = [
        "# CPU tokens/s of each switch, on against off (benchmarks/train.py --switches)", "", header, "",
        f"Preset {preset}, 16 x 128-token sequences per step (micro-batches of 8), {steps} steps; tokens/s = "
        f"wall clock from the end of step 2 to the last step, the best of {repeats} run(s) each way (ABBA order). "
        "Ratio > 1: faster with the switch on. On CPU the "
        "GPU switches (compile, flex attention, checkpointing) have other costs than on a GPU: these ratios say "
        "what each costs here, not what it gains there.", "",
        "| switch | processes | off tok/s | on tok/s | on / off | note |", "| --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    return "\n".join(lines + [format_switch_row(r) for r in rows]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--switches", action="store_true", help="each issue-17 switch on against off")
    parser.add_argument("--repeats", type=int, default=2, help="--switches: runs each way per switch")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("train_switches.md"))
    args = parser.parse_args()

    torch.set_num_threads(1)
    header = f"torch {torch.__version__}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
    print(header)
    if args.switches:
        with tempfile.TemporaryDirectory() as tmp:
            manifest = str(write_synthetic_dataset(Path(tmp) / "data", total_tokens=400_000, vocab_size=32_000,
                                                   target_tokens=100_000, seed=0))  # fmt: skip
            runs = Path(tmp) / "runs"
            runs.mkdir()
            print("| switch | processes | off tok/s | on tok/s | on / off | note |")
            rows = switch_rows(manifest, runs, args.preset, args.steps, args.repeats)
        args.out.write_text(switches_markdown(rows, args.preset, args.steps, args.repeats, header))
        print(f"wrote {args.out}")
        return
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
