"""Starting ranks: in this process, as local processes (gloo on loopback), or on Ray Train.

    launch_local(cfg)                 # 1 process, or cfg.workers processes via torch.multiprocessing
    launch_ray(cfg)                   # Ray Train TorchTrainer, elastic, restarts on failure
    run_worker(cfg)                   # what every rank runs (also under torchrun)
    launch_local(cfg, make_trainer=sft_trainer)   # any of them: what a rank trains (default: pretraining)

Whatever starts the ranks, `run_worker` snaps the process count to a layout
(`layout.plan_layout`): W = pp x dp_replicate x dp_shard x tp ranks with the configured tp, pp
and dp_replicate, the data-parallel degree dividing the global batch, ep dividing the experts and
dp_shard x tp; rank 0 prints what it chose. Processes beyond W stay in the process group as
spares: they join the per-step control broadcast and every `ray.train.report`, and train nothing. Ray Train restarts the whole group
from the latest reported checkpoint after a failure or an elastic resize; the checkpoint is
resharded to the new layout and the data cursor continues with the first unseen sequence.
"""

from __future__ import annotations

import os
import posixpath
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from contract.layout import TrainingRun
from contract.locations import local_path, parent_location
from contract.manifest import Manifest, parse_manifest
from training.checkpoint import CheckpointManager, read_meta
from training.data.dataset import ManifestDataset
from training.data.fetch import Fetcher
from training.layout import Layout, plan_layout
from training.parallel import Meshes, build_meshes
from training.train_config import TrainConfig
from training.trainer import FitResult, Trainer, resolve_device

OnStep = Callable[[int, int], None]
OnCheckpoint = Callable[[int, str | None, dict[str, Any]], None]
# What a rank trains, built once its layout and meshes exist: pretraining's ManifestDataset and
# Trainer by default, a post-training kind's otherwise (training.sft.sft_trainer). Module-level
# functions, so spawned processes and Ray workers receive them by reference (with type(cfg)).
MakeTrainer = Callable[[TrainConfig, Meshes | None, Layout, torch.device], Trainer]


def read_manifest(location: str) -> Manifest:
    fetcher = Fetcher()
    try:
        return parse_manifest(fetcher.read_bytes(location))
    finally:
        fetcher.close()


def layout_for(cfg: TrainConfig, manifest: Manifest, available: int) -> Layout:
    model_cfg = cfg.build_model_config(manifest.tokenizer.vocab_size)
    return plan_layout(available, model_cfg.moe.n_routed_experts, cfg.ep, cfg.global_batch_seqs,
                       tp=cfg.tp, pp=cfg.pp, dp_replicate=cfg.dp_replicate, n_layers=model_cfg.n_layers)  # fmt: skip


def layout_reason(cfg: TrainConfig, layout: Layout) -> str:
    """Why the launcher chose this layout, after `Layout.summary`."""
    return (f"dp {layout.dp} divides the {cfg.global_batch_seqs}-sequence batch, ep {layout.ep} <= {cfg.ep} "
            f"divides the experts and dp_shard x tp = {layout.dp_shard * layout.tp}")  # fmt: skip


def broadcast_control(device: torch.device) -> Callable[[bool, bool], tuple[bool, bool]]:
    """(save, stop) as rank 0 sees them, on every process of the default group (spares too)."""

    def control(save: bool, stop: bool) -> tuple[bool, bool]:
        flags = torch.tensor([int(save), int(stop)], device=device)
        dist.broadcast(flags, src=0)
        return bool(flags[0]), bool(flags[1])

    return control


def pretraining_trainer(cfg: TrainConfig, meshes: Meshes | None, layout: Layout, device: torch.device) -> Trainer:
    # The ranks of one tp/pp group read the same data: the dataset's shard is the data rank.
    data_rank = meshes.data_rank if meshes is not None else 0
    dataset = ManifestDataset(cfg.manifest, cfg.seq_len, cfg.seed, rank=data_rank, world_size=layout.dp,
                              cache_dir=cfg.cache_dir)  # fmt: skip
    return Trainer(cfg, dataset, meshes, device)


