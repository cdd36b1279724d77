"""PPO's arithmetic for language models, on response-aligned tensors: pure functions, no roles.

Legend: B responses, N response tokens (column j = the j-th generated token; mask_BN True on
the real ones, a prefix of each row), S prompt + response positions, V vocabulary.

    rewards_BN = kl_penalized_rewards(logp_BN, ref_logp_BN, mask_BN, scores_B, beta)
    adv_BN, returns_BN = gae(rewards_BN, values_BN, mask_BN, gamma, lam)
    loss, clip_frac = clipped_policy_loss(new_logp_BN, old_logp_BN, masked_whiten(adv_BN, mask_BN), mask_BN, 0.2)

The recipe: Ziegler et al. 2019 (arXiv 1909.08593) and Ouyang et al. 2022 (arXiv 2203.02155,
eq. 2): reward R(x, y) = r(x, y) - beta log(pi(y|x) / ref(y|x)), spread per token as
-beta (log pi - log ref) on every response token plus the reward model's score on the last one
(Stiennon et al. 2020; Huang et al. 2022, "The N Implementation Details of RLHF with PPO");
GAE (Schulman et al. 2016, eq. 16); the clipped surrogate (Schulman et al. 2017, eq. 7) and the
clipped value loss of the PPO2 baselines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x_BN: torch.Tensor, mask_BN: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked tokens (biased variance), 0 elsewhere: advantages with
    zero mean and unit variance over the whole rollout batch (Huang et al. 2022, detail 7)."""
    m = mask_BN.to(x_BN.dtype)
    mean = masked_mean(x_BN, m)
    var = masked_mean((x_BN - mean) ** 2, m)
    return (x_BN - mean) * torch.rsqrt(var + eps) * m


def kl_penalized_rewards(logp_BN: torch.Tensor, ref_logp_BN: torch.Tensor, mask_BN: torch.Tensor,
                         scores_B: torch.Tensor, beta: float) -> torch.Tensor:  # fmt: skip
    """Per-token rewards: -beta (log pi - log ref) on each response token (the k1 estimate of
    the KL, whose sum over a sampled response is unbiased for KL(pi || ref)), and the score
    added on each row's last response token (the stop token, or the last before max tokens)."""
    m = mask_BN.to(logp_BN.dtype)
    rewards_BN = -beta * (logp_BN - ref_logp_BN) * m
    last_B = (mask_BN.sum(1) - 1).clamp(min=0)
    return rewards_BN.index_put((torch.arange(len(last_B)), last_B), scores_B.to(rewards_BN.dtype), accumulate=True)


def sequence_kl(logp_BN: torch.Tensor, ref_logp_BN: torch.Tensor, mask_BN: torch.Tensor) -> torch.Tensor:
    """KL_B: sum over each response's tokens of log pi - log ref (what the controller and the logs use)."""
    return ((logp_BN - ref_logp_BN) * mask_BN).sum(1)


