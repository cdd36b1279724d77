"""The training loop: accumulate, clip, step, balance the router, log, checkpoint.

    trainer = Trainer(cfg, dataset, meshes, device)    # builds and shards the model
    trainer.resume(path)                                # optional: any layout's checkpoint
    trainer.fit(on_checkpoint=report)                   # until cfg.steps

One optimiser step on every rank:
  1. reseed torch from (seed, step, rank): dropout is reproducible after any restart;
  2. read `accum` micro-batches of `micro_batch` sequences (the global cursor advances by
     world x micro_batch each), count the step's loss tokens over the dp ranks (one scalar
     all-reduce), forward, backward on each micro-batch's summed CE x dp / N plus its aux losses
     / accum (`training.token_mean`: the gradient of the global token mean), with FSDP's
     reduce-scatter only in the last backward (under pp > 1 a pipeline schedule runs them
     through this rank's stages: training.pipeline);
  3. clip to the global norm (combined over the dense and expert meshes), step (the
     aux-loss-free router-bias update runs as the optimiser's step pre-hook, once), schedule;
  4. one all-reduce for the logged losses and the data digest; rank 0 appends a JSON line to
     metrics.jsonl; rank 0 decides whether to checkpoint and broadcasts it (wall clock differs
     per rank), spares included;
  5. with cfg.eval_files, every eval_every_steps and after the final step (before that step's
     save): every rank evaluates the held-out sets (`training.evaluate`), rank 0 appends a line
     to eval.jsonl.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from contract.layout import TrainingRun
from contract.locations import local_path
from training.checkpoint import CheckpointManager, TrainingState
from training.config import ModelConfig
from training.data.dataset import Batch, ManifestDataset
from training.data.sft_dataset import MaskedBatch
from training.evaluate import IGNORE_INDEX, EvalSet, check_vocab, evaluate_model, load_eval_sets, manifest_tokenizer
from training.layout import Layout, accumulation
from training.memory import apply_model_options, autocast
from training.metrics_log import MetricsLog
from training.model import causal_lm_loss, chunked_lm_loss
from training.moe import register_router_bias_hook
from training.optim import GCController, RecipeScheduler, build_optimizer
from training.parallel import Meshes, clip_grad_norm_, parallelize, set_gradient_sync
from training.pipeline import Pipeline, PipelineSchedule, check_pipeline, pipeline_stage_of
from training.planner import model_flops_per_token
from training.tensor_parallel import check_tensor_parallel
from training.token_mean import lm_scale, token_weighted
from training.train_config import TrainConfig

DIGEST_MOD = 2**40


class MicroBatch(NamedTuple):
    inputs_BS: torch.Tensor  # int64
    targets_BS: torch.Tensor  # int64
    doc_ids_BS: torch.Tensor | None  # int32 segment ids, or None for plain causal attention


def manifest_location(location: str) -> str:
    """A manifest location valid from any working directory (a local path made absolute)."""
    path = local_path(location)
    return str(path.resolve()) if path is not None else location


def micro_batch_of(batch: Batch, device: torch.device, document_mask: bool) -> MicroBatch:
    """Inputs, next-token targets and (document_mask) segment ids of a packed batch, on device.
    Evaluation feeds its windows through this too, so it sees exactly what training sees."""
    tokens = torch.from_numpy(batch.tokens).to(device, non_blocking=True)
    doc_ids = None
    if document_mask:
        doc_ids = torch.from_numpy(batch.segment_ids()[:, :-1]).to(device, non_blocking=True)
    targets = tokens[:, 1:]
    if isinstance(batch, MaskedBatch):  # SFT: only assistant tokens are targets (the rest: ignore_index)
        targets = targets.masked_fill(~torch.from_numpy(batch.loss_mask[:, 1:]).to(device), IGNORE_INDEX)
    return MicroBatch(tokens[:, :-1], targets, doc_ids)


# ---------------------------------------------------------------------------------------------
# Building the model
# ---------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":

        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def resolve_param_dtype(name: str, device: torch.device) -> torch.dtype | None:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"float32": None, "bfloat16": torch.bfloat16}[name]


def build_model(
    model_cfg: ModelConfig, meshes: Meshes | None, device: torch.device, seed: int, param_dtype: torch.dtype | None,
    fsdp_prefetch: bool = False, pp_schedule: PipelineSchedule = "1f1b",
    attention: str = "sdpa", activation_checkpointing: str = "none", compile: bool = False,
) -> nn.Module:
    """The model, initialised identically whatever the layout, then sharded.

    On CPU every rank materialises the full model from the same seed and keeps its shards (so a
    1-, 2- or 4-rank run starts from the same weights: the parity tests rely on it). On GPUs the
    model is built on the meta device, sharded, then materialised shard by shard (DTensor's RNG
    keeps the init consistent across ranks; a 67B model never exists whole on one rank).
    Under pipeline parallelism the model is cut to this rank's stages before sharding.
    """
    torch.manual_seed(seed)
    if device.type == "cpu" or meshes is None:
        with torch.device(device):
            model = pipeline_stage_of(model_cfg.build(), meshes, pp_schedule)
        apply_model_options(model, attention, activation_checkpointing, compile)  # before FSDP
        if meshes is not None:
            parallelize(model, meshes, param_dtype=param_dtype, fsdp_prefetch=fsdp_prefetch)
        return model
    with torch.device("meta"):
        model = pipeline_stage_of(model_cfg.build(), meshes, pp_schedule)
    apply_model_options(model, attention, activation_checkpointing, compile)  # before FSDP
    parallelize(model, meshes, param_dtype=param_dtype, fsdp_prefetch=fsdp_prefetch)
    model.to_empty(device=device)
    model.init_weights(buffer_device=device)
    return model


def measure_peak_tflops(device: torch.device, size: int = 1024, trials: int = 5, seconds: float = 0.1) -> float:
    """Dense matmul TFLOP/s on this worker (fp32 CPU, bf16 GPU), the best of `trials` short
    runs: MFU's denominator when the config gives none. On a shared CPU the best trial is the
    closest to what the cores can do; a single run under contention reads low (MFU > 1)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(trials):
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            runs += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, 2 * size**3 * runs / (time.perf_counter() - start) / 1e12)
    return best


