"""Model configuration: nested, validated, with named presets and an analytic parameter count.

    cfg = preset("small", vocab_size=manifest.tokenizer.vocab_size)
    model = cfg.build()              # training.model.Transformer
    count_params(cfg)                # {"total": ..., "active": ...} without allocating

The options are chosen so that a trained model exports exactly to Hugging Face's built-in
`Qwen2MoeForCausalLM` (pre-norm RMSNorm decoder, rotate-half RoPE, SwiGLU experts, softmax
top-k router, one (possibly wide) shared expert, dense layers via `mlp_only_layers`); the
export conditions are listed on `ModelConfig.hf_export_problems`.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from training.model import Transformer


class MoEConfig(BaseModel):
    """A DeepSeekMoE FFN (arXiv 2401.06066 section 3, V3 options from arXiv 2412.19437)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_routed_experts: int = Field(ge=1)
    n_activated_experts: int = Field(ge=1, description="top-k routed experts per token (K')")
    n_shared_experts: int = Field(default=1, ge=0, description="always-on experts (Ks)")
    expert_dim: int = Field(ge=1, description="hidden width F of one fine-grained expert")
    # Leading layers that keep a dense SwiGLU FFN (DeepSeekMoE 16B: 1, V3: 3).
    n_dense_layers: int = Field(default=0, ge=0)
    # softmax: s = Softmax(u.e) over all routed experts (DeepSeekMoE, Qwen2-MoE).
    # sigmoid: s = sigmoid(u.e) (DeepSeek-V3; pair with normalize_topk=True).
    score_func: Literal["softmax", "sigmoid"] = "softmax"
    # DeepSeekMoE does not renormalise the K' selected gates; V3 divides by their sum.
    normalize_topk: bool = False
    route_scale: float = Field(default=1.0, gt=0)
    # Qwen2-MoE (the export target) multiplies the shared expert by sigmoid(x . w_g); DeepSeek
    # adds it ungated (set False for that). Costs D parameters per layer.
    shared_expert_gate: bool = True
    # Expert-level balance loss a1 (DeepSeekMoE 2B: 0.01, 16B: 0.001); 0 disables it.
    balance_loss_coef: float = Field(default=0.01, ge=0)
    # Router z-loss (ST-MoE; OLMoE and Megatron use 1e-3); 0 disables it.
    z_loss_coef: float = Field(default=1e-3, ge=0)
    # Aux-loss-free balancing (V3): gamma of the per-step routing-bias update; 0 disables the
    # bias entirely (selection then uses the raw scores).
    bias_update_rate: float = Field(default=0.0, ge=0)
    # How the routed experts run: grouped_mm (one kernel over sorted tokens), bmm (experts
    # padded to the largest group), or auto (grouped_mm when its 16-byte stride rule holds).
    experts_impl: Literal["auto", "grouped_mm", "bmm"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> MoEConfig:
        if self.n_activated_experts > self.n_routed_experts:
            raise ValueError("n_activated_experts cannot exceed n_routed_experts")
        return self

    @property
    def shared_dim(self) -> int:
        """Width of the fused shared expert: Ks experts of width F are one SwiGLU of Ks*F."""
        return self.n_shared_experts * self.expert_dim


class ModelConfig(BaseModel):
    """A decoder-only transformer whose FFNs are DeepSeekMoE layers after `n_dense_layers`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int = Field(ge=2, description="from the manifest's tokenizer")
    dim: int = Field(ge=8)
    n_layers: int = Field(ge=1)
    n_heads: int = Field(ge=1)
    n_kv_heads: int | None = Field(default=None, ge=1, description="GQA; None means n_heads")
    head_dim: int | None = Field(default=None, ge=2, description="None means dim // n_heads")
    max_seq_len: int = Field(default=2048, ge=1)
    rope_theta: float = Field(default=10_000.0, gt=0)
    norm_eps: float = Field(default=1e-6, gt=0)
    attn_dropout: float = Field(default=0.1, ge=0, lt=1, description="on attention weights")
    qkv_bias: bool = False
    tie_embeddings: bool = False
    # Width of the dense SwiGLU FFN in the first n_dense_layers; None means the MoE layer's
    # active width (Ks + K') * F, so dense and MoE layers cost the same per token.
    dense_ffn_dim: int | None = Field(default=None, ge=1)
    init_std: float = Field(default=0.006, gt=0, description="DeepSeek's init std")
    moe: MoEConfig

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.head_dim is None and self.dim % self.n_heads:
            raise ValueError("dim must be divisible by n_heads (or set head_dim)")
        if self.n_heads % self.kv_heads:
            raise ValueError("n_heads must be a multiple of n_kv_heads")
        if self.attn_head_dim % 2:
            raise ValueError("rotary embeddings need an even head_dim")
        if self.moe.n_dense_layers > self.n_layers:
            raise ValueError("n_dense_layers cannot exceed n_layers")
        return self

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def attn_head_dim(self) -> int:
        return self.head_dim or self.dim // self.n_heads

    @property
    def dense_dim(self) -> int:
        moe = self.moe
        return self.dense_ffn_dim or (moe.n_shared_experts + moe.n_activated_experts) * moe.expert_dim

    def is_moe_layer(self, layer_id: int) -> bool:
        return layer_id >= self.moe.n_dense_layers

    def build(self) -> Transformer:
        from training.model import Transformer  # torch: configs are validated without it (the service does)

        return Transformer(self)

    def hf_export_problems(self) -> list[str]:
        """Why this config would not export exactly to `Qwen2MoeForCausalLM` ([] if it does).

        Qwen2-MoE computes routed = sum_k softmax(x W_r^T)_k * SwiGLU_k(x) without bias in
        selection, and always gates its single shared expert with sigmoid(x . w_g).
        """
        moe, problems = self.moe, []
        if moe.score_func != "softmax":
            problems.append("Qwen2-MoE routes with softmax scores (score_func='softmax')")
        if moe.bias_update_rate > 0:
            problems.append("Qwen2-MoE selects experts without a routing bias (bias_update_rate=0)")
        if moe.route_scale != 1.0:
            problems.append("Qwen2-MoE has no route scale (route_scale=1.0)")
        if moe.n_shared_experts > 0 and not moe.shared_expert_gate:
            problems.append("Qwen2-MoE gates its shared expert (shared_expert_gate=True)")
        if moe.n_shared_experts == 0:
            problems.append("Qwen2-MoE always has a shared expert (n_shared_experts>=1)")
        return problems


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Total and per-token active parameters, analytically (nothing is allocated).

    Active = everything a token touches: embedding row and output projection counted as full
    matrices (the usual convention), attention, norms, routers, shared experts and K' of the
    routed experts. The routing bias is a buffer, not a parameter.
    """
    d, moe = cfg.dim, cfg.moe
    q_out, kv_out = cfg.n_heads * cfg.attn_head_dim, cfg.kv_heads * cfg.attn_head_dim
    attn = d * q_out + 2 * d * kv_out + q_out * d
    if cfg.qkv_bias:
        attn += q_out + 2 * kv_out
    norms = 2 * d
    swiglu = lambda width: 3 * d * width  # noqa: E731  gate, up (D x W) and down (W x D)

    dense_layer = attn + norms + swiglu(cfg.dense_dim)
    moe_common = attn + norms + d * moe.n_routed_experts  # router
    if moe.n_shared_experts:
        moe_common += swiglu(moe.shared_dim) + (d if moe.shared_expert_gate else 0)
    routed_one = swiglu(moe.expert_dim)

    n_dense, n_moe = moe.n_dense_layers, cfg.n_layers - moe.n_dense_layers
    embed = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2) + d  # + final norm
    total = embed + n_dense * dense_layer + n_moe * (moe_common + moe.n_routed_experts * routed_one)
    active = embed + n_dense * dense_layer + n_moe * (moe_common + moe.n_activated_experts * routed_one)
    return {"total": total, "active": active}


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------