def gae(rewards_BN: torch.Tensor, values_BN: torch.Tensor, mask_BN: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(advantages_BN, returns_BN): A_t = sum_l (gamma lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1}
    - V_t, with V = 0 after a row's last token (the episode ends there, stopped or cut off);
    returns = A + V, the critic's target. Both 0 off the mask."""
    m = mask_BN.to(values_BN.dtype)
    r_BN, v_BN = rewards_BN * m, values_BN * m
    advantages = torch.zeros_like(v_BN)
    running_B = torch.zeros_like(v_BN[:, 0])
    n = v_BN.shape[1]
    for t in reversed(range(n)):
        next_B = v_BN[:, t + 1] if t + 1 < n else torch.zeros_like(running_B)
        running_B = r_BN[:, t] + gamma * next_B - v_BN[:, t] + gamma * lam * running_B
        advantages[:, t] = running_B
    advantages = advantages * m
    return advantages, (advantages + v_BN) * m


def clipped_policy_loss(logp_BN: torch.Tensor, old_logp_BN: torch.Tensor, advantages_BN: torch.Tensor,
                        mask_BN: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(loss, clip_fraction): mean over tokens of max(-A r, -A clip(r, 1 - eps, 1 + eps)),
    r = pi / pi_old; the fraction of tokens whose ratio lies outside [1 - eps, 1 + eps]."""
    m = mask_BN.to(logp_BN.dtype)
    ratio_BN = torch.exp(logp_BN - old_logp_BN)
    loss_BN = torch.maximum(-advantages_BN * ratio_BN, -advantages_BN * ratio_BN.clamp(1 - clip, 1 + clip))
    return masked_mean(loss_BN, m), masked_mean(((ratio_BN - 1).abs() > clip).to(m.dtype), m).detach()


def clipped_value_loss(values_BN: torch.Tensor, old_values_BN: torch.Tensor, returns_BN: torch.Tensor,
                       mask_BN: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(loss, clip_fraction): 0.5 mean max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2),
    the value moving at most eps from the rollout's estimate before the loss stops pulling."""
    m = mask_BN.to(values_BN.dtype)
    clipped_BN = old_values_BN + (values_BN - old_values_BN).clamp(-clip, clip)
    loss_BN = torch.maximum((values_BN - returns_BN) ** 2, (clipped_BN - returns_BN) ** 2)
    return 0.5 * masked_mean(loss_BN, m), masked_mean(((values_BN - old_values_BN).abs() > clip).to(m.dtype), m)


class FixedKLController:
    def __init__(self, value: float):
        self.value = value

    def update(self, kl: float, n_responses: int) -> None:
        pass


class AdaptiveKLController:
    """Ziegler et al. 2019 section 2.2: beta <- beta (1 + e n / horizon), e = clip(KL / target - 1,
    -0.2, 0.2), KL the batch's mean per-sequence KL, n the responses it came from."""

    def __init__(self, value: float, target: float, horizon: int):
        self.value, self.target, self.horizon = value, target, horizon

    def update(self, kl: float, n_responses: int) -> None:
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_responses / self.horizon


def distinct_n(responses: Sequence[Sequence[int]], n: int) -> float:
    """Distinct n-grams over all n-grams of the batch's responses (Li et al. 2016): 1 when none
    repeats; 0 when there are no n-grams."""
    grams = [tuple(r[i : i + n]) for r in responses for i in range(len(r) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


# ---------------------------------------------------------------------------------------------
# From a model's forward to response-aligned tensors
# ---------------------------------------------------------------------------------------------


def pack(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
         pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(tokens_BS, prompt_lengths_B, mask_BN): prompt + response per row, right-padded (causal
    attention: padding after a row changes none of its positions); N = the longest response."""
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    n = max(1, max(len(r) for r in responses))
    tokens_BS = torch.full((len(prompts), width), pad_id, dtype=torch.int64)
    mask_BN = torch.zeros(len(prompts), n, dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        tokens_BS[i, : len(p) + len(r)] = torch.tensor(list(p) + list(r), dtype=torch.int64)
        mask_BN[i, : len(r)] = True
    return tokens_BS, torch.tensor([len(p) for p in prompts], dtype=torch.int64), mask_BN


def response_positions(prompt_lengths_B: torch.Tensor, n: int, width: int) -> torch.Tensor:
    """index_BN: the position whose output predicts response token j (prompt_length - 1 + j),
    clamped into the row for the padding columns (masked out later)."""
    return (prompt_lengths_B[:, None] - 1 + torch.arange(n, device=prompt_lengths_B.device)).clamp(max=width - 1)


def gather_positions(x_BSx: torch.Tensor, index_BN: torch.Tensor) -> torch.Tensor:
    """x at the given positions of each row: B x S (x ...) -> B x N (x ...)."""
    index = index_BN.view(*index_BN.shape, *([1] * (x_BSx.dim() - 2))).expand(-1, -1, *x_BSx.shape[2:])
    return x_BSx.gather(1, index)


def response_logprobs(model: nn.Module, tokens_BS: torch.Tensor, prompt_lengths_B: torch.Tensor, n: int,
                      temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(logp_BN, entropy_BN, aux_loss) of the response tokens under softmax(logits / T): a
    teacher-forced forward, the quantity `training.generate` reports for the sampled tokens.
    NOTE: materialises B x N x V fp32 log-probs; a large vocabulary wants chunking here."""
    out = model(tokens_BS)
    index_BN = response_positions(prompt_lengths_B, n, tokens_BS.shape[1])
    logp_BNV = (gather_positions(out.logits_BSV, index_BN).float() / temperature).log_softmax(-1)
    targets_BN = tokens_BS.gather(1, (index_BN + 1).clamp(max=tokens_BS.shape[1] - 1))
    entropy_BN = -(logp_BNV.exp() * logp_BNV).sum(-1)
    return logp_BNV.gather(2, targets_BN[..., None]).squeeze(2), entropy_BN, out.aux_loss


def response_values(critic: nn.Module, tokens_BS: torch.Tensor, prompt_lengths_B: torch.Tensor,
                    n: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(values_BN, aux_loss): the critic (a `RewardModel`) at the positions that predict each
    response token: V of the state before the token is chosen."""
    values_BS, aux = critic.values(tokens_BS)
    return gather_positions(values_BS, response_positions(prompt_lengths_B, n, tokens_BS.shape[1])), aux


# ---------------------------------------------------------------------------------------------
# A rollout batch, what the driver passes to the trainable roles
# ---------------------------------------------------------------------------------------------


@dataclass
class Experience:
    """One rollout batch after scoring: B responses to learn from (tensors on CPU)."""

    tokens_BS: torch.Tensor
    prompt_lengths_B: torch.Tensor
    mask_BN: torch.Tensor
    old_logp_BN: torch.Tensor  # the actor's, teacher-forced, before this step's updates
    old_values_BN: torch.Tensor
    advantages_BN: torch.Tensor  # whitened
    returns_BN: torch.Tensor

    def rows(self, index: torch.Tensor) -> Experience:
        """The mini-batch of these rows, trimmed to its own longest response and row."""
        picked = {f.name: getattr(self, f.name)[index] for f in fields(self)}
        n = max(1, int(picked["mask_BN"].sum(1).max()))
        width = int((picked["prompt_lengths_B"] + picked["mask_BN"].sum(1)).max())
        return Experience(**{k: v[:, :n] if k.endswith("_BN") else v[:, :width] if k == "tokens_BS" else v
                             for k, v in picked.items()})  # fmt: skip

    def to(self, device: torch.device) -> Experience:
        return Experience(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})
