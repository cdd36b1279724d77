"""DeepSeekMoE feed-forward layer: fine-grained routed experts, always-on shared experts.

    h_t = u_t + sum_{i<=Ks} FFN_i(u_t) + sum_{i>Ks} g_{i,t} FFN_i(u_t)        (arXiv 2401.06066)

The forward is four steps so that expert parallelism can swap only the third one for an
all-to-all dispatch, local experts and an all-to-all back:

    route(x)                 -> topk_ids_TK, topk_weights_TK, RouterAux (losses, counts_E)
    permute(x, topk_ids)     -> x_sorted_ND grouped by expert, order_N
    experts(x_sorted, counts_E) -> y_sorted_ND
    combine(y_sorted, order, weights) -> out_TD

Shape legend (tensor names end in these):
    T  tokens in the micro-batch (B * S)      D  model width
    E  routed experts                         F  hidden width of one expert
    K  experts chosen per token (top-k)       N  routed token copies, T * K
    G  expert groups (n_expert_groups)        X  experts in one group, E / G
    C  rows per expert in the padded (bmm) layout, the largest expert load
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from training.config import MoEConfig


class FeedForward(nn.Module):
    """SwiGLU FFN: down(silu(gate(x)) * up(x)). The dense layers' FFN and the shared experts."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# ---------------------------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------------------------


class RouterAux(NamedTuple):
    balance_loss: torch.Tensor  # a1 * sum_i f_i P_i + a2 * sum_d f'_d P'_d, scalar (0 when disabled)
    z_loss: torch.Tensor  # coef * mean_t logsumexp(logits_t)^2, scalar (0 when disabled)
    counts_E: torch.Tensor  # int64 tokens routed to each expert in this micro-batch


def expert_counts(topk_ids_TK: torch.Tensor, n_experts: int) -> torch.Tensor:
    """counts_E, int64 tokens routed to each expert.

    NOTE: not torch.bincount, whose output size depends on max(ids), read on the host: a
    device sync per MoE layer on GPU. An integer scatter_add_ into a fixed E is exact, and
    deterministic since integer addition does not depend on the order of the atomics.
    """
    ids_N = topk_ids_TK.reshape(-1)
    return torch.zeros(n_experts, dtype=torch.int64, device=ids_N.device).scatter_add_(0, ids_N, torch.ones_like(ids_N))


