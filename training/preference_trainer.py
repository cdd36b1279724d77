"""The loop the reward model and DPO share: pairs in, a pairwise objective, FSDP, checkpoints.

    trainer = PreferenceTrainer(cfg, build_objective, meshes, device)   # loads the init checkpoint
    trainer.resume(path)                                                # optional
    trainer.fit()                                                       # until cfg.steps
    launch(cfg, build_objective)                                        # 1 process, or cfg.workers gloo/NCCL ranks
    launch_ray(cfg, build_objective)                                    # Ray Train workers, restarted on failure

An objective (`PairObjective`: training.reward_model's Bradley-Terry, training.dpo's DPO) owns
the trained module and scores a PairBatch: a loss and a margin per pair (chosen minus rejected:
the reward, or DPO's implicit reward), plus named per-pair values that are logged as means.
The loop is the pretraining trainer's, for pairs: a step reads `global_batch_pairs` pairs
(PairSampler: each data rank its share), accumulates micro-batches of `micro_pairs`, clips, steps
AdamW under the article's schedule (training.optim), logs OUT/metrics.jsonl, evaluates the held-out
pairs into OUT/eval.jsonl (at step 0, every eval_every_steps, at the end) and checkpoints with
CheckpointManager (model, optimizer, scheduler, the sampler's cursor).

Layouts: FSDP2 over the data-parallel ranks, with expert parallelism up to `ep` (training.parallel);
no tensor or pipeline parallelism here. Evaluation runs every held-out pair on every rank (the
sharded forwards are collectives): simple, and redundant work on all but one rank.
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from contract.jsonl import read_text
from contract.layout import TrainingRun
from contract.locations import local_path, parent_location
from training.checkpoint import CheckpointManager, TrainingState
from training.config import ModelConfig
from training.evaluate import checkpoint_tokenizer
from training.export_hf import load_checkpoint_model, resolve_checkpoint, resolve_model_config
from training.launch import free_port
from training.layout import Layout, accumulation, plan_layout
from training.memory import autocast
from training.metrics_log import MetricsLog, read_metrics
from training.moe import register_router_bias_hook
from training.optim import RecipeScheduler, build_optimizer
from training.parallel import Meshes, build_meshes, clip_grad_norm_, parallelize, set_gradient_sync
from training.preference_config import PreferenceConfig
from training.preference_data import (
    EncodedPair,
    PairBatch,
    PairEncoder,
    PairSampler,
    collate_pairs,
    pairs_fingerprint,
    read_preference_pairs,
)
from training.trainer import resolve_device, resolve_param_dtype

MARGIN_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


# ---------------------------------------------------------------------------------------------
# Objectives
# ---------------------------------------------------------------------------------------------


@dataclass
class PairScores:
    loss_P: torch.Tensor  # per-pair loss (its mean is the objective)
    margin_P: torch.Tensor  # chosen minus rejected score: > 0 is a correct preference
    aux_loss: torch.Tensor  # the trained model's MoE balance + z losses (scalar)
    values: dict[str, torch.Tensor] = field(default_factory=dict)  # per-pair, logged as means
    tokens: int = 0  # real (non-padding) tokens the forward saw


class PairObjective(Protocol):
    model: nn.Module  # trained and checkpointed (sharded under FSDP)
    kind: str  # "reward_model" | "dpo": meta.json's `kind`

    def score(self, batch: PairBatch) -> PairScores: ...


# (cfg, init model (a plain float32 Transformer on CPU), meshes or None, device) -> objective
BuildObjective = Callable[[PreferenceConfig, nn.Module, Meshes | None, torch.device], PairObjective]


def shard(module: nn.Module, meshes: Meshes | None, device: torch.device, param_dtype: torch.dtype | None,
          backbone: nn.Module | None = None) -> nn.Module:  # fmt: skip
    """`module` on device, FSDP2-sharded (and expert-parallel) when meshes are given.

    backbone: the Transformer inside `module` (default: module itself) gets the pretraining
    layout (`parallelize`); a wrapper's own parameters (a reward head) go to a root unit of their
    own, so their gradients are averaged over the ranks like every other.
    Every rank holds the same full init weights (read from the checkpoint) and keeps its shards.
    NOTE: so the whole model passes through each host's memory once; a model larger than that
    needs the pretraining path instead (built on the meta device, then a sharded DCP load).
    """
    module.to(device)
    if meshes is None:
        return module
    backbone = backbone if backbone is not None else module
    parallelize(backbone, meshes, param_dtype=param_dtype)
    if backbone is not module:
        fully_shard(module, mesh=meshes.dp, mp_policy=MixedPrecisionPolicy(param_dtype=param_dtype,
                                                                           reduce_dtype=torch.float32),
                    reshard_after_forward=False)  # fmt: skip
    return module


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy that never trains: eval mode, no gradients."""
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def ranked_right(margin_P: torch.Tensor) -> torch.Tensor:
    """1 per pair ranked right (margin > 0), 0.5 per tie (a coin flip's due), float64."""
    return (margin_P > 0).double() + 0.5 * (margin_P == 0).double()


