"""The transformer: parameter counts against real modules, attention masking, presets, and a
tiny model that learns."""

from __future__ import annotations

import pytest
import torch

from training.config import (
    HF_DEEPSEEK_V3,
    HF_QWEN2_MOE,
    ModelConfig,
    MoEConfig,
    count_params,
    moe_67b,
    preset,
    small,
    tiny,
    tiny_v3,
)
from training.model import MLAttention, Transformer, causal_lm_loss, doc_ids_from_starts
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
        tiny_v3(VOCAB),
        tiny_v3(VOCAB).model_copy(update={"q_lora_rank": None, "v_head_dim": 24, "tie_embeddings": True}),
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


def test_export_conditions_per_architecture():
    assert tiny(VOCAB).hf_architecture() == HF_QWEN2_MOE and tiny(VOCAB).hf_export_problems() == []
    assert tiny_v3(VOCAB).hf_architecture() == HF_DEEPSEEK_V3 and tiny_v3(VOCAB).hf_export_problems() == []
    # V3's router and shared expert on plain multi-head attention: DeepSeek-V3 is the target,
    # and only the attention is missing; Qwen2-MoE could express none of the three choices.
    v3_moe_mha = tiny(VOCAB).model_copy(update={"moe": MoEConfig(
        n_routed_experts=8, n_activated_experts=2, expert_dim=32, score_func="sigmoid",
        bias_update_rate=1e-3, shared_expert_gate=False)})  # fmt: skip
    assert v3_moe_mha.hf_architecture() == HF_DEEPSEEK_V3
    assert v3_moe_mha.hf_export_problems() == ["DeepSeek-V3 has multi-head latent attention (attention_type='mla')"]
    assert len(v3_moe_mha.hf_export_problems(HF_QWEN2_MOE)) == 3
    assert len(tiny_v3(VOCAB).hf_export_problems(HF_QWEN2_MOE)) == 5
    assert "sigmoid" in tiny(VOCAB).hf_export_problems(HF_DEEPSEEK_V3)[0]


def test_tiny_v3_preset_is_deepseek_v3_in_miniature():
    cfg = preset("tiny-v3", VOCAB)
    moe = cfg.moe
    assert cfg.dim == 64 and cfg.attention_type == "mla" and not cfg.is_moe_layer(0) and cfg.is_moe_layer(1)
    assert moe.score_func == "sigmoid" and moe.normalize_topk and not moe.shared_expert_gate
    assert moe.n_shared_experts == 1 and moe.bias_update_rate > 0 and moe.balance_loss_coef == 0
    assert moe.topk_groups is not None and moe.n_routed_experts % moe.n_expert_groups == 0


def test_config_rejects_impossible_shapes():
    with pytest.raises(ValueError):
        ModelConfig(vocab_size=10, dim=64, n_layers=1, n_heads=3, moe=tiny(10).moe)
    with pytest.raises(ValueError, match="kv_lora_rank"):
        ModelConfig(vocab_size=10, dim=64, n_layers=1, n_heads=4, attention_type="mla", moe=tiny(10).moe)
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelConfig.model_validate({**tiny_v3(10).model_dump(), "n_kv_heads": 2})
    with pytest.raises(ValueError, match="even"):
        ModelConfig.model_validate({**tiny_v3(10).model_dump(), "qk_rope_head_dim": 7})
    with pytest.raises(ValueError):
        MoEConfig(n_routed_experts=4, n_activated_experts=5, expert_dim=8)
    with pytest.raises(ValueError):
        MoEConfig(n_routed_experts=4, n_activated_experts=2, expert_dim=8, unknown=1)


def test_mla_shapes_and_latent_widths():
    cfg = tiny_v3(VOCAB)
    attn = MLAttention(cfg)
    heads, nope, rope, v = cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    assert attn.q_b_proj.weight.shape == (heads * (nope + rope), cfg.q_lora_rank)
    assert attn.kv_a_proj_with_mqa.weight.shape == (cfg.kv_lora_rank + rope, cfg.dim)  # latent + shared RoPE key
    assert attn.kv_b_proj.weight.shape == (heads * (nope + v), cfg.kv_lora_rank)
    assert attn.o_proj.weight.shape == (cfg.dim, heads * v)
    model = cfg.build()
    assert model.rope_cos.shape == (cfg.max_seq_len, rope)  # RoPE on the decoupled dims only
    x_BSD = torch.randn(2, 7, cfg.dim)
    assert attn(x_BSD, model.rope_cos[:7], model.rope_sin[:7], None).shape == (2, 7, cfg.dim)
    full_q = MLAttention(cfg.model_copy(update={"q_lora_rank": None}))
    assert full_q.q_a_proj is None and full_q.q_proj.weight.shape == (heads * (nope + rope), cfg.dim)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # eager: the reference path
def test_mla_document_mask_is_the_same_under_flex_attention():
    # MLA's value heads (16) are narrower than its query-key heads (24); both kernels take that.
    torch.manual_seed(0)
    model = tiny_v3(VOCAB).model_copy(update={"attn_dropout": 0.0}).build().eval()
    tokens = torch.randint(0, VOCAB, (2, 40))
    starts = torch.zeros(2, 40, dtype=torch.bool)
    starts[:, [0, 13, 29]] = True
    with torch.no_grad():  # FlexAttention has no CPU backward
        dense = model(tokens, doc_ids_from_starts(starts)).logits_BSV
        model.attention_kernel = "flex"
        flex = model(tokens, doc_ids_from_starts(starts)).logits_BSV
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["tiny", "tiny-v3"])
def test_attention_is_causal(name):
    torch.manual_seed(0)
    model = preset(name, VOCAB).build().eval()
    tokens = torch.randint(0, VOCAB, (2, 12))
    changed = tokens.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % VOCAB
    a, b = model(tokens).logits_BSV, model(changed).logits_BSV
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


@pytest.mark.parametrize("name", ["tiny", "tiny-v3"])
def test_document_mask_makes_packed_documents_independent(name):
    torch.manual_seed(0)
    model = preset(name, VOCAB).build().eval()
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


@pytest.mark.parametrize("name", ["tiny", "tiny-v3"])
def test_meta_device_build_then_materialise(name):
    cfg = preset(name, VOCAB)
    with torch.device("meta"):
        model = cfg.build()
    model.to_empty(device="cpu")
    model.init_weights(buffer_device=torch.device("cpu"))
    reference = cfg.build()
    torch.testing.assert_close(model.rope_cos, reference.rope_cos)
    out = model.eval()(torch.randint(0, VOCAB, (1, 6)))
    assert torch.isfinite(out.logits_BSV).all()


@pytest.mark.parametrize("name", ["tiny", "tiny-v3"])
def test_tiny_model_overfits_a_fixed_batch(name):
    torch.manual_seed(0)
    model = preset(name, VOCAB).build()
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