def balance_fractions(
    scores_TE: torch.Tensor, topk_ids_TK: torch.Tensor, counts_E: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """f_E and P_E of DeepSeekMoE eq. 12-13.

    f_i = N'/(K'T) * #{t: t->i} (1 for every expert under uniform routing), P_i = mean_t s_i,t.
    f_i is a count (no gradient); the gradient reaches the router through P_i.
    """
    n_tokens, top_k = topk_ids_TK.shape
    n_experts = scores_TE.shape[1]
    f_E = counts_E.to(scores_TE.dtype) * (n_experts / (top_k * n_tokens))
    return f_E, scores_TE.mean(dim=0)


def balance_loss(scores_TE: torch.Tensor, topk_ids_TK: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
    """Expert-level balance loss without its coefficient: sum_i f_i P_i."""
    f_E, p_E = balance_fractions(scores_TE, topk_ids_TK, counts_E)
    return (f_E * p_E).sum()


def device_balance_loss(
    scores_TE: torch.Tensor, topk_ids_TK: torch.Tensor, counts_E: torch.Tensor, n_groups: int
) -> torch.Tensor:
    """Device-level balance loss without its coefficient (DeepSeekMoE eq. 14-16): sum_d f'_d P'_d
    over G contiguous expert groups, f'_d = mean of f_j and P'_d = sum of P_j over group d.

    Balances the load of the devices holding the groups while leaving experts inside a group
    free to specialise (1 under uniform routing, like the expert-level loss).
    """
    f_E, p_E = balance_fractions(scores_TE, topk_ids_TK, counts_E)
    return (f_E.view(n_groups, -1).mean(dim=1) * p_E.view(n_groups, -1).sum(dim=1)).sum()


def limit_to_groups(select_TE: torch.Tensor, n_groups: int, topk_groups: int) -> torch.Tensor:
    """Group-limited routing (DeepSeek-V3 section 2.1.2): -inf for the experts outside each
    token's topk_groups best groups, a group scored by the sum of its two highest affinities.

    The same computation as transformers' DeepseekV3TopkRouter, so exported models route alike.
    """
    n_tokens, n_experts = select_TE.shape
    select_TGX = select_TE.view(n_tokens, n_groups, -1)
    group_scores_TG = select_TGX.topk(2, dim=-1).values.sum(dim=-1)
    kept_ids = group_scores_TG.topk(topk_groups, dim=-1).indices
    keep_TG = torch.zeros_like(group_scores_TG, dtype=torch.bool).scatter_(1, kept_ids, True)
    return select_TGX.masked_fill(~keep_TG.unsqueeze(-1), float("-inf")).view(n_tokens, n_experts)


def z_loss(logits_TE: torch.Tensor) -> torch.Tensor:
    """Router z-loss without its coefficient (ST-MoE): mean_t logsumexp(logits_t)^2."""
    return torch.logsumexp(logits_TE, dim=-1).square().mean()


class Router(nn.Module):
    """Token-choice top-k over softmax (DeepSeekMoE) or sigmoid (DeepSeek-V3) affinities,
    optionally limited to each token's best expert groups (V3's node-limited routing)."""

    def __init__(self, dim: int, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.gate = nn.Linear(dim, cfg.n_routed_experts, bias=False)

    def forward(
        self, x_TD: torch.Tensor, bias_E: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, RouterAux]:
        cfg = self.cfg
        # NOTE: softmax, sigmoid and logsumexp run in fp32: under bf16 the z-loss and the
        # near-tied scores of fine-grained experts lose the resolution routing depends on.
        logits_TE = self.gate(x_TD).float()
        if cfg.score_func == "softmax":
            scores_TE = logits_TE.softmax(dim=-1)
        else:
            scores_TE = logits_TE.sigmoid()

        # The V3 routing bias steers selection only; the gate value comes from the raw score.
        select_TE = scores_TE if bias_E is None else scores_TE + bias_E
        if cfg.topk_groups is not None:
            select_TE = limit_to_groups(select_TE, cfg.n_expert_groups, cfg.topk_groups)
        topk_ids_TK = select_TE.topk(cfg.n_activated_experts, dim=-1).indices
        topk_weights_TK = scores_TE.gather(1, topk_ids_TK)
        if cfg.normalize_topk:
            topk_weights_TK = topk_weights_TK / (topk_weights_TK.sum(dim=-1, keepdim=True) + 1e-20)
        if cfg.route_scale != 1.0:
            topk_weights_TK = topk_weights_TK * cfg.route_scale

        counts_E = expert_counts(topk_ids_TK, cfg.n_routed_experts)
        zero = logits_TE.new_zeros(())
        bal = zero
        if cfg.balance_loss_coef > 0 or cfg.device_balance_loss_coef > 0:
            # Sigmoid affinities do not sum to one; V3 normalises them per token for P_i.
            probs_TE = scores_TE if cfg.score_func == "softmax" else scores_TE / scores_TE.sum(-1, keepdim=True)
            if cfg.balance_loss_coef > 0:
                bal = bal + cfg.balance_loss_coef * balance_loss(probs_TE, topk_ids_TK, counts_E)
            if cfg.device_balance_loss_coef > 0:
                dev = device_balance_loss(probs_TE, topk_ids_TK, counts_E, cfg.n_expert_groups)
                bal = bal + cfg.device_balance_loss_coef * dev
        zl = cfg.z_loss_coef * z_loss(logits_TE) if cfg.z_loss_coef > 0 else zero
        return topk_ids_TK, topk_weights_TK, RouterAux(bal, zl, counts_E)


# ---------------------------------------------------------------------------------------------
# Dispatch and combine
# ---------------------------------------------------------------------------------------------


def permute(x_TD: torch.Tensor, topk_ids_TK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy each token once per chosen expert, grouped by expert id (stable within an expert).

    Returns x_sorted_ND and order_N, the flat (token, slot) index of each sorted row.
    """
    order_N = torch.argsort(topk_ids_TK.reshape(-1), stable=True)
    return x_TD[order_N // topk_ids_TK.shape[1]], order_N


def combine(y_sorted_ND: torch.Tensor, order_N: torch.Tensor, topk_weights_TK: torch.Tensor) -> torch.Tensor:
    """Undo `permute` and take the gate-weighted sum over each token's K expert outputs.

    An index_copy back to (token, slot) order and a (1 x K) @ (K x D) per token: no atomics
    (an index_add_ over token ids would be non-deterministic on GPU).
    """
    n_tokens, top_k = topk_weights_TK.shape
    y_ND = torch.zeros_like(y_sorted_ND).index_copy(0, order_N, y_sorted_ND)
    y_TKD = y_ND.view(n_tokens, top_k, -1)
    return torch.bmm(topk_weights_TK.to(y_TKD.dtype).unsqueeze(1), y_TKD).squeeze(1)


# ---------------------------------------------------------------------------------------------
# Routed experts
# ---------------------------------------------------------------------------------------------


def _contiguous_grad(y: torch.Tensor) -> torch.Tensor:
    # NOTE: grouped_mm's backward rejects stride-0 gradients (e.g. from y.sum()); a no-op copy
    # check when the gradient is already dense, which it is inside the MoE (index_copy).
    if y.requires_grad:
        y.register_hook(lambda g: g.contiguous())
    return y


def experts_grouped_mm(
    x_sorted_ND: torch.Tensor,
    gate_EFD: torch.Tensor,
    up_EFD: torch.Tensor,
    down_EDF: torch.Tensor,
    counts_E: torch.Tensor,
) -> torch.Tensor:
    """All experts in three `torch._grouped_mm` calls over expert-sorted rows (no padding)."""
    offsets_E = torch.cumsum(counts_E, dim=0, dtype=torch.int32)
    h_NF = F.silu(torch._grouped_mm(x_sorted_ND, gate_EFD.transpose(-2, -1), offs=offsets_E))
    h_NF = h_NF * torch._grouped_mm(x_sorted_ND, up_EFD.transpose(-2, -1), offs=offsets_E)
    return _contiguous_grad(torch._grouped_mm(h_NF, down_EDF.transpose(-2, -1), offs=offsets_E))


# NOTE: eager under torch.compile (a graph break): C is read on the host, and inductor cannot
# lay out a bmm over an unbacked C.
@torch.compiler.disable
def experts_padded_bmm(
    x_sorted_ND: torch.Tensor,
    gate_EFD: torch.Tensor,
    up_EFD: torch.Tensor,
    down_EDF: torch.Tensor,
    counts_E: torch.Tensor,
) -> torch.Tensor:
    """All experts as one batched matmul over (E, C, D), C = the largest expert load (dropless).

    NOTE: costs E * C rows instead of N: with a skewed router the padding can exceed the work,
    and C is read on the host (a device sync on GPU).
    """
    n_rows, n_experts = x_sorted_ND.shape[0], counts_E.numel()
    capacity = int(counts_E.max())
    starts_E = torch.cumsum(counts_E, dim=0) - counts_E
    device = counts_E.device
    expert_N = torch.repeat_interleave(torch.arange(n_experts, device=device), counts_E, output_size=n_rows)
    slot_N = expert_N * capacity + torch.arange(n_rows, device=device) - starts_E[expert_N]
    x_ECD = x_sorted_ND.new_zeros(n_experts * capacity, x_sorted_ND.shape[1])
    x_ECD = x_ECD.index_copy(0, slot_N, x_sorted_ND).view(n_experts, capacity, -1)
    h_ECF = F.silu(torch.bmm(x_ECD, gate_EFD.transpose(-2, -1))) * torch.bmm(x_ECD, up_EFD.transpose(-2, -1))
    y_ECD = torch.bmm(h_ECF, down_EDF.transpose(-2, -1))
    return y_ECD.reshape(n_experts * capacity, -1)[slot_N]


def grouped_mm_eligible(x: torch.Tensor, hidden_dim: int) -> bool:
    """Whether `torch._grouped_mm` takes these operands: every row stride a multiple of 16
    bytes (D and F times the element size). On CUDA only bf16 is used, as torchtitan does."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if x.device.type == "cuda" and x.dtype != torch.bfloat16:
        return False
    if torch.compiler.is_compiling() and x.dtype != torch.bfloat16:
        return False  # its meta kernel (what torch.compile traces with) takes bf16 only
    if x.device.type not in ("cpu", "cuda"):
        return False
    size = x.element_size()
    return (x.shape[-1] * size) % 16 == 0 and (hidden_dim * size) % 16 == 0


def _local(w: torch.Tensor) -> torch.Tensor:
    # Expert parallelism shards these as DTensors on dim 0; the kernels want the local shard.
    return w.to_local() if isinstance(w, DTensor) else w


class GroupedExperts(nn.Module):
    """E SwiGLU experts as three stacked tensors, laid out like nn.Linear weights per expert.

    gate_proj, up_proj: (E, F, D); down_proj: (E, D, F). Expert e is exactly a SwiGLU whose
    Linear weights are gate_proj[e], up_proj[e], down_proj[e] (the Hugging Face layout).
    """

    def __init__(self, dim: int, hidden_dim: int, n_experts: int, impl: str = "auto"):
        super().__init__()
        self.hidden_dim, self.n_experts, self.impl = hidden_dim, n_experts, impl
        self.gate_proj = nn.Parameter(torch.empty(n_experts, hidden_dim, dim))
        self.up_proj = nn.Parameter(torch.empty(n_experts, hidden_dim, dim))
        self.down_proj = nn.Parameter(torch.empty(n_experts, dim, hidden_dim))

    def kernel(self, x_sorted_ND: torch.Tensor) -> Callable[..., torch.Tensor]:
        if self.impl == "bmm" or (self.impl == "auto" and not grouped_mm_eligible(x_sorted_ND, self.hidden_dim)):
            return experts_padded_bmm
        return experts_grouped_mm

    def forward(self, x_sorted_ND: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        """x_sorted_ND: rows grouped by expert in id order, counts_E rows per expert."""
        weights = (_local(self.gate_proj), _local(self.up_proj), _local(self.down_proj))
        device_type = x_sorted_ND.device.type
        if torch.is_autocast_enabled(device_type):
            # Autocast does not cover _grouped_mm: cast the fp32 master weights and the rows
            # (fp32: RMSNorm's output) to the autocast dtype, so the experts run in bf16 like
            # every Linear, and on the grouped_mm path on GPU.
            dtype = torch.get_autocast_dtype(device_type)
            x_sorted_ND, weights = x_sorted_ND.to(dtype), tuple(w.to(dtype) for w in weights)
        return self.kernel(x_sorted_ND)(x_sorted_ND, *weights, counts_E)


# ---------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------


def recomputing() -> bool:
    """Whether this forward is activation checkpointing's recompute, i.e. runs inside a
    backward pass (autograd has a current graph task). The load counter skips it: a recomputed
    forward would count the same tokens twice.

    Compiled, it is False: a compiled graph's recompute never replays side effects (for a
    checkpointed block, `training.memory.apply_compile` tells dynamo so); a checkpointed block
    that dynamo cannot capture whole runs eagerly, where this check runs.
    """
    return not torch.compiler.is_compiling() and torch._C._current_graph_task_id() != -1


class MoE(nn.Module):
    """Router + routed experts + shared experts; returns the output and this layer's aux losses.

    Buffers: `router_bias` (E,) fp32, the aux-loss-free selection bias (persistent, so it
    lives in checkpoints; present only when bias_update_rate > 0), and `tokens_per_expert`
    (E,) fp32, the load counted since the last `pop_expert_load` (training forwards only, not
    activation checkpointing's recomputes: `recomputing`).
    """

    def __init__(self, dim: int, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.router = Router(dim, cfg)
        self.experts = GroupedExperts(dim, cfg.expert_dim, cfg.n_routed_experts, cfg.experts_impl)
        # Ks shared experts of width F are one SwiGLU of width Ks * F (same function, one GEMM).
        self.shared_experts = FeedForward(dim, cfg.shared_dim) if cfg.n_shared_experts else None
        self.shared_gate = (
            nn.Linear(dim, 1, bias=False) if cfg.n_shared_experts and cfg.shared_expert_gate else None
        )
        self.router_bias: torch.Tensor | None
        if cfg.bias_update_rate > 0:
            self.register_buffer("router_bias", torch.zeros(cfg.n_routed_experts), persistent=True)
        else:
            self.router_bias = None
        self.register_buffer("tokens_per_expert", torch.zeros(cfg.n_routed_experts), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterAux]:
        x_TD = x.reshape(-1, x.shape[-1])
        topk_ids_TK, topk_weights_TK, aux = self.router(x_TD, self.router_bias)
        if self.training and not recomputing():
            with torch.no_grad():
                self.tokens_per_expert += aux.counts_E
        x_sorted_ND, order_N = permute(x_TD, topk_ids_TK)
        y_sorted_ND = self.experts(x_sorted_ND, aux.counts_E)
        out_TD = combine(y_sorted_ND, order_N, topk_weights_TK)
        if self.shared_experts is not None:
            shared_TD = self.shared_experts(x_TD)
            if self.shared_gate is not None:
                shared_TD = torch.sigmoid(self.shared_gate(x_TD)) * shared_TD
            out_TD = out_TD + shared_TD
        return out_TD.view_as(x), aux

    @torch.no_grad()
    def init_weights(self, std: float) -> None:
        for w in (self.router.gate.weight, self.experts.gate_proj, self.experts.up_proj, self.experts.down_proj):
            nn.init.trunc_normal_(w, std=std, a=-3 * std, b=3 * std)
        if self.shared_experts is not None:
            for lin in (self.shared_experts.gate_proj, self.shared_experts.up_proj, self.shared_experts.down_proj):
                nn.init.trunc_normal_(lin.weight, std=std, a=-3 * std, b=3 * std)
        if self.shared_gate is not None:
            nn.init.trunc_normal_(self.shared_gate.weight, std=std, a=-3 * std, b=3 * std)
        if self.router_bias is not None:
            self.router_bias.zero_()
        self.tokens_per_expert.zero_()


# ---------------------------------------------------------------------------------------------
# Load telemetry and the aux-loss-free bias update (DeepSeek-V3 section 2.1.2)
# ---------------------------------------------------------------------------------------------


def moe_layers(model: nn.Module) -> dict[str, MoE]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MoE)}


@torch.no_grad()
def pop_expert_load(model: nn.Module, group: dist.ProcessGroup | None = None) -> dict[str, torch.Tensor]:
    """Per-layer tokens per expert since the last call, summed over `group` (default: the world
    when torch.distributed is initialised), and reset. For telemetry and the bias update.

    Every rank routes its own tokens over all E experts before any dispatch, so the sum over all
    ranks (data and expert parallel) is the global load.
    """
    layers = moe_layers(model)
    if not layers:
        return {}
    # NOTE: one all_reduce for all layers (L x E floats), not one per layer.
    load_LE = torch.stack([m.tokens_per_expert for m in layers.values()])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(load_LE, group=group)
    for m in layers.values():
        m.tokens_per_expert.zero_()
    return {name: load_LE[i] for i, name in enumerate(layers)}


@torch.no_grad()
def update_router_bias(model: nn.Module, group: dist.ProcessGroup | None = None) -> dict[str, torch.Tensor]:
    """b_i += gamma if expert i got fewer tokens than the mean, -= gamma if more (V3).

    Call once per optimizer step after gradient accumulation (or use
    `register_router_bias_hook`). Returns the consumed per-layer loads for telemetry.
    """
    loads = pop_expert_load(model, group)
    for name, m in moe_layers(model).items():
        load_E = loads[name]
        if m.router_bias is None or load_E.sum() == 0:
            continue
        delta_E = m.cfg.bias_update_rate * torch.sign(load_E.mean() - load_E)
        # Centred: selection is invariant to a common shift; this keeps the bias from drifting.
        m.router_bias += delta_E - delta_E.mean()
    return loads


def register_router_bias_hook(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    on_load: Callable[[dict[str, torch.Tensor]], None] | None = None,
    group: dist.ProcessGroup | None = None,
):
    """Run `update_router_bias` as an optimizer step pre-hook (once per step, after all
    micro-batches), passing the loads to `on_load` for telemetry. Returns the hook handle."""

    def hook(_opt, _args, _kwargs):
        loads = update_router_bias(model, group)
        if on_load is not None:
            on_load(loads)

    return optimizer.register_step_pre_hook(hook)
