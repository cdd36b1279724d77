"""One-GPU check for the day a GPU machine is lent: bf16, torch.compile and activation checkpointing
on `small` and a ~1B-active MoE, and bf16 grouped_mm against the fp32 expert path.

    bash benchmarks/gpu_check.sh        # from the repo root; prints a table, writes benchmarks/gpu.md

Phases, each in its own process with its own time budget (one that hangs, fails to compile or
runs out of memory costs only its budget and is reported as such); 30 + 150 + 240 s = 7 min:
- grouped_mm: `experts_grouped_mm` in bf16 against `experts_padded_bmm` in fp32 on the 1B config's
  expert shapes with uneven loads (one expert empty): the output and the input and weight gradients;
  passes when each relative error ||bf16 - fp32|| / ||fp32|| is under GROUPED_MM_TOLERANCE.
- small, moe-1b: `launch_local` on one GPU with GPU_SETTINGS (bf16 autocast, each block
  compiled, selective activation checkpointing, FlexAttention document masking, chunked loss)
  on a synthetic manifest written here; tokens/s is the median of the second half of the steps
  (compilation and warm-up excluded), MFU = tokens/s x model FLOPs per token (6 x active matmul
  parameters + attention, training.planner) / the GPU's dense bf16 peak (H100/H200 SXM: 989
  TFLOP/s, from training.planner.GPUS), peak memory torch.cuda.max_memory_allocated.

The ~1B-active config (MOE_1B: 2.65B total, 1.09B active, 6.96 GFLOP per token at 2,048 tokens)
is sized so that >= 35% MFU on one H200 is plausible:
- every matmul is large: 16k tokens per micro-batch (8 x 2,048) against width 2,048, and 16
  experts of width 1,408 with top-4 routing give each expert ~4k rows, where Hopper's bf16
  grouped GEMMs run at 60-70% of peak; a finer split (64 experts of 352) would starve them;
- the matmuls are 88% of the FLOPs (attention 12% at 2,048 tokens), so the memory-bound rest
  (norms, routing, permutation, the optimizer step amortised over 2 micro-batches) costs little;
- it fits one GPU without FSDP: 16 bytes per parameter of fp32 master weights, gradients and
  AdamW state is 42 GB; activations are 28 GB without checkpointing, 3 GB with full (training.planner's
  count), selective in between, and the chunked loss keeps the logits small (141 GB on an H200, 80
  on an H100).
Without a GPU the check says so and exits 0, writing nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from training.planner import GPUS, model_flops_per_token  # noqa: E402

REPORT = REPO / "benchmarks" / "gpu.md"
H200_PEAK_TFLOPS = GPUS["h200"].bf16_tflops  # 989 dense bf16, the MFU denominator
GROUPED_MM_TOLERANCE = 2e-2  # bf16 keeps 8 mantissa bits: ~0.4% per rounding, K-long sums average out

# Every switch issue 17 adds for GPU memory and speed, on (TrainConfig fields).
GPU_SETTINGS = {
    "device": "cuda", "param_dtype": "bfloat16", "compile": True, "activation_checkpointing": "selective",
    "attention": "flex", "loss_chunk_tokens": 4096,
}  # fmt: skip
# ~1B active: 16 layers of width 2,048 (16 heads of 128), 16 experts of 1,408, top-4 + 1 shared,
# first layer dense; the 32k vocabulary of the synthetic manifest. Sizing: see the module docstring.
MOE_1B = {
    "dim": 2048, "n_layers": 16, "n_heads": 16, "max_seq_len": 2048, "tie_embeddings": False,
    "attn_dropout": 0.0,
    "moe": {"n_routed_experts": 16, "n_activated_experts": 4, "n_shared_experts": 1, "expert_dim": 1408,
            "n_dense_layers": 1},
}  # fmt: skip
# name: (preset, model overrides, seq_len, micro-batch sequences, steps, seconds allowed)
RUNS = {
    "small": ("small", {"attn_dropout": 0.0}, 1024, 16, 30, 150),
    "moe-1b": ("small", MOE_1B, 2048, 8, 24, 240),
}
GROUPED_MM_BUDGET_S = 30
VOCAB = 32_000


def mfu(tokens_per_s: float, flops_per_token: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: the model FLOPs done per second over the GPU's dense peak."""
    return tokens_per_s * flops_per_token / (peak_tflops * 1e12)