def sequence_digest(batch: Batch, sequences_per_epoch: int) -> int:
    """An order-free digest of the (epoch, sequence) pairs in a batch: summed over ranks and
    micro-batches it identifies the step's data, to check no sequence is skipped or repeated."""
    ids = batch.epochs.astype(np.uint64) * np.uint64(sequences_per_epoch) + batch.sequences.astype(np.uint64)
    mixed = (ids + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)  # wraps mod 2^64 (Fibonacci hashing)
    return int(np.sum(mixed >> np.uint64(24), dtype=np.uint64)) % DIGEST_MOD


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    step: int
    resumed_from: int
    losses: list[float]
    seconds: float


class Trainer:
    """One rank's trainer. `meshes` is None for a single process without torch.distributed."""

    eval_at_start = False  # also evaluate before the first step (post-training subclasses)
    # What scores self.eval_sets (`evaluate_model`'s signature; SFT: assistant-token loss).
    evaluate_sets = staticmethod(evaluate_model)

    def __init__(self, cfg: TrainConfig, dataset: ManifestDataset, meshes: Meshes | None, device: torch.device):
        self.cfg, self.dataset, self.meshes, self.device = cfg, dataset, meshes, device
        # group: every training rank (checkpoints, metrics writer = its rank 0); data_group: the
        # ranks reading distinct data (dp of them), over which losses and loads are reduced.
        self.group = meshes.group if meshes is not None else None
        self.data_group = meshes.data_group if meshes is not None else None
        self.layout = meshes.layout if meshes is not None else Layout(world=1)
        self.rank = dist.get_rank(self.group) if self.group is not None else 0
        self.world, self.ep = self.layout.world, self.layout.ep
        self.data_rank = meshes.data_rank if meshes is not None else 0
        self.data_world = self.layout.dp
        if dataset.world_size != self.data_world or dataset.rank != self.data_rank:
            raise ValueError(f"dataset is rank {dataset.rank}/{dataset.world_size}, "
                             f"trainer's data rank {self.data_rank}/{self.data_world}")  # fmt: skip
        self.micro_batch, self.accum = accumulation(cfg.global_batch_seqs, self.data_world, cfg.micro_batch)
        self.pp_group = meshes.pp.get_group() if meshes is not None and meshes.pp is not None else None

        self.model_cfg = cfg.build_model_config(dataset.manifest.tokenizer.vocab_size)
        check_pipeline(self.layout.pp, cfg.pp_schedule, self.model_cfg.n_layers, self.accum,
                       self.model_cfg.tie_embeddings)  # fmt: skip
        if self.layout.tp > 1:
            check_tensor_parallel(self.model_cfg, self.layout.tp, cfg.seq_len)
        self.model = build_model(
            self.model_cfg, meshes, device, cfg.seed, resolve_param_dtype(cfg.param_dtype, device),
            fsdp_prefetch=cfg.fsdp_prefetch, pp_schedule=cfg.pp_schedule,
            attention=cfg.attention, activation_checkpointing=cfg.activation_checkpointing, compile=cfg.compile,
        )
        # Under pp > 1 a schedule runs this rank's stages over the step's micro-batches.
        self.pipeline: Pipeline | None = None
        if self.pp_group is not None:
            act_dtype = resolve_param_dtype(cfg.param_dtype, device) or torch.float32
            self.pipeline = Pipeline(self.model, cfg.pp_schedule, self.pp_group, device, self.micro_batch,
                                     cfg.seq_len, self.accum, act_dtype,
                                     cfg.loss_chunk_tokens)  # fmt: skip
        self.optimizer = build_optimizer(self.model, cfg.optimizer)
        self.scheduler = RecipeScheduler(self.optimizer, cfg.optimizer)
        self._loads: dict[str, torch.Tensor] = {}
        register_router_bias_hook(self.optimizer, self.model, on_load=self._loads.update, group=self.data_group)

        self.step = 0
        self.resumed_from = 0
        self.tokens_per_step = cfg.global_batch_seqs * cfg.seq_len
        self.flops_per_token = model_flops_per_token(self.model_cfg, cfg.seq_len)
        self.peak_tflops = cfg.peak_tflops_per_worker or measure_peak_tflops(device)
        self.metrics = MetricsLog(cfg.out_dir, enabled=self.rank == 0, flush_s=cfg.metrics_flush_s)
        self.eval_log = MetricsLog(cfg.out_dir, enabled=self.rank == 0 and bool(cfg.eval_files), name=TrainingRun.EVAL,
                                   flush_s=cfg.metrics_flush_s)  # fmt: skip
        self.eval_sets = self._load_eval_sets() if cfg.eval_files else []
        self.checkpoints = CheckpointManager(
            TrainingRun(cfg.out_dir).checkpoints, cfg.checkpoint_interval_s, cfg.checkpoint_every_steps,
            keep=cfg.keep_checkpoints, group=self.group, async_save=cfg.async_checkpoint,
        )  # fmt: skip
        self.state = TrainingState(self.model, self.optimizer, self.scheduler, self._trainer_state, self._load_trainer_state)

    # -- state --------------------------------------------------------------------------------

    def _trainer_state(self) -> dict[str, Any]:
        manifest = self.dataset.manifest
        return {
            "step": self.step,
            "data": self.dataset.state_dict(),
            "manifest_id": manifest.dataset_id,
            "manifest_fingerprint": manifest.fingerprint,
            "seed": self.cfg.seed,
            "global_batch_tokens": self.cfg.global_batch_tokens,
        }

    def _load_trainer_state(self, state: dict[str, Any]) -> None:
        if state["manifest_fingerprint"] != self.dataset.manifest.fingerprint:
            raise ValueError(
                f"checkpoint was trained on manifest {state['manifest_id']!r} "
                f"({state['manifest_fingerprint']}), this run reads {self.dataset.manifest.fingerprint}"
            )
        if state["global_batch_tokens"] != self.cfg.global_batch_tokens:
            raise ValueError("checkpoint used another global batch; the data cursor would not line up")
        self.dataset.load_state_dict(state["data"])
        self.step = int(state["step"])

    def checkpoint_meta(self) -> dict[str, Any]:
        manifest = self.dataset.manifest
        return {
            "consumed": self.dataset.consumed,
            "manifest_id": manifest.dataset_id,
            "manifest_fingerprint": manifest.fingerprint,
            "world": self.world,
            "ep": self.ep,
            "tp": self.layout.tp,
            "pp": self.layout.pp,
            "dp_replicate": self.layout.dp_replicate,
            "preset": self.cfg.preset,
            # The exact architecture, so `flywheel export-hf` needs nothing but the checkpoint,
            # and the data and windows, so `flywheel evaluate` finds the tokenizer and seq_len.
            "model_config": self.model_cfg.model_dump(mode="json"),
            "manifest": manifest_location(self.dataset.location),
            "seq_len": self.cfg.seq_len,
            "document_mask": self.cfg.document_mask,
        }

    def flush_logs(self) -> None:
        self.metrics.flush()
        self.eval_log.flush()

    def resume(self, path: str | Path) -> int:
        """Load a checkpoint (saved at any layout); returns its step. metrics.jsonl and eval.jsonl
        are cut back to that step (the lines after it move to <name>.rolled_back.jsonl)."""
        self.checkpoints.load(path, self.state)
        if self.dataset.consumed != self.step * self.cfg.global_batch_seqs:
            raise ValueError(f"checkpoint cursor {self.dataset.consumed} does not match step {self.step}")
        self.resumed_from = self.step
        self.metrics.rollback_after(self.step)
        self.eval_log.rollback_after(self.step)
        return self.step

    # -- one step -----------------------------------------------------------------------------

    def to_micro_batch(self, batch: Batch) -> MicroBatch:
        return micro_batch_of(batch, self.device, self.cfg.document_mask)

    def next_micro_batches(self) -> tuple[list[MicroBatch], int]:
        """This rank's `accum` micro-batches of the next step and their data digest."""
        batches = [self.dataset.next_batch(self.micro_batch) for _ in range(self.accum)]
        digest = sum(sequence_digest(b, self.dataset.sequences_per_epoch) for b in batches) % DIGEST_MOD
        return [self.to_micro_batch(b) for b in batches], digest

    def train_step(self, micro_batches: list[MicroBatch]) -> dict[str, float]:
        """Forward/backward over the micro-batches (`forward_backward`), clip, optimiser and
        schedule step. Returns `forward_backward`'s losses and the global grad norm."""
        means = self.forward_backward(micro_batches)
        norm = clip_grad_norm_(self.model.parameters(), self.cfg.optimizer.max_grad_norm, pp_group=self.pp_group)
        lr = next(g["lr"] for g in self.optimizer.param_groups if g["name"] != "router")
        self.optimizer.step()  # the router-bias pre-hook runs here, once per step
        if self.pipeline is not None:  # the metrics line lists every stage's layers
            self._loads.update(self.pipeline.gather_over_stages(self._loads))
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        lm, balance, z = means.tolist()  # one device sync per step
        return {"loss": lm, "balance_loss": balance, "z_loss": z, "grad_norm": float(norm), "lr": lr}

    def forward_backward(self, micro_batches: list[MicroBatch]) -> torch.Tensor:
        """Gradients of the step's loss accumulated in the parameters (not yet stepped).

        The LM loss is the global token mean (`training.token_mean`): this rank backpropagates
        its summed CE x dp / N (N: loss tokens over all dp ranks' micro-batches) and FSDP
        averages over the dp ranks, so the gradient is that of sum(CE) / N; a single process
        given every rank's micro-batches in one list computes the same. The aux losses are
        per-micro-batch means, weighted 1 / len(micro_batches) as before.
        Returns float64 [lm, balance, z]: lm this rank's backpropagated LM loss (its mean over
        the dp ranks, `_reduce`, is the global token mean), balance and z means over micro-batches.
        Under pp > 1 the pipeline schedule runs the micro-batches (training.pipeline).
        """
        self.model.train()
        scale = lm_scale([mb.targets_BS for mb in micro_batches], self.data_group, self.data_world)
        if self.pipeline is not None:
            return self.pipeline.step(micro_batches, scale)
        n = len(micro_batches)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        chunk = self.cfg.loss_chunk_tokens
        # bf16 autocast for a single process; under FSDP its MixedPrecisionPolicy casts instead.
        autocast_dtype = resolve_param_dtype(self.cfg.param_dtype, self.device) if self.meshes is None else None
        for i, mb in enumerate(micro_batches):
            set_gradient_sync(self.model, self.cfg.reduce_every_micro_batch or i == n - 1)
            with autocast(self.device, autocast_dtype):
                out = self.model(mb.inputs_BS, mb.doc_ids_BS, return_hidden=chunk > 0)
                lm = (chunked_lm_loss(out.hidden_BSD, self.model.output, mb.targets_BS, chunk) if chunk
                      else causal_lm_loss(out.logits_BSV, mb.targets_BS))  # fmt: skip
            lm = token_weighted(lm, mb.targets_BS, scale)
            (lm + out.aux_loss / n).backward()
            sums += torch.stack([lm.detach(), out.balance_loss.detach(), out.z_loss.detach()]).double()
        return sums / torch.tensor([1.0, n, n], dtype=torch.float64, device=self.device)  # lm: already weighted

    # -- evaluation ---------------------------------------------------------------------------

    def _load_eval_sets(self) -> list[EvalSet]:
        """cfg.eval_files, tokenised once with the manifest's tokenizer (EOS as its shards have)."""
        tokenizer, eos_id = manifest_tokenizer(self.dataset.location, self.dataset.manifest)
        eval_sets = load_eval_sets(self.cfg.eval_files, tokenizer, eos_id)
        check_vocab(eval_sets, self.model_cfg.vocab_size)
        return eval_sets

    def eval_due(self, final: bool) -> bool:
        every = self.cfg.eval_every_steps
        return bool(self.eval_sets) and (final or (every is not None and self.step % every == 0))

    def evaluate(self) -> dict[str, Any]:
        """Evaluate on every rank (the sharded forwards are collectives); rank 0 logs the line.
        Under pp > 1 each batch passes the stages in turn (`Pipeline.forward_nll`)."""
        start = time.perf_counter()
        forward_nll = self.pipeline.forward_nll if self.pipeline is not None else None
        report = self.evaluate_sets(self.model, self.eval_sets, self.cfg.seq_len, self.cfg.eval_batch_size,
                                    self.device, self.cfg.document_mask, forward_nll)  # fmt: skip
        record = {"step": self.step, "tokens": self.step * self.tokens_per_step, **report.to_dict(),
                  "eval_s": round(time.perf_counter() - start, 4), "time": round(time.time(), 3)}  # fmt: skip
        self.eval_log.write(record)
        return record

    # -- the loop -----------------------------------------------------------------------------

    def _reseed(self) -> None:
        # A pure function of (seed, step, rank): dropout masks survive restarts unchanged.
        # The data rank, not the rank: tp and pp peers of one data shard draw the same numbers.
        torch.manual_seed((self.cfg.seed * 1_000_003 + self.step) * 4099 + self.data_rank)

    def _reduce(self, local: dict[str, float], digest: int) -> tuple[dict[str, float], int]:
        """Mean of the losses and sum of the data digest over the data-parallel ranks (tp and pp
        peers hold copies, not more data), in one all-reduce. The LM loss's mean is the global
        token mean (`forward_backward`)."""
        if self.data_group is None:
            return local, digest
        keys = ["loss", "balance_loss", "z_loss"]
        # float64 holds the digest exactly: each rank's is < 2^40, their sum far below 2^53.
        values = torch.tensor([local[k] for k in keys] + [float(digest)], dtype=torch.float64, device=self.device)
        dist.all_reduce(values, group=self.data_group)
        summed = values.tolist()
        means = {**local, **{k: summed[i] / self.data_world for i, k in enumerate(keys)}}  # grad_norm, lr: global
        return means, int(summed[-1]) % DIGEST_MOD

    def fit(
        self,
        on_checkpoint: Callable[[int, Path, dict[str, Any]], None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        control: Callable[[bool, bool], tuple[bool, bool]] | None = None,
    ) -> FitResult:
        """Train from `self.step` to cfg.steps.

        on_checkpoint(step, path, metrics): after each save, on every rank (Ray: report).
        on_step(step, rank): after each step, on every rank (fault injection in tests).
        control(save, stop) -> (save, stop): agree on rank 0's decision (a broadcast over
        all processes, spares included); default: this rank's own decision.
        """
        cfg = self.cfg
        start_time = time.perf_counter()
        losses: list[float] = []
        if self.step == 0:
            self.metrics.truncate()
            self.eval_log.truncate()
            if self.eval_at_start and self.eval_sets:
                self.evaluate()  # step 0's line: the starting model (SFT: the pretrained one)
        if self.step >= cfg.steps and control is not None:
            control(False, True)  # resumed at the end: release the spares all the same
        with GCController(every_n_steps=cfg.gc_every_steps) as gc_ctl:
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                self._reseed()
                consumed_before = self.dataset.consumed
                micro_batches, digest = self.next_micro_batches()
                local = self.train_step(micro_batches)
                self.step += 1
                stats, digest = self._reduce(local, digest)
                seconds = time.perf_counter() - t0
                tokens_per_s = self.tokens_per_step / seconds
                record = {
                    "step": self.step,
                    **{k: round(v, 6) for k, v in stats.items() if k != "lr"},
                    "lr": stats["lr"],
                    "tokens_per_s": round(tokens_per_s, 1),
                    "mfu": round(tokens_per_s * self.flops_per_token / (self.peak_tflops * 1e12 * self.world), 5),
                    "step_s": round(seconds, 4),
                    "tokens": self.step * self.tokens_per_step,
                    "consumed_start": consumed_before,
                    "consumed": self.dataset.consumed,
                    "data_digest": digest,
                    "world": self.world,
                    "ep": self.ep,
                    "tp": self.layout.tp,
                    "pp": self.layout.pp,
                    "dp": self.data_world,
                    "micro_batch": self.micro_batch,
                    "accum": self.accum,
                    "expert_load": {name: load.long().tolist() for name, load in self._loads.items()},
                    "time": round(time.time(), 3),
                }
                self.metrics.write(record)
                losses.append(stats["loss"])
                if on_step is not None:
                    on_step(self.step, self.rank)
                final = self.step >= cfg.steps
                if self.eval_due(final):  # before the save: a checkpoint's step always has its line
                    self.evaluate()
                save = self.checkpoints.due(self.step, final)
                if control is not None:
                    save, _ = control(save, final)
                if save:
                    self.flush_logs()  # a checkpoint's steps have their lines in the store
                    path = self.checkpoints.save(self.step, self.state, self.checkpoint_meta())
                    if on_checkpoint is not None:
                        self.checkpoints.wait()  # what is reported (Ray resumes from it) is complete
                        on_checkpoint(self.step, path, {k: record[k] for k in ("step", "loss", "tokens", "consumed")})
                gc_ctl.step(self.step)
        self.checkpoints.wait()  # an async save still writing
        self.flush_logs()
        return FitResult(self.step, self.resumed_from, losses, time.perf_counter() - start_time)
