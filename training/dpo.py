"""Direct preference optimisation: the policy learns from pairs with no reward model and no sampling.

    flywheel dpo --init CKPT --data pairs.jsonl --eval heldout.jsonl --out DIR --beta 0.1

Rafailov et al. 2023 (arXiv 2305.18290) eq. 7, per pair (x, y_w, y_l):

    loss = -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])

log pi(y|x) sums the policy's next-token log-probs over the answer tokens only (EOS included, the
prompt not scored); ref is the init checkpoint, frozen. beta * (log pi - log ref) is the
implicit reward (section 5): logged for chosen and rejected, their margin, and the reward
accuracy (margin > 0). At step 0 pi == ref, so every margin is 0 and the loss is log 2.
`drift_*` is (log pi - log ref) per answer token, how far the policy moved on the data (a
KL-like number on these answers, not the KL of samples from pi).

The article chose PPO over DPO for control over the diversity of generations; this is the
road not taken, on the same pairs, checkpoints and launch as the reward model
(training.preference_trainer). The output checkpoint is a plain policy: `flywheel evaluate`,
`export-hf` and generation read it like any pretraining checkpoint.
NOTE: the reference costs a second model's memory (sharded like the policy) and a forward per
step; TRL's `precompute_ref_log_probs` would trade that for one pass over the data up front.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.distributed.fsdp import FSDPModule

from training.model import Transformer
from training.parallel import Meshes
from training.preference_config import DPOConfig
from training.preference_data import PairBatch
from training.preference_trainer import PairScores, frozen_copy, preference_command, shard
from training.trainer import resolve_param_dtype

KIND = "dpo"


def sequence_logprobs(model: torch.nn.Module, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logp_B, answer_tokens_B, aux_loss): each row's summed log-prob of its answer tokens given
    everything before them, fp32.

    NOTE: materialises the B x S x V fp32 log-probs; for a large vocabulary project in chunks
    (as `chunked_lm_loss` does) before this is used at scale.
    """
    out = model(batch.tokens_BS[:, :-1])
    targets_BS = batch.tokens_BS[:, 1:]
    mask_BS = batch.answer_target_mask()
    logp_BS = -F.cross_entropy(out.logits_BSV.flatten(0, 1).float(), targets_BS.flatten(),
                               reduction="none").view_as(targets_BS)  # fmt: skip
    return torch.where(mask_BS, logp_BS, 0.0).sum(1), mask_BS.sum(1), out.aux_loss


def dpo_loss(policy_chosen_P: torch.Tensor, policy_rejected_P: torch.Tensor, ref_chosen_P: torch.Tensor,
             ref_rejected_P: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(loss_P, chosen_reward_P, rejected_reward_P): eq. 7 per pair and the implicit rewards
    beta * (log pi - log ref) of each answer."""
    chosen_P = beta * (policy_chosen_P - ref_chosen_P)
    rejected_P = beta * (policy_rejected_P - ref_rejected_P)
    return -F.logsigmoid(chosen_P - rejected_P), chosen_P, rejected_P


class DPOObjective:
    """The policy (trained) and its frozen reference; margin = the implicit reward margin."""

    kind = KIND

    def __init__(self, policy: torch.nn.Module, reference: torch.nn.Module, beta: float):
        self.model, self.reference, self.beta = policy, reference, beta

    def score(self, batch: PairBatch) -> PairScores:
        p = batch.pairs
        logp_B, n_B, aux = sequence_logprobs(self.model, batch)
        with torch.no_grad():
            ref_B, _, _ = sequence_logprobs(self.reference, batch)
        if isinstance(self.reference, FSDPModule):
            # FSDP reshards the root (embeddings, output) after backward, which a no-grad forward never runs.
            self.reference.reshard()
        loss_P, chosen_P, rejected_P = dpo_loss(logp_B[:p], logp_B[p:], ref_B[:p], ref_B[p:], self.beta)
        drift_B = (logp_B.detach() - ref_B) / n_B.clamp(min=1)
        values = {
            "reward_chosen": chosen_P.detach(), "reward_rejected": rejected_P.detach(),
            "logp_chosen": logp_B[:p].detach(), "logp_rejected": logp_B[p:].detach(),
            "logp_accuracy": (logp_B[:p] > logp_B[p:]).double(),  # the policy alone prefers chosen
            "drift_chosen": drift_B[:p], "drift_rejected": drift_B[p:],
        }  # fmt: skip
        return PairScores(loss_P, chosen_P - rejected_P, aux, values, tokens=int(batch.lengths_B.sum()))


def build_dpo_objective(cfg: DPOConfig, init: Transformer, meshes: Meshes | None, device: torch.device) -> DPOObjective:
    """Policy and reference both from the init weights, both sharded like the pretraining model."""
    param_dtype = resolve_param_dtype(cfg.param_dtype, device)
    reference = shard(frozen_copy(init), meshes, device, param_dtype)
    return DPOObjective(shard(init, meshes, device, param_dtype), reference, cfg.beta)


def dpo_command(config: str | Path | None = None, local: bool = False, **options: Any) -> dict[str, Any]:
    """`flywheel dpo`: the config file, then the options given (None: unset)."""
    return preference_command(DPOConfig, build_dpo_objective, config, local, **options)
