"""The seed article's optimiser recipe, configurable.

AdamW (0.9, 0.95); peak LR 1e-4 with the router at 2e-4 (its own param group); linear warmup
(3000 steps), cosine decay, then a constant LR for the final 10%; weight decay on matrices
only, raised over that final 10%; gradient clipping at global norm 1.0; Python GC under
control. These are the defaults here; a TrainConfig takes its preset's LR and warmup
(training.train_config.PRESET_OPTIMIZER: 1e-4 suits the 67B model, not the small presets). The
schedules are pure functions of the step (`lr_at`, `wd_at`), so a resumed run
needs only the step count.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Iterable

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn


class ScheduleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    total_steps: int = Field(ge=1)
    warmup_steps: int = Field(default=3000, ge=0)
    # The last fraction of training: LR held at its minimum, weight decay ramped up.
    final_fraction: float = Field(default=0.1, ge=0, lt=1)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1, description="LR floor / peak LR")

    @property
    def decay_end(self) -> int:
        """First step of the final constant-LR phase."""
        return round((1 - self.final_fraction) * self.total_steps)

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        if self.warmup_steps > self.decay_end:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must end before the final phase starts "
                f"(step {self.decay_end} of {self.total_steps})"
            )
        return self


# The article's router LR over its peak LR (2e-4 / 1e-4); TrainConfig keeps it for any peak.
ROUTER_LR_RATIO = 2.0


class OptimizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(default=1e-4, gt=0)
    router_lr: float = Field(default=2e-4, gt=0, description="LR of MoE router weights")
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(default=1e-8, gt=0)
    weight_decay: float = Field(default=0.1, ge=0)
    # The article gives no figure for the final-phase raise; 2x is this project's default.
    wd_final_multiplier: float = Field(default=2.0, ge=0)
    # Off by default: decoupled decay shrinks every embedding row each step, but a rare
    # token's row gets a gradient only when it occurs, so its embedding decays towards zero
    # between occurrences (OLMo 2 removed embedding decay for stability). When embeddings are
    # tied this also covers the output projection.
    decay_embeddings: bool = False
    max_grad_norm: float = Field(default=1.0, gt=0)
    schedule: ScheduleConfig


def lr_at(step: int, sched: ScheduleConfig, peak_lr: float) -> float:
    """Linear warmup to peak over warmup_steps, cosine to min_lr_ratio * peak by decay_end,
    then constant. Step 0 trains at peak / warmup_steps (a zero-LR step would waste a batch)."""
    floor = peak_lr * sched.min_lr_ratio
    if step < sched.warmup_steps:
        return peak_lr * (step + 1) / sched.warmup_steps
    if step >= sched.decay_end or sched.decay_end == sched.warmup_steps:
        return floor
    progress = (step - sched.warmup_steps) / (sched.decay_end - sched.warmup_steps)
    return floor + (peak_lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def wd_at(step: int, sched: ScheduleConfig, base_wd: float, final_multiplier: float) -> float:
    """Base weight decay until decay_end, then a linear ramp to base * final_multiplier at the
    last step (a ramp, not a jump, so the optimiser state sees no shock)."""
    if step < sched.decay_end:
        return base_wd
    span = max(1, sched.total_steps - 1 - sched.decay_end)
    progress = min(1.0, (step - sched.decay_end) / span)
    return base_wd * (1 + (final_multiplier - 1) * progress)


# ---------------------------------------------------------------------------------------------
# Parameter groups and the optimiser
# ---------------------------------------------------------------------------------------------


def param_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict]:
    """Three groups: `decay` (matrices), `no_decay` (norm weights, biases, 1-D tensors and, by
    default, embeddings), `router` (MoE router weights, own LR, decayed). Each group carries
    base_lr / base_wd for the schedule. Tied weights appear once (named_parameters dedups)."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "router": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if ".router." in f".{name}":
            groups["router"].append(p)
        elif p.ndim < 2 or (id(p) in embedding_ids and not cfg.decay_embeddings):
            groups["no_decay"].append(p)
        else:
            groups["decay"].append(p)
    settings = {
        "decay": (cfg.lr, cfg.weight_decay),
        "no_decay": (cfg.lr, 0.0),
        "router": (cfg.router_lr, cfg.weight_decay),
    }
    return [
        {"name": name, "params": params, "lr": settings[name][0], "weight_decay": settings[name][1],
         "base_lr": settings[name][0], "base_wd": settings[name][1]}
        for name, params in groups.items() if params
    ]  # fmt: skip


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups` (works on FSDP2's DTensor parameters unchanged)."""
    return torch.optim.AdamW(param_groups(model, cfg), betas=cfg.betas, eps=cfg.eps)


class RecipeScheduler:
    """Sets every group's lr and weight_decay from `lr_at` / `wd_at` for the current step.

    Call `step()` after each `optimizer.step()`. State is the step count only (Stateful for
    torch.distributed.checkpoint).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimizerConfig):
        self.optimizer, self.cfg, self.last_step = optimizer, cfg, 0
        self._apply()

    def _apply(self) -> None:
        sched = self.cfg.schedule
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.last_step, sched, group["base_lr"])
            group["weight_decay"] = wd_at(self.last_step, sched, group["base_wd"], self.cfg.wd_final_multiplier)

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
        self._apply()


def clip_gradients(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip to a global L2 norm of `max_norm`; returns the norm before clipping.

    `clip_grad_norm_` works on FSDP2 DTensor gradients (the norm is reduced over the mesh). With
    expert parallelism the expert gradients live on a different mesh than the rest, and one
    call cannot mix meshes: compute the two norms separately and combine sqrt(a^2 + b^2).
    """
    return torch.nn.utils.clip_grad_norm_(list(params), max_norm, foreach=True)


# ---------------------------------------------------------------------------------------------
# Garbage collection
# ---------------------------------------------------------------------------------------------


class GCController:
    """Keep Python's cyclic GC out of the training steps.

    A full collection walks every tracked object (tensors' Python wrappers, autograd nodes,
    data-loader buffers) and pauses the step at unpredictable times, differently on each
    rank, so the collectives wait for the slowest. Here: `gc.freeze()` moves everything alive
    after setup (model, optimizer) out of the collector's view, automatic GC is disabled, and
    `step(n)` runs a generation-1 collection every `every_n_steps` steps, at the same step on
    every rank. `close()` (or leaving the `with` block) restores the previous state.
    """

    def __init__(self, every_n_steps: int = 1000, generation: int = 1):
        if every_n_steps < 1:
            raise ValueError("every_n_steps must be >= 1")
        self.every_n_steps, self.generation = every_n_steps, generation
        self.collections, self.collect_seconds = 0, 0.0
        self._was_enabled = gc.isenabled()
        gc.disable()
        gc.collect()
        gc.freeze()
        self._closed = False

    def step(self, step: int) -> None:
        if step > 0 and step % self.every_n_steps == 0:
            start = time.perf_counter()
            gc.collect(self.generation)
            self.collect_seconds += time.perf_counter() - start
            self.collections += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()

    def __enter__(self) -> GCController:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