def peak_tflops_of(device_name: str) -> tuple[float, str]:
    """(dense bf16 peak, the GPUS key it came from) for a CUDA device name; the H200's otherwise."""
    name = device_name.lower()
    for key, spec in GPUS.items():
        if key.split("-")[0] in name:
            return spec.bf16_tflops, key
    return H200_PEAK_TFLOPS, "h200 (assumed: unknown device)"


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30))


def grouped_mm_errors(device: str, dim: int, hidden: int, counts: list[int], seed: int = 0) -> dict[str, float]:
    """Relative errors of bf16 grouped_mm against the fp32 padded-bmm path: output and the
    gradients of the three expert weights and the input (loss = sum(y * r), r fixed)."""
    from training.moe import experts_grouped_mm, experts_padded_bmm

    gen = torch.Generator().manual_seed(seed)
    n_experts, rows = len(counts), sum(counts)
    x = torch.randn(rows, dim, generator=gen)
    weights = [torch.randn(n_experts, hidden, dim, generator=gen) * dim**-0.5,
               torch.randn(n_experts, hidden, dim, generator=gen) * dim**-0.5,
               torch.randn(n_experts, dim, hidden, generator=gen) * hidden**-0.5]  # fmt: skip
    probe = torch.randn(rows, dim, generator=gen).to(device)
    counts_E = torch.tensor(counts, device=device)

    def run(kernel, dtype):
        leaves = [t.to(device=device, dtype=dtype, copy=True).requires_grad_() for t in (x, *weights)]
        y = kernel(*leaves, counts_E)
        (y.float() * probe).sum().backward()
        return [y.detach(), *(t.grad for t in leaves)]

    want = run(experts_padded_bmm, torch.float32)
    got = run(experts_grouped_mm, torch.bfloat16)
    names = ("output", "grad input", "grad gate", "grad up", "grad down")
    return {name: relative_error(g, w) for name, g, w in zip(names, got, want)}


def phase_grouped_mm() -> dict:
    dim, hidden = MOE_1B["dim"], MOE_1B["moe"]["expert_dim"]
    counts = [4096 + 256 * (i % 5) - 512 for i in range(16)]
    counts[3] = 0  # an expert nobody chose: offsets repeat, the kernel must skip it
    errors = grouped_mm_errors("cuda", dim, hidden, counts)
    return {"errors": errors, "tolerance": GROUPED_MM_TOLERANCE,
            "passed": all(e < GROUPED_MM_TOLERANCE for e in errors.values())}  # fmt: skip


def train_config(name: str, manifest: str, out_dir: str, peak_tflops: float):
    """The TrainConfig of a RUNS entry: 2 micro-batches per step (the optimizer step amortised)."""
    from training.train_config import TrainConfig

    preset, model, seq_len, micro, steps, _budget = RUNS[name]
    return TrainConfig.model_validate({
        "preset": preset, "model": model, "manifest": manifest, "out_dir": out_dir, "seq_len": seq_len,
        "micro_batch": micro, "global_batch_tokens": 2 * micro * seq_len, "steps": steps, "resume": False,
        "checkpoint_interval_s": 1e9, "peak_tflops_per_worker": peak_tflops, "seed": 0, **GPU_SETTINGS,
    })  # fmt: skip


