"""The article's optimiser recipe as data: its configs and schedules, without torch.

AdamW (0.9, 0.95); peak LR 1e-4 with the router at 2e-4 (its own param group); linear warmup
(3000 steps), cosine decay, then a constant LR for the final 10%; weight decay on matrices only,
raised over that final 10%; gradient clipping at global norm 1.0. The schedules are pure
functions of the step (`lr_at`, `wd_at`), so a resumed run needs only the step count. Kept free of
torch so the service can validate a training config in its web process.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
