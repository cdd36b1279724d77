"""What a training run is: model preset, batch geometry, parallel layout, checkpoints, optimiser.

    cfg = load_train_config("run.yaml", steps=200, workers=2)   # file, then overrides
    cfg.global_batch_seqs                                      # sequences per optimiser step

Tokens per step are fixed by `global_batch_tokens` whatever the world size: the launcher picks
the micro-batch and the accumulation count for the ranks it gets (`layout.accumulation`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.jsonl import read_text
from training.config import ModelConfig, canonical_preset, preset
from training.recipe import ROUTER_LR_RATIO, OptimizerConfig, ScheduleConfig

# Batch geometry a preset implies unless the config says otherwise. moe-67b: the article's
# 4,096-token sequences and "4 million"-token batches (1,024 sequences), one per GPU forward.
PRESET_BATCH = {"moe-67b": {"seq_len": 4096, "global_batch_tokens": 4 * 1024 * 1024, "micro_batch": 1}}

# Peak LR and warmup steps a preset implies unless the config gives them (the router's LR is
# ROUTER_LR_RATIO x the peak unless given; warmup is capped at a tenth of the run, see _defaults).
# moe-67b: the article's 1e-4 and 3,000 steps (OptimizerConfig's and ScheduleConfig's defaults).
# small and tiny: Adam's best LR grows as models shrink. Two independent rules agree on the scale:
# - muP (Yang et al. 2022, arXiv 2203.03466): hidden-matrix LR ~ 1/width; from the article's
#   anchor (1e-4 at width 7168) that is 1.4e-3 at width 512 (small) and 1.1e-2 at 64 (tiny);
# - DeepSeek LLM's fit eta_opt = 0.3118 C^-0.125 (arXiv 2401.02954 sec. 3.1; C in FLOPs, 6 x
#   active non-embedding params + attention per token, times tokens): a 60-step run of 16,384-token
#   steps gives 1.1e-2 (tiny, C 6e11) and 5.3e-3 (small, C 1.4e14), far below the 1e17-3e20 FLOPs
#   the fit was made on, so only as a bound.
# small takes 1e-3: the muP value rounded down, Pythia-70M's LR at the same width 512 and GPT-3
# Small's 6e-4 at 768 (arXiv 2304.01373 table; 2005.14165 table 2.1), safe for long runs too.
# tiny takes 3e-3, between the two rules' 1.1e-2 and small's 1e-3 (a 64-wide model at 1e-2 is on
# the edge of loss spikes) and the ablation demo's former override: on the demo manifest 60 steps
# lower the loss 10.38 -> 7.43 (28%) with 2 workers (benchmarks/train_defaults.py); at the
# article's 1e-4 the same run moved 1.4% (as issue 13 measured it).
# Warmup 2,000 steps for both: DeepSeek LLM's and DeepSeekMoE's published warmup at every size.
_ARTICLE_LR = OptimizerConfig.model_fields["lr"].default
_ARTICLE_WARMUP = ScheduleConfig.model_fields["warmup_steps"].default
PRESET_OPTIMIZER = {
    "moe-67b": {"lr": _ARTICLE_LR, "warmup_steps": _ARTICLE_WARMUP},
    "small": {"lr": 1e-3, "warmup_steps": 2000},
    "tiny": {"lr": 3e-3, "warmup_steps": 2000},
    "tiny-v3": {"lr": 3e-3, "warmup_steps": 2000},  # tiny's width and depth, DeepSeek-V3's choices
}


class CheckpointPolicy(BaseModel):
    """When a run saves and resumes: the same fields in pretraining, SFT, preference and PPO runs."""

    checkpoint_interval_s: float = Field(default=600.0, gt=0, description="wall-clock checkpoint period")
    checkpoint_every_steps: int | None = Field(default=None, ge=1, description="also every N steps")
    keep_checkpoints: int = Field(default=2, ge=1)
    resume: bool = Field(default=True, description="continue from the latest checkpoint in out_dir")


class TrainConfig(CheckpointPolicy):
    model_config = ConfigDict(extra="forbid")

    # -- model and data ---------------------------------------------------------------------
    preset: Literal["tiny", "tiny-v3", "small", "moe-67b"] = "tiny"
    # Overrides of the preset's ModelConfig fields (a nested "moe" dict overrides MoEConfig).
    model: dict[str, Any] = Field(default_factory=dict)
    manifest: str | None = Field(default=None, description="manifest.json path or URL")
    cache_dir: Path | None = None
    seq_len: int = Field(default=256, ge=1)
    # Document-masked attention inside packed sequences (False: plain causal attention).
    document_mask: bool = True

    # -- schedule and batch -----------------------------------------------------------------
    steps: int = Field(default=100, ge=1, description="optimiser steps in the whole run")
    global_batch_tokens: int = Field(default=16_384, ge=1)
    micro_batch: int = Field(default=8, ge=1, description="most sequences per rank per forward")
    # False: FSDP reduce-scatters once per step, after the last micro-batch (the unsharded
    # gradients of every block stay resident meanwhile: 43 GB per GPU for moe-67b on 256 GPUs).
    # True: after every micro-batch (more traffic, sharded gradients only).
    reduce_every_micro_batch: bool = False
    seed: int = 0
    optimizer: OptimizerConfig

    # -- parallelism and launch ---------------------------------------------------------------
    workers: int = Field(default=1, ge=1, description="most ranks (Ray workers or local processes)")
    min_workers: int | None = Field(default=None, ge=1, description="elastic lower bound (Ray)")
    ep: int = Field(default=1, ge=1, description="largest expert-parallel degree to use")
    # One mesh (pp, dp_replicate, dp_shard, tp) for dense weights, (pp, efsdp, ep) for experts
    # (training.parallel). The launcher snaps the process count to a layout with these degrees.
    tp: int = Field(default=1, ge=1, description="tensor-parallel degree (attention, dense FFN)")
    pp: int = Field(default=1, ge=1, description="pipeline stages, split by layer")
    pp_schedule: Literal["1f1b", "interleaved-1f1b", "gpipe"] = "1f1b"
    # HSDP: dense weights replicated over this many groups (across nodes), FSDP-sharded inside.
    dp_replicate: int = Field(default=1, ge=1)
    max_failures: int = Field(default=3, ge=0, description="worker-group restarts Ray Train allows")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Compute dtype of gathered parameters: auto = bfloat16 on GPUs, float32 on CPU.
    param_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # Peak dense TFLOP/s of one worker for MFU (H100 SXM bf16: 989). None: measured once at
    # start with a large matmul, which on CPU is the honest "peak".
    peak_tflops_per_worker: float | None = Field(default=None, gt=0)

    # -- memory and speed (each off by default; each gives the same results on CPU) -------------
    # Recompute activations in backward (training.memory): "selective" = op-level on every block
    # (matmul, attention and collective outputs kept, the cheap elementwise work recomputed, as
    # torchtitan's op policy), "full" = whole blocks.
    activation_checkpointing: Literal["none", "selective", "full"] = "none"
    compile: bool = Field(default=False, description="torch.compile each transformer block")
    # Document masking: "sdpa" builds a dense B x 1 x S x S mask (SDPA's math/efficient kernels),
    # "flex" a FlexAttention block mask (no S x S tensor, skips fully masked blocks).
    attention: Literal["sdpa", "flex"] = "sdpa"
    # Cross-entropy over chunks of this many tokens (0: all at once): the fp32 logits of a chunk,
    # not of the whole B x S x V batch, are live at a time.
    loss_chunk_tokens: int = Field(default=0, ge=0)
    # DCP saves in a background thread (training continues once the state is staged in memory).
    async_checkpoint: bool = False
    # FSDP2: prefetch the next block's all-gather explicitly (forward and backward), which the
    # implicit order misses when EP's all-to-alls sit between blocks.
    fsdp_prefetch: bool = False

    # -- checkpoints, logs, housekeeping ----------------------------------------------------
    # A local folder or a store URI (s3://bucket/run): metrics.jsonl, eval.jsonl, checkpoints/.
    out_dir: str = "runs/train"  # checkpoint timing and resume: CheckpointPolicy
    gc_every_steps: int = Field(default=500, ge=1)
    # On an object store (no append) metrics.jsonl is uploaded whole at most this often, and before
    # every checkpoint save; 0 uploads every line (training.metrics_log).
    metrics_flush_s: float = Field(default=30.0, ge=0)

    # -- held-out evaluation (training.evaluate): OUT/eval.jsonl ------------------------------
    eval_files: list[str] = Field(default_factory=list, description="JSONL files of {text, domain?}")
    eval_every_steps: int | None = Field(default=None, ge=1, description="None: only after the final step")
    eval_batch_size: int = Field(default=8, ge=1, description="windows of seq_len + 1 tokens per forward")

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        """The preset's batch geometry (PRESET_BATCH) and optimiser (PRESET_OPTIMIZER) unless given:
        peak lr, router_lr = ROUTER_LR_RATIO x lr (the given lr or the preset's), and a schedule over
        `steps` whose warmup is the preset's, capped at a tenth of the run so short runs still decay."""
        if not isinstance(data, dict):
            return data
        name = canonical_preset(data.get("preset", cls.model_fields["preset"].default))
        data = {**PRESET_BATCH.get(name, {}), **data, "preset": name}
        defaults = PRESET_OPTIMIZER.get(name, PRESET_OPTIMIZER["moe-67b"])
        steps = int(data.get("steps", cls.model_fields["steps"].default))
        optimizer = dict(data.get("optimizer") or {})
        optimizer.setdefault("lr", defaults["lr"])
        optimizer.setdefault("router_lr", ROUTER_LR_RATIO * float(optimizer["lr"]))
        schedule = dict(optimizer.get("schedule") or {})
        schedule.setdefault("total_steps", steps)
        schedule.setdefault("warmup_steps", min(defaults["warmup_steps"], int(schedule["total_steps"]) // 10))
        optimizer["schedule"] = schedule
        if isinstance(data.get("out_dir"), os.PathLike):  # a Path from Python callers
            data["out_dir"] = os.fspath(data["out_dir"])
        return {**data, "optimizer": optimizer}

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.global_batch_tokens % self.seq_len:
            raise ValueError(f"global_batch_tokens {self.global_batch_tokens} is not a multiple of seq_len {self.seq_len}")
        if self.min_workers is not None and self.min_workers > self.workers:
            raise ValueError("min_workers cannot exceed workers")
        if self.eval_every_steps is not None and not self.eval_files:
            raise ValueError("eval_every_steps needs eval_files")
        return self

    @property
    def global_batch_seqs(self) -> int:
        return self.global_batch_tokens // self.seq_len

    def build_model_config(self, vocab_size: int) -> ModelConfig:
        """The preset for this vocabulary with `model` overrides applied (and validated)."""
        base = preset(self.preset, vocab_size).model_dump()
        overrides = dict(self.model)
        moe = {**base["moe"], **overrides.pop("moe", {})}
        cfg = ModelConfig.model_validate({**base, **overrides, "moe": moe})
        if self.seq_len > cfg.max_seq_len:
            cfg = cfg.model_copy(update={"max_seq_len": self.seq_len})
        return cfg


def load_train_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """A TrainConfig from a YAML or JSON file (or defaults), then keyword overrides; overrides
    that are None are ignored (unset CLI options)."""
    data: dict[str, Any] = {}
    if path is not None:
        text = read_text(path)  # a local file or a store URI (a service job's config in S3)
        if str(path).endswith(".json"):
            data = json.loads(text)
        else:

            data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a training config is a mapping")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.model_validate(data)
