"""`flywheel train`: the function behind the command, and its `--dry-run` planner.

    flywheel train [CONFIG] --manifest URL_OR_PATH [--preset tiny|small|moe-67b] [--steps N]
                   [--workers N] [--out DIR] [--local] [--dry-run]

Writes DIR/metrics.jsonl (one JSON object per optimiser step) and DIR/checkpoints/. Without
`--local` the ranks are Ray Train workers (elastic between min_workers and workers, restarted
from the latest checkpoint on failure); with it they are local processes. `--dry-run` builds
the model on the meta device (nothing allocated) and prints its shapes and the memory each rank
would need, for any preset including moe-67b.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from contract.layout import TrainingRun
from training.config import ModelConfig, count_params
from training.config import preset as preset_config
from training.launch import launch_local, launch_ray, read_manifest
from training.layout import accumulation, plan_layout
from training.metrics_log import read_metrics
from training.planner import GB, PlanSpec, make_plan
from training.train_config import TrainConfig, load_train_config


def describe_shapes(model_cfg: ModelConfig) -> list[tuple[str, tuple[int, ...], int]]:
    """(name, shape, count) of every parameter of the first dense and first MoE block and of the
    root, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = model_cfg.build()
    first_moe = model_cfg.moe.n_dense_layers
    show = {"layers.0.", f"layers.{first_moe}."}
    rows = []
    for name, param in model.named_parameters():
        if not name.startswith("layers.") or any(name.startswith(prefix) for prefix in show):
            rows.append((name, tuple(param.shape), param.numel()))
    return rows


def plan_report(cfg: TrainConfig, vocab_size: int | None, workers: int, gpu: str = "h100") -> str:
    """Shapes (meta device) and per-rank memory of cfg's run on `workers` ranks.

    Memory comes from the capacity planner (`training.planner.make_plan`) for the layout this
    trainer would use (`plan_layout`: FSDP over every rank, ep dividing the experts and the
    ranks), without activation checkpointing (the trainer does not recompute).
    """

    vocab = vocab_size or preset_config(cfg.preset, 128_000).vocab_size
    model_cfg = cfg.build_model_config(vocab)
    layout = plan_layout(workers, model_cfg.moe.n_routed_experts, cfg.ep, cfg.global_batch_seqs, tp=cfg.tp,
                         pp=cfg.pp, dp_replicate=cfg.dp_replicate, n_layers=model_cfg.n_layers)  # fmt: skip
    micro, accum = accumulation(cfg.global_batch_seqs, layout.dp, cfg.micro_batch)
    spec = PlanSpec(gpus=layout.world, gpu=gpu, tokens=cfg.steps * cfg.global_batch_tokens, seq_len=cfg.seq_len,
                    global_batch_tokens=cfg.global_batch_tokens, micro_batch_seqs=micro, fsdp=layout.dp_shard,
                    tp=layout.tp, pp=layout.pp, ep=layout.ep, activation_checkpointing=False,
                    accumulate_unsharded_grads=not cfg.reduce_every_micro_batch)  # fmt: skip
    plan = make_plan(model_cfg, spec)
    counts = count_params(model_cfg)
    moe = model_cfg.moe
    lines = [
        f"preset {cfg.preset}: {model_cfg.n_layers} layers, dim {model_cfg.dim}, vocab {vocab}, "
        f"{moe.n_routed_experts} routed experts top-{moe.n_activated_experts} + {moe.n_shared_experts} shared "
        f"(width {moe.expert_dim})",
        f"parameters: {counts['total'] / 1e9:.2f}B total, {counts['active'] / 1e9:.2f}B active per token",
        f"layout for {workers} workers: {layout.describe()}; micro-batch {micro} x {accum} accumulation x "
        f"{layout.dp} data ranks = {cfg.global_batch_seqs} sequences of {cfg.seq_len} tokens",
        "",
        f"{'parameter (meta device, nothing allocated)':58s} {'shape':>22s} {'count':>14s}",
    ]
    for name, shape, count in describe_shapes(model_cfg):
        lines.append(f"{name:58s} {str(shape):>22s} {count:14,d}")
    if model_cfg.n_layers > moe.n_dense_layers + 1:
        lines.append(f"(layers {moe.n_dense_layers + 1}..{model_cfg.n_layers - 1} repeat the MoE block)")
    lines += ["", f"memory per rank, GB (bf16 compute, fp32 master/grads/AdamW; {plan.gpu.name}: {plan.gpu.memory_gb:g} GB):"]
    memory = plan.memory[False]
    for item, value in memory.items.items():
        lines.append(f"  {item:44s} {value / GB:10.2f}")
    lines.append(f"  {'total':44s} {memory.total / GB:10.2f}")
    lines += [f"note: {note}" for note in plan.notes]
    return "\n".join(lines)


def train_command(
    config: Path | None = None,
    manifest: str | None = None,
    preset: str | None = None,
    steps: int | None = None,
    workers: int | None = None,
    out: str | Path | None = None,
    local: bool = False,
    dry_run: bool = False,
    ep: int | None = None,
    seq_len: int | None = None,
    global_batch_tokens: int | None = None,
    micro_batch: int | None = None,
    tp: int | None = None,
    pp: int | None = None,
    dp_replicate: int | None = None,
) -> dict[str, Any]:
    """Run (or with dry_run, plan) a training run; returns a summary dict.

    Options override the config file's fields. Raises ValueError for problems the user can fix
    (bad config, no manifest).
    """
    cfg = load_train_config(
        config, manifest=manifest, preset=preset, steps=steps, workers=workers, out_dir=out, ep=ep, tp=tp, pp=pp,
        dp_replicate=dp_replicate, seq_len=seq_len, global_batch_tokens=global_batch_tokens, micro_batch=micro_batch,
    )  # fmt: skip
    if dry_run:
        vocab = None
        if cfg.manifest is not None:

            vocab = read_manifest(cfg.manifest).tokenizer.vocab_size
        text = plan_report(cfg, vocab, cfg.workers)
        print(text)
        return {"dry_run": True, "preset": cfg.preset}
    if cfg.preset == "moe-67b":
        raise ValueError("moe-67b is for planning only here: use --dry-run")
    if cfg.manifest is None:
        raise ValueError("give --manifest (a manifest.json path or URL) or `manifest:` in the config")

    if local:
        launch_local(cfg)
    else:
        result = launch_ray(cfg)
        if result.error is not None:
            raise RuntimeError(f"training failed: {result.error}")
    records = read_metrics(cfg.out_dir)
    last = records[-1] if records else {}
    summary = {
        "steps": last.get("step", 0),
        "loss_first": records[0]["loss"] if records else None,
        "loss_last": last.get("loss"),
        "tokens_per_s_mean": round(sum(r["tokens_per_s"] for r in records) / len(records), 1) if records else None,
        "metrics": TrainingRun(str(cfg.out_dir)).metrics,
        "checkpoints": TrainingRun(str(cfg.out_dir)).checkpoints,
    }
    print(
        f"[flywheel train] {summary['steps']} steps, loss {summary['loss_first']} -> {summary['loss_last']}, "
        f"{summary['tokens_per_s_mean']} tokens/s; {summary['metrics']}"
    )
    return summary