def phase_training(name: str, manifest: str, peak_tflops: float) -> dict:
    from training.config import count_params
    from training.launch import launch_local
    from training.metrics_log import read_metrics

    with tempfile.TemporaryDirectory() as out:
        cfg = train_config(name, manifest, out, peak_tflops)
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        launch_local(cfg, nprocs=1)
        wall = time.perf_counter() - start
        rows = read_metrics(out)
    model_cfg = cfg.build_model_config(VOCAB)
    flops = model_flops_per_token(model_cfg, cfg.seq_len)
    # The second half of the steps: compilation and the allocator's warm-up are behind.
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in rows[len(rows) // 2:])
    return {
        "params": count_params(model_cfg), "seq_len": cfg.seq_len, "tokens_per_step": cfg.global_batch_tokens,
        "steps": len(rows), "wall_s": wall, "tokens_per_s": tokens_per_s, "flops_per_token": flops,
        "mfu": mfu(tokens_per_s, flops, peak_tflops), "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9,
        "loss_first_last": (rows[0]["loss"], rows[-1]["loss"]),
    }  # fmt: skip


def run_phase(name: str, budget_s: float, args: list[str]) -> dict:
    """A phase in a child process, killed after its budget; its result, or why there is none."""
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        cmd = [sys.executable, __file__, "--phase", name, "--result", result.name, *args]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, timeout=budget_s, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return {"error": f"ran past its {budget_s:.0f} s budget"}
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            return {"error": f"exit {proc.returncode} after {seconds:.0f} s: {tail[0][:300]}"}
        return {**json.loads(Path(result.name).read_text()), "phase_s": seconds}


def report_markdown(device: str, peak: float, peak_source: str, results: dict[str, dict]) -> str:
    lines = [
        "# GPU check (benchmarks/gpu_check.sh)", "",
        f"{device}, torch {torch.__version__}, CUDA {torch.version.cuda}; MFU against {peak:g} TFLOP/s dense bf16 "
        f"({peak_source}). Settings: `{json.dumps(GPU_SETTINGS)}`.", "",
        "| run | total / active params | tokens/step | tokens/s | MFU | peak memory | loss first -> last | wall |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for name in RUNS:
        r = results.get(name, {"error": "not run"})
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | | |")
            continue
        p = r["params"]
        lines.append(f"| {name} | {p['total'] / 1e9:.2f}B / {p['active'] / 1e9:.2f}B | {r['tokens_per_step']:,} | "
                     f"{r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['peak_memory_gb']:.1f} GB | "
                     f"{r['loss_first_last'][0]:.3f} -> {r['loss_first_last'][1]:.3f} | {r['wall_s']:.0f} s |")
    g = results.get("grouped_mm", {"error": "not run"})
    lines += ["", f"grouped_mm bf16 against the fp32 padded bmm (relative error, tolerance {GROUPED_MM_TOLERANCE:g}):"]
    if "error" in g:
        lines.append(f"failed: {g['error']}")
    else:
        errors = ", ".join(f"{k} {v:.2e}" for k, v in g["errors"].items())
        lines.append(f"{'PASS' if g['passed'] else 'FAIL'}: {errors}")
    target = results.get("moe-1b", {}).get("mfu")
    lines += ["", "Target: >= 35% MFU on the ~1B preset on one H200: "
              + ("not measured" if target is None else f"{target:.1%}, {'met' if target >= 0.35 else 'NOT met'}"), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=["grouped_mm", *RUNS], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--peak", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:  # a child: one phase, its result as JSON
        torch.manual_seed(0)
        result = phase_grouped_mm() if args.phase == "grouped_mm" else phase_training(args.phase, args.manifest,
                                                                                      args.peak)
        Path(args.result).write_text(json.dumps(result))
        return 0

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU here (torch {torch.__version__}, torch.cuda.is_available() is False, "
              f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): nothing measured, "
              f"{REPORT.relative_to(REPO)} left as it is")
        return 0
    device = torch.cuda.get_device_name(0)
    peak, peak_source = peak_tflops_of(device)
    print(f"gpu_check: {device}, peak {peak:g} TFLOP/s bf16 ({peak_source})", flush=True)
    from training.data.synthetic import write_synthetic_dataset

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = str(write_synthetic_dataset(Path(tmp) / "data", total_tokens=2_000_000, vocab_size=VOCAB,
                                               mean_doc_tokens=1000, target_tokens=500_000, seed=0))  # fmt: skip
        results["grouped_mm"] = run_phase("grouped_mm", GROUPED_MM_BUDGET_S, [])
        print(f"grouped_mm: {results['grouped_mm']}", flush=True)
        for name, (*_, budget) in RUNS.items():
            results[name] = run_phase(name, budget, ["--manifest", manifest, "--peak", str(peak)])
            print(f"{name}: {results[name]}", flush=True)
            REPORT.write_text(report_markdown(device, peak, peak_source, results))  # partial results survive
    text = report_markdown(device, peak, peak_source, results)
    REPORT.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