def preference_accuracy(margin_P: torch.Tensor) -> float:
    """Fraction of pairs ranked right, ties counting half."""
    return float(ranked_right(margin_P).mean())


def pair_summary(loss_P: torch.Tensor, margin_P: torch.Tensor, values: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Held-out report: pairs, mean loss, accuracy, the margin's distribution, each value's mean."""
    margin = margin_P.double()
    quantiles = torch.quantile(margin, torch.tensor(MARGIN_QUANTILES, dtype=torch.float64)).tolist()
    return {
        "pairs": int(margin.numel()),
        "loss": float(loss_P.double().mean()),
        "accuracy": preference_accuracy(margin),
        "margin": {"mean": float(margin.mean()), "std": float(margin.std(unbiased=False)), "min": float(margin.min()),
                   **{f"p{round(q * 100):02d}": v for q, v in zip(MARGIN_QUANTILES, quantiles)},
                   "max": float(margin.max())},  # fmt: skip
        **{name: float(v.double().mean()) for name, v in values.items()},
    }


@torch.no_grad()
def evaluate_pairs(objective: PairObjective, encoded: list[EncodedPair], batch_pairs: int, pad_id: int,
                   device: torch.device) -> dict[str, Any]:  # fmt: skip
    """`pair_summary` over every pair, plus accuracy and mean margin per `category` when the pairs
    carry one; in eval mode (restored after), deterministic, the same forwards on every rank."""
    model = objective.model
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    try:
        for start in range(0, len(encoded), batch_pairs):
            scores = objective.score(collate_pairs(encoded[start : start + batch_pairs], pad_id).to(device))
            for name, v in {"loss": scores.loss_P, "margin": scores.margin_P, **scores.values}.items():
                parts.setdefault(name, []).append(v.detach().float().cpu())
    finally:
        model.train(was_training)
    cat = {name: torch.cat(v) for name, v in parts.items()}
    loss, margin = cat.pop("loss"), cat.pop("margin")
    report = pair_summary(loss, margin, cat)
    categories = [e.category for e in encoded]
    if any(c is not None for c in categories):
        report["categories"] = {
            name: {"pairs": len(rows), "accuracy": preference_accuracy(margin[rows]),
                   "margin_mean": float(margin[rows].double().mean())}
            for name in sorted({c or "none" for c in categories})
            for rows in [[i for i, c in enumerate(categories) if (c or "none") == name]]
        }  # fmt: skip
    return report


# ---------------------------------------------------------------------------------------------
# Loading the init checkpoint and its tokenizer
# ---------------------------------------------------------------------------------------------


def load_init_model(init: str | Path, disable_dropout: bool) -> tuple[nn.Module, dict[str, Any]]:
    """The init checkpoint's Transformer (float32, CPU) and meta.json; dropout off when asked."""
    step_dir = resolve_checkpoint(init)
    cfg: ModelConfig = resolve_model_config(step_dir)
    if disable_dropout:
        cfg = cfg.model_copy(update={"attn_dropout": 0.0})
    model, meta = load_checkpoint_model(step_dir, config=cfg)
    return model.train(), {**meta, "step_dir": str(step_dir)}


def tokenizer_for(meta: dict[str, Any], explicit: str | None) -> tuple[Any, int, int, str | None]:
    """(tokenizer, EOS id, padding id, tokenizer.json location or None) for a checkpoint: the
    file given, else the one its meta.json records, else its training manifest's."""
    location = explicit or meta.get("tokenizer")
    tok, eos_id = checkpoint_tokenizer(meta, location)
    if eos_id is None:
        raise ValueError("the tokenizer has no EOS token: preference answers end with it")
    pad_id = tok.token_to_id("<|pad|>")
    local = local_path(location) if location else None
    return tok, eos_id, eos_id if pad_id is None else pad_id, str(local.resolve()) if local is not None else location


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


class PreferenceTrainer:
    """One rank's loop over pairs. `meshes` is None for a single process."""

    def __init__(self, cfg: PreferenceConfig, build_objective: BuildObjective, meshes: Meshes | None,
                 device: torch.device):  # fmt: skip
        self.cfg, self.meshes, self.device = cfg, meshes, device
        self.group = meshes.group if meshes is not None else None
        self.data_group = meshes.data_group if meshes is not None else None
        self.layout = meshes.layout if meshes is not None else Layout(world=1)
        self.rank = dist.get_rank(self.group) if self.group is not None else 0
        data_rank = meshes.data_rank if meshes is not None else 0
        self.micro_pairs, self.accum = accumulation(cfg.global_batch_pairs, self.layout.dp, cfg.micro_pairs)

        init_model, self.init_meta = load_init_model(cfg.init_checkpoint, cfg.disable_dropout)
        self.model_cfg: ModelConfig = init_model.cfg
        tok, eos_id, self.pad_id, self.tokenizer_location = tokenizer_for(self.init_meta, cfg.tokenizer)
        self.encoder = PairEncoder(tok, eos_id, cfg.max_len, cfg.prompt_format)
        pairs = read_preference_pairs(cfg.data, split="train")
        self.fingerprint = pairs_fingerprint(pairs)
        self.train_pairs = self.encoder.encode_all(pairs)
        self.eval_pairs = [e for source in cfg.eval_files
                           for e in self.encoder.encode_all(read_preference_pairs(source, split="eval"))]  # fmt: skip
        self.truncated = sum(e.truncated for e in self.train_pairs)
        top = max(max(e.prompt + e.chosen + e.rejected) for e in self.train_pairs + self.eval_pairs)
        if top >= self.model_cfg.vocab_size:
            raise ValueError(f"token id {top} is outside the model's vocabulary ({self.model_cfg.vocab_size}): "
                             "the tokenizer is not the init checkpoint's")  # fmt: skip

        torch.manual_seed(cfg.seed)  # a new head's initialisation
        self.objective = build_objective(cfg, init_model, meshes, device)
        self.model = self.objective.model
        self.autocast_dtype = resolve_param_dtype(cfg.param_dtype, device) if meshes is None else None
        self.optimizer = build_optimizer(self.model, cfg.optimizer)
        self.scheduler = RecipeScheduler(self.optimizer, cfg.optimizer)
        register_router_bias_hook(self.optimizer, self.model, group=self.data_group)
        self.sampler = PairSampler(len(self.train_pairs), cfg.seed, data_rank, self.layout.dp)

        self.step = 0
        self.metrics = MetricsLog(cfg.out_dir, enabled=self.rank == 0)
        self.eval_log = MetricsLog(cfg.out_dir, enabled=self.rank == 0, name=TrainingRun.EVAL)
        self.checkpoints = CheckpointManager(TrainingRun(cfg.out_dir).checkpoints, cfg.checkpoint_interval_s,
                                             cfg.checkpoint_every_steps, keep=cfg.keep_checkpoints,
                                             group=self.group)  # fmt: skip
        self.state = TrainingState(self.model, self.optimizer, self.scheduler, self._trainer_state,
                                   self._load_trainer_state)  # fmt: skip

    # -- state --------------------------------------------------------------------------------

    def _trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "data": self.sampler.state_dict(), "pairs_fingerprint": self.fingerprint,
                "global_batch_pairs": self.cfg.global_batch_pairs}  # fmt: skip

    def _load_trainer_state(self, state: dict[str, Any]) -> None:
        if state["pairs_fingerprint"] != self.fingerprint:
            raise ValueError("the checkpoint was trained on other preference pairs")
        if state["global_batch_pairs"] != self.cfg.global_batch_pairs:
            raise ValueError("the checkpoint used another global batch; the data cursor would not line up")
        self.sampler.load_state_dict(state["data"])
        self.step = int(state["step"])

    def checkpoint_meta(self) -> dict[str, Any]:
        """meta.json: what `RewardModel.load`, `flywheel evaluate` and `export-hf` need from it alone."""
        inherited = {k: self.init_meta[k] for k in ("manifest", "seq_len", "document_mask") if k in self.init_meta}
        return {**inherited, "kind": self.objective.kind, "model_config": self.model_cfg.model_dump(mode="json"),
                "init_checkpoint": self.init_meta["step_dir"], "tokenizer": self.tokenizer_location,
                "prompt_format": self.cfg.prompt_format, "max_len": self.cfg.max_len, "world": self.layout.world,
                "ep": self.layout.ep, "consumed_pairs": self.sampler.consumed}  # fmt: skip

    def resume(self, path: str) -> int:
        """Load a checkpoint; metrics.jsonl and eval.jsonl are cut back to its step."""
        self.checkpoints.load(path, self.state)
        self.metrics.rollback_after(self.step)
        self.eval_log.rollback_after(self.step)
        return self.step

    # -- one step -----------------------------------------------------------------------------

    def _reseed(self) -> None:
        torch.manual_seed((self.cfg.seed * 1_000_003 + self.step) * 4099 + self.sampler.rank)

    def train_step(self) -> dict[str, float]:
        """Forward/backward over this rank's micro-batches, clip, step; the step's sums reduced over
        the data ranks. Each micro-batch's mean loss is scaled by 1/accum and FSDP averages over
        the ranks: the gradient of the mean over all the step's pairs."""
        self.model.train()
        indices = self.sampler.next_indices(self.cfg.global_batch_pairs)
        names: list[str] | None = None
        sums: torch.Tensor | None = None
        for i in range(self.accum):
            chunk = [self.train_pairs[j] for j in indices[i * self.micro_pairs : (i + 1) * self.micro_pairs]]
            batch = collate_pairs(chunk, self.pad_id).to(self.device)
            set_gradient_sync(self.model, i == self.accum - 1)
            with autocast(self.device, self.autocast_dtype):
                scores = self.objective.score(batch)
                loss = scores.loss_P.mean() + scores.aux_loss
            (loss / self.accum).backward()
            names = names or ["loss", "accuracy", "margin", "aux_loss", *scores.values]
            parts = [scores.loss_P.sum(), ranked_right(scores.margin_P).sum(), scores.margin_P.sum(),
                     scores.aux_loss * len(chunk), *(v.sum() for v in scores.values.values()),
                     torch.tensor(float(scores.tokens), device=self.device)]  # fmt: skip
            row = torch.stack([p.detach().double() for p in parts])  # the step's sums: one all-reduce
            sums = row if sums is None else sums + row
        norm = clip_grad_norm_(self.model.parameters(), self.cfg.optimizer.max_grad_norm)
        lr = next(g["lr"] for g in self.optimizer.param_groups if g["name"] != "router")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.data_group is not None:
            dist.all_reduce(sums, group=self.data_group)
        totals = sums.tolist()
        pairs = self.cfg.global_batch_pairs
        stats = {name: totals[k] / pairs for k, name in enumerate(names)}
        return {**stats, "tokens": int(totals[-1]), "grad_norm": float(norm), "lr": lr}

    # -- evaluation ---------------------------------------------------------------------------

    def evaluate(self) -> dict[str, Any] | None:
        if not self.eval_pairs:
            return None
        start = time.perf_counter()
        report = evaluate_pairs(self.objective, self.eval_pairs, self.cfg.eval_batch_pairs, self.pad_id, self.device)
        record = {"step": self.step, **report, "eval_s": round(time.perf_counter() - start, 4),
                  "time": round(time.time(), 3)}  # fmt: skip
        self.eval_log.write(record)
        return record

    def eval_due(self, final: bool) -> bool:
        every = self.cfg.eval_every_steps
        return final or self.step == 0 or (every is not None and self.step % every == 0)

    # -- the loop -----------------------------------------------------------------------------

    def _agree(self, save: bool) -> bool:
        """Rank 0's checkpoint decision on every rank (the wall clock differs per rank)."""
        if self.group is None:
            return save
        flag = torch.tensor([int(save)], device=self.device)
        dist.broadcast(flag, src=dist.get_global_rank(self.group, 0), group=self.group)
        return bool(flag.item())

    def fit(self) -> list[dict[str, Any]]:
        """Train from self.step to cfg.steps; returns this run's metrics records."""
        cfg = self.cfg
        records = []
        if self.step == 0:
            self.metrics.truncate()
            self.eval_log.truncate()
            if self.eval_due(final=False):
                self.evaluate()
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            self._reseed()
            stats = self.train_step()
            self.step += 1
            seconds = time.perf_counter() - t0
            record = {"step": self.step, **{k: round(v, 6) for k, v in stats.items() if k != "lr"}, "lr": stats["lr"],
                      "pairs": self.step * cfg.global_batch_pairs, "tokens_per_s": round(stats["tokens"] / seconds, 1),
                      "step_s": round(seconds, 4), "consumed": self.sampler.consumed, "world": self.layout.world,
                      "ep": self.layout.ep, "micro_pairs": self.micro_pairs, "accum": self.accum,
                      "time": round(time.time(), 3)}  # fmt: skip
            self.metrics.write(record)
            records.append(record)
            final = self.step >= cfg.steps
            if self.eval_due(final):
                self.evaluate()
            if self._agree(self.checkpoints.due(self.step, final)):
                self.checkpoints.save(self.step, self.state, self.checkpoint_meta())
        return records


