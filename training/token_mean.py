"""The step's LM loss as a mean over every loss-bearing token of the global batch.

    scale = lm_scale([mb.targets_BS for mb in micro_batches], data_group, dp)   # before any backward
    loss = token_weighted(causal_lm_loss(logits_BSV, targets_BS), targets_BS, scale)  # per micro-batch

A step's objective is sum(CE over every target of all micro-batches of all dp ranks) / N, N
those targets' count (global token normalisation, as TRL, OpenRLHF and torchtitan do for SFT):
a micro-batch of 3 assistant tokens weighs 3/N, one of 300 weighs 300/N, not 1/m each. N is
counted before the step's first backward (one scalar all-reduce over the data-parallel ranks;
tp and pp peers hold copies of the same targets, not more), and each micro-batch's token-mean
loss is weighted by (its count) x dp / N.

Invariant (the factor dp): FSDP averages gradients over the dp ranks (the dense reduce-scatter
divides by dp, the experts' by W/pp with each rank counted once: training.parallel), so each
rank backpropagates dp x (its summed CE) / N and their mean over dp is sum / N. The trainer logs
that per-rank value averaged over dp (`Trainer._reduce`): the same global token mean. One process
given every rank's micro-batches has dp = 1 and computes the same loss and gradient.

Pretraining (every position a target, equal windows): each micro-batch counts B x S, N = m x dp x
B x S, so the weight is 1/m, the plain mean over micro-batches (equal up to fp rounding).

NOTE: a micro-batch without any target would give 0/0 = NaN; none exists (SFTDataset drops
conversations without an assistant token, so every window has a target; pretraining windows are
all targets).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from training.evaluate import IGNORE_INDEX


def loss_tokens(targets_BS: torch.Tensor) -> torch.Tensor:
    """How many targets the loss counts (int64 scalar, on the targets' device)."""
    return (targets_BS != IGNORE_INDEX).sum()


def lm_scale(targets: list[torch.Tensor], data_group: dist.ProcessGroup | None, data_world: int) -> torch.Tensor:
    """dp / N (float64 scalar): N the loss tokens of these targets summed over `data_group`
    (collective over it; None: this process holds the whole batch). No host sync."""
    count = torch.stack([loss_tokens(t) for t in targets]).sum()
    if data_group is not None:
        dist.all_reduce(count, group=data_group)
    return data_world / count.double()


def token_weighted(lm_mean: torch.Tensor, targets_BS: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A micro-batch's share of the step loss: its token-mean CE times its count times dp / N,
    i.e. its summed CE x dp / N (the weight rounded to the loss's dtype)."""
    return lm_mean * (loss_tokens(targets_BS) * scale).to(lm_mean.dtype)