def build_worker(
    cfg: TrainConfig, make_trainer: MakeTrainer = pretraining_trainer
) -> tuple[Trainer | None, Callable[[bool, bool], tuple[bool, bool]] | None]:
    """This process's Trainer (None on a spare rank) and the control broadcast (None alone).

    Uses the default process group when one is initialised (Ray Train, torchrun, spawn),
    otherwise trains alone. Collective: every process of the group must call it.
    """

    if cfg.manifest is None:
        raise ValueError("a training run needs a manifest")
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    manifest = read_manifest(cfg.manifest)
    distributed = dist.is_available() and dist.is_initialized()
    available = dist.get_world_size() if distributed else 1
    layout = layout_for(cfg, manifest, available)
    if not distributed or dist.get_rank() == 0:
        print(f"[flywheel train] {layout.summary(available)} ({layout_reason(cfg, layout)})", flush=True)
    meshes = build_meshes(layout, device.type) if distributed else None
    control = broadcast_control(device) if distributed else None
    if meshes is not None and not meshes.member:
        return None, control
    return make_trainer(cfg, meshes, layout, device), control


def run_worker(
    cfg: TrainConfig,
    resume_from: str | Path | None = None,
    on_checkpoint: OnCheckpoint | None = None,
    on_step: OnStep | None = None,
    prune_checkpoints: bool = True,
    make_trainer: MakeTrainer = pretraining_trainer,
) -> FitResult | None:
    """Train on this rank until cfg.steps; None on a spare rank.

    Resumes from `resume_from`, else (cfg.resume) from the latest complete checkpoint under
    cfg.out_dir/checkpoints. prune_checkpoints=False leaves deleting old checkpoints to someone
    else (Ray Train's CheckpointConfig).
    """
    trainer, control = build_worker(cfg, make_trainer)
    if trainer is None:
        while True:  # a spare: mirror the training ranks' control broadcasts and reports
            save, stop = control(False, False)
            if save and on_checkpoint is not None:
                on_checkpoint(-1, None, {})
            if stop:
                return None
    if not prune_checkpoints:
        trainer.checkpoints.keep = None
    if resume_from is None and cfg.resume:
        resume_from = trainer.checkpoints.latest()
    elif resume_from is None and trainer.checkpoints.latest() is not None:
        raise ValueError(f"{trainer.checkpoints.root} holds another run's checkpoints: resume it or use another out_dir")
    if resume_from is not None:
        trainer.resume(resume_from)
    if trainer.rank == 0:
        print(
            f"[flywheel train] {trainer.layout.describe()}; micro-batch {trainer.micro_batch} x "
            f"{trainer.accum} accumulation on each of {trainer.data_world} data ranks, {trainer.tokens_per_step} "
            f"tokens/step, from step {trainer.step} to {cfg.steps}",
            flush=True,
        )
    return trainer.fit(on_checkpoint=on_checkpoint, on_step=on_step, control=control)