# ---------------------------------------------------------------------------------------------
# Launching
# ---------------------------------------------------------------------------------------------


def layout_for(cfg: PreferenceConfig, world: int) -> Layout:
    """Every rank trains: the data-parallel degree must divide the global batch of pairs."""
    n_experts = resolve_model_config(resolve_checkpoint(cfg.init_checkpoint)).moe.n_routed_experts
    layout = plan_layout(world, n_experts, cfg.ep, cfg.global_batch_pairs)
    if layout.world != world:
        raise ValueError(f"{world} ranks cannot split {cfg.global_batch_pairs} pairs per step evenly: "
                         "choose workers dividing global_batch_pairs")  # fmt: skip
    return layout


def run_rank(cfg: PreferenceConfig, build_objective: BuildObjective) -> list[dict[str, Any]]:
    """This process's part of the run (alone, or in the initialised default process group).
    Resumes from the latest checkpoint under out_dir when cfg.resume, else refuses to mix runs."""
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    meshes = None
    if dist.is_available() and dist.is_initialized():
        meshes = build_meshes(layout_for(cfg, dist.get_world_size()), device.type)
    trainer = PreferenceTrainer(cfg, build_objective, meshes, device)
    latest = trainer.checkpoints.latest()
    if latest is not None and not cfg.resume:
        raise ValueError(f"{trainer.checkpoints.root} holds another run's checkpoints: resume it or use another "
                         "out_dir")
    if latest is not None:
        trainer.resume(latest)
    if trainer.rank == 0:
        print(f"[flywheel {trainer.objective.kind}] {len(trainer.train_pairs)} pairs ({trainer.truncated} truncated to "
              f"{cfg.max_len} tokens), {len(trainer.eval_pairs)} held out; {trainer.layout.describe()}; "
              f"{trainer.micro_pairs} pairs x {trainer.accum} accumulation on each of {trainer.layout.dp} data ranks; "
              f"steps {trainer.step} -> {cfg.steps}", flush=True)  # fmt: skip
    return trainer.fit()


