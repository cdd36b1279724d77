"""The article's optimiser recipe on torch: parameter groups, AdamW and the per-step scheduler.

The recipe itself (configs and pure schedules, no torch) is `training.recipe`; here it meets the
model: weight decay on matrices only, the router in its own group, LR and weight decay set each
step, Python GC under control. A TrainConfig takes its preset's LR and warmup
(`training.train_config.PRESET_OPTIMIZER`: 1e-4 suits the 67B model, not the small presets).
"""

from __future__ import annotations

import gc
import time

import torch
from torch import nn

from training.recipe import OptimizerConfig, lr_at, wd_at

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