def tiny(vocab_size: int) -> ModelConfig:
    """For tests: 2 layers, dim 64, 8 routed experts top-2 + 1 shared."""
    return ModelConfig(
        vocab_size=vocab_size, dim=64, n_layers=2, n_heads=4, max_seq_len=256,
        moe=MoEConfig(n_routed_experts=8, n_activated_experts=2, n_shared_experts=1, expert_dim=32),
    )  # fmt: skip


def small(vocab_size: int) -> ModelConfig:
    """~98M total / ~40M active with a 32k vocabulary (tied embeddings): trainable on CPU.

    Fine-grained as in DeepSeekMoE: 16 routed experts of width 384 (0.75 * dim), top-2 + 1
    shared, first layer dense. Without the 16.8M embedding, 81M total / 23M active.
    """
    return ModelConfig(
        vocab_size=vocab_size, dim=512, n_layers=8, n_heads=8, max_seq_len=1024, tie_embeddings=True,
        moe=MoEConfig(
            n_routed_experts=16, n_activated_experts=2, n_shared_experts=1, expert_dim=384,
            n_dense_layers=1,
        ),
    )  # fmt: skip


def moe_67b(vocab_size: int = 128_000) -> ModelConfig:
    """The article's model: 60 layers, hidden 7168, 64 experts top-2 + 1 shared, 128k vocab.

    The article gives 67B total and 16.7B active but no expert width. With hidden 7168 as the
    model width and multi-head attention (56 heads of 128), an expert width of 640 gives
    67.9B total and 16.7B active, matching both figures (576: 62.5B/16.4B; 672: 70.6B/16.8B).
    For shape and memory planning only: never allocate it on one machine.
    """
    return ModelConfig(
        vocab_size=vocab_size, dim=7168, n_layers=60, n_heads=56, max_seq_len=4096,
        moe=MoEConfig(n_routed_experts=64, n_activated_experts=2, n_shared_experts=1, expert_dim=640),
    )  # fmt: skip


PRESETS = {"tiny": tiny, "small": small, "moe-67b": moe_67b}
# Earlier names, still accepted with a warning: "seed-67b" named the article by a word no user
# could decode.
PRESET_ALIASES = {"seed-67b": "moe-67b"}


def canonical_preset(name: str) -> str:
    """The preset's current name; an alias warns (FutureWarning, shown to users) and maps."""
    if name in PRESET_ALIASES:
        warnings.warn(f"preset {name!r} is deprecated: use {PRESET_ALIASES[name]!r}", FutureWarning, stacklevel=3)
        return PRESET_ALIASES[name]
    return name


def preset(name: str, vocab_size: int) -> ModelConfig:
    """A named preset with the tokenizer's vocabulary size."""
    try:
        return PRESETS[canonical_preset(name)](vocab_size)
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None
