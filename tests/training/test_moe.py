"""The DeepSeekMoE layer: expert kernels against a per-expert loop, losses against the paper's
formulas computed by hand, the aux-loss-free routing bias, and V3's group-limited routing
against transformers' DeepseekV3 router."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.config import MoEConfig
from training.moe import (
    MoE,
    Router,
    balance_loss,
    device_balance_loss,
    expert_counts,
    experts_grouped_mm,
    experts_padded_bmm,
    grouped_mm_eligible,
    pop_expert_load,
    register_router_bias_hook,
    update_router_bias,
    z_loss,
)


def naive_experts(x_sorted_ND, gate_EFD, up_EFD, down_EDF, counts_E):
    """The reference: one SwiGLU per expert over its slice of the sorted rows."""
    outs, start = [], 0
    for e, n in enumerate(counts_E.tolist()):
        x = x_sorted_ND[start : start + n]
        start += n
        outs.append(F.linear(F.silu(F.linear(x, gate_EFD[e])) * F.linear(x, up_EFD[e]), down_EDF[e]))
    return torch.cat(outs)


def expert_weights(n_experts: int, dim: int, hidden: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(*shape, generator=g) * 0.1).requires_grad_()
        for shape in ((n_experts, hidden, dim), (n_experts, hidden, dim), (n_experts, dim, hidden))
    ]


@pytest.mark.parametrize("kernel", [experts_grouped_mm, experts_padded_bmm])
def test_expert_kernels_match_naive_loop_forward_and_backward(kernel):
    dim, hidden = 16, 8
    counts_E = torch.tensor([3, 0, 5, 1, 7, 0, 2, 4])  # empty experts included
    x = torch.randn(int(counts_E.sum()), dim, generator=torch.Generator().manual_seed(1), requires_grad=True)
    weights = expert_weights(len(counts_E), dim, hidden)
    grad_out = torch.randn(x.shape[0], dim, generator=torch.Generator().manual_seed(2))

    y = kernel(x, *weights, counts_E)
    y.backward(grad_out)
    grads = [t.grad.clone() for t in (x, *weights)]
    for t in (x, *weights):
        t.grad = None
    y_ref = naive_experts(x, *weights, counts_E)
    y_ref.backward(grad_out)

    torch.testing.assert_close(y, y_ref)
    for got, t in zip(grads, (x, *weights)):
        torch.testing.assert_close(got, t.grad)


def test_grouped_mm_backward_accepts_a_broadcast_gradient():
    counts_E = torch.tensor([2, 3])
    x = torch.randn(5, 8, requires_grad=True)
    experts_grouped_mm(x, *expert_weights(2, 8, 4), counts_E).sum().backward()  # stride-0 grad
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_grouped_mm_eligibility_is_the_16_byte_stride_rule():
    assert grouped_mm_eligible(torch.zeros(4, 64), 32)
    assert not grouped_mm_eligible(torch.zeros(4, 63), 32)  # 252-byte rows
    assert not grouped_mm_eligible(torch.zeros(4, 64), 34)
    assert grouped_mm_eligible(torch.zeros(4, 64, dtype=torch.bfloat16), 40)


def dense_reference(moe: MoE, x_TD: torch.Tensor) -> torch.Tensor:
    """h_t = sum_shared FFN(u_t) + sum_i g_i,t FFN_i(u_t), token by token."""
    logits = F.linear(x_TD, moe.router.gate.weight).float()
    scores = logits.softmax(-1)
    top = scores.topk(moe.cfg.n_activated_experts, dim=-1)
    ex = moe.experts
    out = []
    for t in range(x_TD.shape[0]):
        u = x_TD[t]
        h = moe.shared_experts(u) * torch.sigmoid(moe.shared_gate(u))
        for g, e in zip(top.values[t], top.indices[t]):
            h = h + g * F.linear(F.silu(F.linear(u, ex.gate_proj[e])) * F.linear(u, ex.up_proj[e]), ex.down_proj[e])
        out.append(h)
    return torch.stack(out)


@pytest.mark.parametrize("impl", ["grouped_mm", "bmm"])
def test_moe_layer_equals_token_by_token_formula(impl):
    torch.manual_seed(0)
    cfg = MoEConfig(n_routed_experts=8, n_activated_experts=2, expert_dim=16, experts_impl=impl)
    moe = MoE(32, cfg)
    moe.init_weights(0.1)
    x = torch.randn(2, 5, 32)
    out, aux = moe(x)
    torch.testing.assert_close(out.view(-1, 32), dense_reference(moe, x.view(-1, 32)))
    assert int(aux.counts_E.sum()) == 10 * 2


def test_softmax_gates_are_not_renormalised_by_default():
    torch.manual_seed(0)
    router = Router(16, MoEConfig(n_routed_experts=8, n_activated_experts=2, expert_dim=8))
    _, weights_TK, _ = router(torch.randn(10, 16))
    assert (weights_TK.sum(-1) < 1).all()
    router_v3 = Router(16, MoEConfig(n_routed_experts=8, n_activated_experts=2, expert_dim=8,
                                     score_func="sigmoid", normalize_topk=True))  # fmt: skip
    _, weights_TK, _ = router_v3(torch.randn(10, 16))
    torch.testing.assert_close(weights_TK.sum(-1), torch.ones(10))


def test_routing_bias_steers_selection_but_not_the_gate_value():
    torch.manual_seed(0)
    router = Router(16, MoEConfig(n_routed_experts=4, n_activated_experts=1, expert_dim=8))
    x = torch.randn(6, 16)
    bias_E = torch.tensor([0.0, 0.0, 0.0, 10.0])
    ids_TK, weights_TK, _ = router(x, bias_E)
    assert (ids_TK == 3).all()
    torch.testing.assert_close(weights_TK[:, 0], router.gate(x).softmax(-1)[:, 3])


def test_balance_loss_matches_hand_computation():
    # T=2 tokens, E=4 experts, K'=2.
    scores_TE = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.1, 0.5, 0.3, 0.1]])
    ids_TK = torch.tensor([[0, 1], [1, 2]])
    counts_E = torch.tensor([1, 2, 1, 0])
    # f_i = N'/(K'T) * count_i = 4/4 * count_i = [1, 2, 1, 0]; P = column means.
    p = [0.25, 0.4, 0.25, 0.1]
    expected = 1 * p[0] + 2 * p[1] + 1 * p[2] + 0 * p[3]  # = 1.3
    assert balance_loss(scores_TE, ids_TK, counts_E).item() == pytest.approx(expected)


def test_balance_loss_is_its_coefficient_under_uniform_routing():
    router = Router(8, MoEConfig(n_routed_experts=4, n_activated_experts=2, expert_dim=8, balance_loss_coef=0.01))
    torch.nn.init.zeros_(router.gate.weight)  # all scores 1/4
    x = torch.randn(4, 8)
    # topk of a constant row picks experts 0,1 for every token: f = [2, 2, 0, 0], P = 1/4.
    _, _, aux = router(x)
    assert aux.balance_loss.item() == pytest.approx(0.01 * (2 * 0.25 + 2 * 0.25))


def test_z_loss_matches_hand_computation():
    logits_TE = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    # logsumexp: log 2 and log 4.
    expected = (math.log(2) ** 2 + math.log(4) ** 2) / 2
    assert z_loss(logits_TE).item() == pytest.approx(expected)
    router = Router(2, MoEConfig(n_routed_experts=2, n_activated_experts=1, expert_dim=4, z_loss_coef=1e-3))
    with torch.no_grad():
        router.gate.weight.copy_(torch.eye(2))
    _, _, aux = router(logits_TE)
    assert aux.z_loss.item() == pytest.approx(1e-3 * expected)


def imbalance(load_E: torch.Tensor) -> float:
    return (load_E.max() / load_E.mean()).item()


def test_aux_free_bias_moves_load_toward_uniform():
    torch.manual_seed(0)
    cfg = MoEConfig(n_routed_experts=8, n_activated_experts=2, expert_dim=8, score_func="sigmoid",
                    normalize_topk=True, balance_loss_coef=0.0, z_loss_coef=0.0, bias_update_rate=0.005)  # fmt: skip
    moe = MoE(16, cfg)
    moe.init_weights(0.02)
    with torch.no_grad():  # skew: inputs share a direction that experts 0 and 1 favour
        moe.router.gate.weight[:2] += 0.05
    x = torch.randn(4, 64, 16) + 1.0
    moe.train()
    history = []
    for _ in range(40):
        moe(x)
        history.append(imbalance(update_router_bias(moe)[""]))
    # A sign update with a fixed step ends in a small limit cycle around balance (gamma sets
    # its width), so judge the last few steps together.
    assert history[0] > 3.5  # two of eight experts take everything: max / mean = 4
    assert sum(history[-5:]) / 5 < 1.5
    assert moe.router_bias[:2].max() < 0 < moe.router_bias[2:].min()
    assert moe.tokens_per_expert.sum() == 0  # consumed


def test_expert_load_is_counted_in_training_only_and_popped():
    moe = MoE(16, MoEConfig(n_routed_experts=4, n_activated_experts=2, expert_dim=8))
    moe.init_weights(0.02)
    x = torch.randn(3, 5, 16)
    moe.eval()
    moe(x)
    assert moe.tokens_per_expert.sum() == 0
    moe.train()
    moe(x)
    moe(x)
    load = pop_expert_load(moe)[""]
    assert load.sum().item() == 2 * 15 * 2
    assert pop_expert_load(moe)[""].sum() == 0


def test_bias_update_runs_as_optimizer_pre_hook_once_per_step():
    cfg = MoEConfig(n_routed_experts=4, n_activated_experts=1, expert_dim=8, bias_update_rate=0.1)
    moe = MoE(8, cfg)
    moe.init_weights(0.02)
    with torch.no_grad():
        moe.router.gate.weight[0] += 1.0
    opt = torch.optim.SGD(moe.parameters(), lr=0.0)
    seen = []
    register_router_bias_hook(opt, moe, on_load=seen.append)
    moe.train()
    for _ in range(3):  # gradient accumulation: 3 micro-batches, one step
        out, aux = moe(torch.randn(2, 4, 8))
        (out.sum() + aux.balance_loss).backward()
    opt.step()
    assert len(seen) == 1 and seen[0][""].sum().item() == 3 * 8
    assert moe.router_bias.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Expert counts, the device-level balance loss and group-limited routing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_tokens, top_k, n_experts", [(1, 1, 4), (37, 2, 8), (256, 6, 64), (5, 2, 16)])
def test_expert_counts_equal_bincount(n_tokens, top_k, n_experts):
    gen = torch.Generator().manual_seed(n_tokens)
    # Distinct experts per token, as topk gives; (5, 2, 16) leaves most experts (and the last) empty.
    ids_TK = torch.rand(n_tokens, n_experts, generator=gen).topk(top_k, dim=-1).indices
    counts_E = expert_counts(ids_TK, n_experts)
    assert counts_E.dtype == torch.int64 and counts_E.shape == (n_experts,)
    assert torch.equal(counts_E, torch.bincount(ids_TK.reshape(-1), minlength=n_experts))


def test_device_balance_loss_matches_hand_computation():
    # The expert-level test's routing (f = [1, 2, 1, 0], P = [0.25, 0.4, 0.25, 0.1]) on 2 devices
    # of 2 experts: f' = group means [1.5, 0.5], P' = group sums [0.65, 0.35] (DeepSeekMoE eq. 14-16).
    scores_TE = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.1, 0.5, 0.3, 0.1]])
    ids_TK = torch.tensor([[0, 1], [1, 2]])
    counts_E = torch.tensor([1, 2, 1, 0])
    assert device_balance_loss(scores_TE, ids_TK, counts_E, 2).item() == pytest.approx(1.5 * 0.65 + 0.5 * 0.35)
    # One group is the whole machine: f' = 1, P' = 1 (every token's scores sum to 1).
    assert device_balance_loss(scores_TE, ids_TK, counts_E, 1).item() == pytest.approx(1.0)
    # One expert per group is the expert-level loss.
    assert device_balance_loss(scores_TE, ids_TK, counts_E, 4).item() == pytest.approx(1.3)


def test_device_balance_loss_enters_the_router_balance_loss():
    def router(**coefs) -> Router:
        r = Router(8, MoEConfig(n_routed_experts=4, n_activated_experts=2, expert_dim=8, n_expert_groups=2, **coefs))
        torch.nn.init.zeros_(r.gate.weight)  # all scores 1/4: every token picks experts 0 and 1
        return r

    x = torch.randn(4, 8)
    # f = [2, 2, 0, 0], P = 1/4: expert-level 1.0; device-level f' = [2, 0], P' = [1/2, 1/2]: 1.0.
    assert router(balance_loss_coef=0.0, device_balance_loss_coef=0.05)(x)[2].balance_loss.item() == pytest.approx(0.05)
    both = router(balance_loss_coef=0.01, device_balance_loss_coef=0.05)(x)[2].balance_loss
    assert both.item() == pytest.approx(0.01 + 0.05)


def test_moe_config_checks_expert_groups():
    base = dict(n_routed_experts=8, n_activated_experts=2, expert_dim=8)
    with pytest.raises(ValueError, match="divide"):
        MoEConfig(**base, n_expert_groups=3)
    with pytest.raises(ValueError, match="topk_groups"):
        MoEConfig(**base, n_expert_groups=2, topk_groups=3)
    with pytest.raises(ValueError, match="top-2"):
        MoEConfig(**base, n_expert_groups=8, topk_groups=2)
    with pytest.raises(ValueError, match="n_activated_experts"):
        MoEConfig(**{**base, "n_activated_experts": 5}, n_expert_groups=4, topk_groups=2)


def test_group_limited_routing_matches_transformers_deepseek_v3_router():
    transformers = pytest.importorskip("transformers")
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    dim, n_experts, top_k, n_groups, topk_groups = 16, 16, 4, 4, 2
    cfg = MoEConfig(n_routed_experts=n_experts, n_activated_experts=top_k, expert_dim=8, score_func="sigmoid",
                    normalize_topk=True, route_scale=2.5, bias_update_rate=1e-3, n_expert_groups=n_groups,
                    topk_groups=topk_groups)  # fmt: skip
    hf = DeepseekV3TopkRouter(transformers.DeepseekV3Config(
        hidden_size=dim, n_routed_experts=n_experts, num_experts_per_tok=top_k, n_group=n_groups,
        topk_group=topk_groups, norm_topk_prob=True, routed_scaling_factor=2.5))  # fmt: skip
    torch.manual_seed(0)
    router = Router(dim, cfg)
    bias_E = 0.1 * torch.randn(n_experts)
    with torch.no_grad():
        hf.weight.copy_(router.gate.weight)
        hf.e_score_correction_bias.copy_(bias_E)
    x_TD = torch.randn(64, dim)

    ids_TK, weights_TK, _ = router(x_TD, bias_E)
    _, hf_weights_TK, hf_ids_TK = hf(x_TD)
    # transformers takes top-k unsorted: compare each token's experts as a set, with their gates.
    ids_sorted_TK, order_TK = ids_TK.sort(dim=-1)
    hf_ids_sorted_TK, hf_order_TK = hf_ids_TK.sort(dim=-1)
    assert torch.equal(ids_sorted_TK, hf_ids_sorted_TK)
    torch.testing.assert_close(weights_TK.gather(1, order_TK), hf_weights_TK.gather(1, hf_order_TK))
    # Each token stays inside topk_groups groups, and the limit changes some tokens' choice.
    groups_TK = ids_TK // (n_experts // n_groups)
    assert all(len(set(row.tolist())) <= topk_groups for row in groups_TK)
    free_ids_TK = router.gate(x_TD).sigmoid().add(bias_E).topk(top_k, dim=-1).indices.sort(dim=-1).values
    assert not torch.equal(free_ids_TK, ids_sorted_TK)
