"""The transformer: parameter counts against real modules, attention masking, presets, and a
tiny model that learns."""

from __future__ import annotations

import pytest
import torch

from training.config import ModelConfig, MoEConfig, count_params, moe_67b, preset, small, tiny
from training.model import Transformer, causal_lm_loss, doc_ids_from_starts
from training.moe import MoE

VOCAB = 96


def counted(model: Transformer) -> dict[str, int]:
    """Total from the real parameters; active = total minus the unchosen routed experts."""
    total = sum(p.numel() for p in model.parameters())
    idle = 0
    for m in model.modules():
        if isinstance(m, MoE):
            per_expert = sum(p[0].numel() for p in m.experts.parameters())
            idle += per_expert * (m.cfg.n_routed_experts - m.cfg.n_activated_experts)
    return {"total": total, "active": total - idle}


def variants() -> list[ModelConfig]:
    base = tiny(VOCAB)
    moe = base.moe
    return [
        base,
        base.model_copy(update={"tie_embeddings": True, "n_kv_heads": 2, "qkv_bias": True}),
        base.model_copy(update={"n_layers": 3,
                                "moe": moe.model_copy(update={"n_dense_layers": 1, "n_shared_experts": 2})}),
        base.model_copy(update={"moe": moe.model_copy(update={"n_shared_experts": 0})}),
        base.model_copy(update={"head_dim": 8, "dense_ffn_dim": 40,
                                "moe": moe.model_copy(update={"shared_expert_gate": False, "n_dense_layers": 2})}),
    ]  # fmt: skip


@pytest.mark.parametrize("cfg", variants())
def test_analytic_param_count_matches_instantiated_model(cfg):
    assert count_params(cfg) == counted(cfg.build())


def test_presets():
    assert count_params(tiny(VOCAB))["total"] < 1_000_000
    small_counts = count_params(small(32_768))
    assert 90e6 < small_counts["total"] < 110e6 and small_counts["active"] < 0.45 * small_counts["total"]
    seed = count_params(moe_67b())
    # The article: 67B total, 16.7B active per token.
    assert seed["total"] == pytest.approx(67e9, rel=0.02)
    assert seed["active"] == pytest.approx(16.7e9, rel=0.01)
    assert preset("moe-67b", 128_000) == moe_67b()
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("huge", VOCAB)


def test_export_conditions_for_qwen2_moe():
    assert tiny(VOCAB).hf_export_problems() == []
    v3 = tiny(VOCAB).model_copy(update={"moe": MoEConfig(
        n_routed_experts=8, n_activated_experts=2, expert_dim=32, score_func="sigmoid",
        bias_update_rate=1e-3, shared_expert_gate=False)})  # fmt: skip
    assert len(v3.hf_export_problems()) == 3


def test_config_rejects_impossible_shapes():
    with pytest.raises(ValueError):
        ModelConfig(vocab_size=10, dim=64, n_layers=1, n_heads=3, moe=tiny(10).moe)
    with pytest.raises(ValueError):
        MoEConfig(n_routed_experts=4, n_activated_experts=5, expert_dim=8)
    with pytest.raises(ValueError):
        MoEConfig(n_routed_experts=4, n_activated_experts=2, expert_dim=8, unknown=1)


def test_attention_is_causal():
    torch.manual_seed(0)
    model = tiny(VOCAB).build().eval()
    tokens = torch.randint(0, VOCAB, (2, 12))
    changed = tokens.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % VOCAB
    a, b = model(tokens).logits_BSV, model(changed).logits_BSV
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_document_mask_makes_packed_documents_independent():
    torch.manual_seed(0)
    model = tiny(VOCAB).build().eval()
    doc_a, doc_b = torch.randint(0, VOCAB, (1, 5)), torch.randint(0, VOCAB, (1, 7))
    packed = torch.cat([doc_a, doc_b], dim=1)
    starts = torch.zeros(1, 12, dtype=torch.bool)
    starts[0, [0, 5]] = True
    logits = model(packed, doc_ids_BS=doc_ids_from_starts(starts)).logits_BSV
    # RoPE is relative, so doc_b at positions 5.. equals doc_b alone at 0..
    torch.testing.assert_close(logits[:, 5:], model(doc_b).logits_BSV, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[:, :5], model(doc_a).logits_BSV, atol=1e-5, rtol=1e-4)


def test_attention_dropout_only_in_training():
    model = tiny(VOCAB).build()
    tokens = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))
    model.eval()
    torch.testing.assert_close(model(tokens).logits_BSV, model(tokens).logits_BSV)
    model.train()
    torch.manual_seed(1)
    first = model(tokens).logits_BSV
    torch.manual_seed(2)
    assert not torch.allclose(first, model(tokens).logits_BSV)


def test_meta_device_build_then_materialise():
    cfg = tiny(VOCAB)
    with torch.device("meta"):
        model = cfg.build()
    model.to_empty(device="cpu")
    model.init_weights(buffer_device=torch.device("cpu"))
    reference = cfg.build()
    torch.testing.assert_close(model.rope_cos, reference.rope_cos)
    out = model.eval()(torch.randint(0, VOCAB, (1, 6)))
    assert torch.isfinite(out.logits_BSV).all()


def test_tiny_model_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = tiny(VOCAB).build()
    data = torch.randint(0, VOCAB, (4, 33), generator=torch.Generator().manual_seed(0))
    inputs, targets = data[:, :-1], data[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    losses = []
    for _ in range(50):
        out = model(inputs)
        loss = causal_lm_loss(out.logits_BSV, targets)
        (loss + out.aux_loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[0] == pytest.approx(torch.log(torch.tensor(float(VOCAB))).item(), rel=0.05)
    assert losses[-1] < 0.2 * losses[0]