def _spawned(rank: int, world: int, port: int, cfg_json: str, cfg_type: type, build_objective: BuildObjective,
             threads: int) -> None:  # fmt: skip
    torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    cfg = cfg_type.model_validate_json(cfg_json)
    dist.init_process_group("nccl" if resolve_device(cfg.device).type == "cuda" else "gloo", rank=rank,
                            world_size=world)  # fmt: skip
    try:
        run_rank(cfg, build_objective)
    finally:
        dist.destroy_process_group()


def launch(cfg: PreferenceConfig, build_objective: BuildObjective) -> None:
    """Run with cfg.workers local processes (gloo on CPU, NCCL on GPUs), or inside the group
    torchrun set up; results are in OUT/metrics.jsonl, eval.jsonl, checkpoints/.
    build_objective must be a module-level function (it is pickled to the spawned ranks)."""
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if resolve_device(cfg.device).type == "cuda" else "gloo")
        try:
            run_rank(cfg, build_objective)
        finally:
            dist.destroy_process_group()
        return
    if cfg.workers == 1:
        run_rank(cfg, build_objective)
        return
    threads = max(1, (os.cpu_count() or 1) // cfg.workers)
    mp.spawn(_spawned, args=(cfg.workers, free_port(), cfg.model_dump_json(), type(cfg), build_objective, threads),
             nprocs=cfg.workers, join=True)  # fmt: skip


def _ray_loop(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: Ray has set up the process group; a restarted group
    resumes from the latest complete checkpoint under out_dir (`run_rank`, resume on)."""
    run_rank(config["cls"].model_validate(config["cfg"]), config["build_objective"])


def absolute_locations(cfg: PreferenceConfig) -> PreferenceConfig:
    """cfg with local paths made absolute: workers run in other directories (store URIs stay)."""

    def absolute(location: str | None) -> str | None:
        path = local_path(location) if location is not None else None
        return str(path.resolve()) if path is not None else location

    return cfg.model_copy(update={
        "init_checkpoint": absolute(cfg.init_checkpoint), "data": absolute(cfg.data),
        "tokenizer": absolute(cfg.tokenizer), "eval_files": [absolute(p) for p in cfg.eval_files],
        "out_dir": absolute(cfg.out_dir.rstrip("/")),
    })  # fmt: skip


def launch_ray(cfg: PreferenceConfig, build_objective: BuildObjective):
    """Run on Ray Train (cfg.workers workers, gloo on CPU, NCCL on GPUs), restarting the group from
    the latest checkpoint after a failure (cfg.max_failures times); returns ray.train.Result.
    Starts a local Ray unless one is running or RAY_ADDRESS names a cluster."""
    import ray  # Ray Train: local runs go without Ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig  # Ray Train, as above
    from ray.train.torch import TorchConfig, TorchTrainer  # Ray Train, as above

    cfg = absolute_locations(cfg)
    if not cfg.resume and CheckpointManager(TrainingRun(cfg.out_dir).checkpoints).latest() is not None:
        raise ValueError(f"{cfg.out_dir} holds another run's checkpoints: resume it or use another out_dir")
    if not ray.is_initialized():
        ray.init(**({} if os.environ.get("RAY_ADDRESS") else {"include_dashboard": False,
                                                               "object_store_memory": 256 * 1024**2}))  # fmt: skip
    use_gpu = resolve_device(cfg.device).type == "cuda"
    # resume on: a restart after a failure continues from the checkpoints this very run wrote.
    config = {"cfg": cfg.model_copy(update={"resume": True}).model_dump(mode="json"), "cls": type(cfg),
              "build_objective": build_objective}  # fmt: skip
    trainer = TorchTrainer(
        _ray_loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=posixpath.basename(cfg.out_dir), storage_path=parent_location(cfg.out_dir),
                             failure_config=FailureConfig(max_failures=cfg.max_failures)),
    )  # fmt: skip
    return trainer.fit()


def load_preference_config(cls: type[PreferenceConfig], path: str | Path | None = None, lr: float | None = None,
                           **overrides: Any) -> PreferenceConfig:  # fmt: skip
    """A config from a YAML or JSON file (or defaults), then the options given (None: unset);
    lr sets the optimiser's peak LR."""
    data: dict[str, Any] = {}
    if path is not None:
        text = read_text(path)
        data = json.loads(text) if str(path).endswith(".json") else (yaml.safe_load(text) or {})
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a preference-training config is a mapping")
    if lr is not None:
        data["optimizer"] = {**(data.get("optimizer") or {}), "lr": lr}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return cls.model_validate(data)


def preference_command(cls: type[PreferenceConfig], build_objective: BuildObjective, config: str | Path | None = None,
                       local: bool = False, **options: Any) -> dict[str, Any]:  # fmt: skip
    """`flywheel reward-model` / `flywheel dpo`: train (or resume) on Ray Train, or with local
    processes, then `summarize`."""
    cfg = load_preference_config(cls, config, **options)
    if local:
        launch(cfg, build_objective)
    else:
        result = launch_ray(cfg, build_objective)
        if result.error is not None:
            raise RuntimeError(f"training failed: {result.error}")
    return summarize(cfg.out_dir)


def summarize(out_dir: str) -> dict[str, Any]:
    """The first and last training step and held-out evaluation of a run (OUT/eval.jsonl has all of it)."""
    records, evals = read_metrics(out_dir), read_metrics(out_dir, TrainingRun.EVAL)

    def train(r: dict[str, Any]) -> dict[str, Any]:
        return {k: r.get(k) for k in ("step", "loss", "accuracy", "margin")}

    def held_out(r: dict[str, Any]) -> dict[str, Any]:
        return {**{k: r.get(k) for k in ("step", "pairs", "loss", "accuracy")},
                **{f"margin_{k}": r["margin"][k] for k in ("mean", "p05", "p50", "p95")}}  # fmt: skip

    return {
        "steps": records[-1]["step"] if records else 0,
        "train_first": train(records[0]) if records else None,
        "train_last": train(records[-1]) if records else None,
        "eval_first": held_out(evals[0]) if evals else None,
        "eval_last": held_out(evals[-1]) if evals else None,
        "metrics": TrainingRun(out_dir).metrics,
        "eval": TrainingRun(out_dir).eval,
        "checkpoints": TrainingRun(out_dir).checkpoints,
    }