# ---------------------------------------------------------------------------------------------
# Local processes (tests, benchmarks, a single machine without Ray)
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(
    rank: int, world: int, port: int, cfg_json: str, on_step: OnStep | None, threads: int,
    config_type: type[TrainConfig] = TrainConfig, make_trainer: MakeTrainer = pretraining_trainer,
) -> None:  # fmt: skip
    torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    cfg = config_type.model_validate_json(cfg_json)
    device = resolve_device(cfg.device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    try:
        run_worker(cfg, on_step=on_step, make_trainer=make_trainer)
    finally:
        dist.destroy_process_group()


def launch_local(cfg: TrainConfig, nprocs: int | None = None, on_step: OnStep | None = None,
                 make_trainer: MakeTrainer = pretraining_trainer) -> FitResult | None:  # fmt: skip
    """Train with `nprocs` (default cfg.workers) local processes.

    One process: in this process, without torch.distributed (or inside the group torchrun
    set up, when its environment is present). More: torch.multiprocessing.spawn, gloo on CPU
    (NCCL on GPUs) over a loopback port; each process gets cores / nprocs intra-op threads.
    Returns rank 0's FitResult when it ran in this process, else None (read metrics.jsonl).
    """
    nprocs = nprocs or cfg.workers
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        device = resolve_device(cfg.device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        try:
            return run_worker(cfg, on_step=on_step, make_trainer=make_trainer)
        finally:
            dist.destroy_process_group()
    if nprocs == 1:
        return run_worker(cfg, on_step=on_step, make_trainer=make_trainer)

    threads = max(1, (os.cpu_count() or 1) // nprocs)
    mp.spawn(_spawned, args=(nprocs, free_port(), cfg.model_dump_json(), on_step, threads, type(cfg), make_trainer),
             nprocs=nprocs, join=True)  # fmt: skip
    return None


# ---------------------------------------------------------------------------------------------
# Ray Train
# ---------------------------------------------------------------------------------------------


def _ray_train_loop(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: resume from the latest reported checkpoint, report each
    new one (every rank, the same number of times: spares report None)."""
    import ray.train  # Ray Train: --local runs without Ray
    from ray.train import Checkpoint  # Ray Train, as above
    from ray.train.v2.api.report_config import CheckpointUploadMode  # Ray Train, as above

    cfg = config.get("config_type", TrainConfig).model_validate(config["train"])

    def report(step: int, location: str | None, metrics: dict[str, Any]) -> None:
        # NOTE: the checkpoint is already in the run's storage (OUT/checkpoints, local or a store),
        # written there by DCP from every rank: nothing to upload, Ray only records it.
        checkpoint = Checkpoint(location) if location is not None else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)

    # Ray hands back the latest checkpoint its controller had registered, which can trail the
    # last one written (a failure right after a report). A later complete one under out_dir
    # (meta.json present: every rank finished writing) loses less work. Ray's path is inside its
    # own filesystem (no scheme on S3): the step folder's name is what locates it under OUT.
    checkpoints = CheckpointManager(TrainingRun(cfg.out_dir).checkpoints)
    reported = ray.train.get_checkpoint()
    candidates = [checkpoints.path_for_name(posixpath.basename(reported.path.rstrip("/")))] if reported else []
    if cfg.resume or reported is not None:
        latest = checkpoints.latest()
        candidates += [latest] if latest is not None else []
    resume_from = max(candidates, key=lambda p: read_meta(p)["step"], default=None)
    run_worker(cfg, resume_from=resume_from, on_checkpoint=report, on_step=config.get("on_step"),
               prune_checkpoints=False, make_trainer=config.get("make_trainer", pretraining_trainer))  # fmt: skip


def scaling_bounds(cfg: TrainConfig) -> int | tuple[int, int]:
    """Ray Train's num_workers: (min, max) when elastic, else the fixed count."""
    if cfg.min_workers is not None and cfg.min_workers < cfg.workers:
        return (cfg.min_workers, cfg.workers)
    return cfg.workers


def launch_ray(cfg: TrainConfig, on_step: OnStep | None = None, make_trainer: MakeTrainer = pretraining_trainer):
    """Run on Ray Train; returns ray.train.Result (raises if the run failed after retries).

    The run's storage is cfg.out_dir itself (Ray's run state beside metrics.jsonl and
    checkpoints/): on a cluster, a store URI (s3://bucket/runs/name, credentials from the
    standard AWS variables on every node) or a filesystem every node mounts. Starts a local Ray
    unless one is running or RAY_ADDRESS names a cluster.
    """
    import ray  # Ray Train: --local runs without Ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig  # Ray Train, as above
    from ray.train.torch import TorchConfig, TorchTrainer  # Ray Train, as above

    out = cfg.out_dir.rstrip("/")
    if local_path(out) is not None:
        out = str(local_path(out).resolve())
    manifest = cfg.manifest
    if manifest is not None and local_path(manifest) is not None:
        manifest = str(local_path(manifest).resolve())
    cfg = cfg.model_copy(update={"out_dir": out, "manifest": manifest})
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()
        else:
            ray.init(include_dashboard=False, object_store_memory=256 * 1024**2)
    use_gpu = resolve_device(cfg.device).type == "cuda"
    trainer = TorchTrainer(
        _ray_train_loop,
        train_loop_config={"train": cfg.model_dump(mode="json"), "on_step": on_step, "config_type": type(cfg),
                           "make_trainer": make_trainer},  # fmt: skip
        scaling_config=ScalingConfig(num_workers=scaling_bounds(cfg), use_gpu=use_gpu),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=posixpath.basename(out),
            storage_path=parent_location(out),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
    )
    return trainer.fit()
