"""Model configuration: nested, validated, with named presets and an analytic parameter count.

    cfg = preset("small", vocab_size=manifest.tokenizer.vocab_size)
    model = cfg.build()              # training.model.Transformer
    count_params(cfg)                # {"total": ..., "active": ...} without allocating

The options are chosen so that a trained model exports exactly to one of Hugging Face's built-in
architectures: `Qwen2MoeForCausalLM` (pre-norm RMSNorm decoder, rotate-half RoPE, SwiGLU experts,
softmax top-k router, one (possibly wide) gated shared expert, dense layers via `mlp_only_layers`)
or, for DeepSeek-V3-style configs (sigmoid router, routing bias, ungated shared expert,
multi-head latent attention), `DeepseekV3ForCausalLM`. `ModelConfig.hf_architecture` picks the
target and `ModelConfig.hf_export_problems` lists what a target cannot express.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from training.model import Transformer

# The Hugging Face causal-LM classes `flywheel export-hf` writes (built into transformers).
HF_QWEN2_MOE = "Qwen2MoeForCausalLM"
HF_DEEPSEEK_V3 = "DeepseekV3ForCausalLM"


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
    # D contiguous groups of experts: the devices of expert parallelism (set it to the EP degree,
    # e.g. `model: {moe: {n_expert_groups: 2}}` in the train config with `ep: 2`). Used by the
    # device-level balance loss and by group-limited routing; 1 = no groups.
    n_expert_groups: int = Field(default=1, ge=1)
    # Device-level balance loss a2 (DeepSeekMoE section 4.2, eq. 14-16; DeepSeek-V2: 0.05);
    # 0 disables it. Added to the layer's balance loss (the trainer's `balance_loss`).
    device_balance_loss_coef: float = Field(default=0.0, ge=0)
    # Group-limited (node-limited) routing of DeepSeek-V3 section 2.1.2: each token keeps the
    # topk_groups groups whose two best (bias-corrected) affinities sum highest, then picks its
    # top-K' experts inside them. Bounds each token's all-to-all fan-out. None = all experts.
    topk_groups: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> MoEConfig:
        if self.n_activated_experts > self.n_routed_experts:
            raise ValueError("n_activated_experts cannot exceed n_routed_experts")
        if self.n_routed_experts % self.n_expert_groups:
            raise ValueError("n_expert_groups must divide n_routed_experts")
        if self.topk_groups is not None:
            if self.topk_groups > self.n_expert_groups:
                raise ValueError("topk_groups cannot exceed n_expert_groups")
            if self.experts_per_group < 2:
                raise ValueError("group-limited routing scores a group by its top-2 experts: 2+ experts per group")
            if self.n_activated_experts > self.topk_groups * self.experts_per_group:
                raise ValueError("n_activated_experts cannot exceed the experts in topk_groups groups")
        return self

    @property
    def experts_per_group(self) -> int:
        return self.n_routed_experts // self.n_expert_groups

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
    # mha: multi-head (or grouped-query) attention with q/k/v projections of head_dim.
    # mla: DeepSeek-V2/V3 multi-head latent attention (arXiv 2405.04434 section 2.1): keys and
    # values are expanded from one RMS-normed latent of kv_lora_rank per token (the KV cache),
    # queries optionally from a latent of q_lora_rank; each query/key head is qk_nope_head_dim
    # position-free dims plus qk_rope_head_dim RoPE dims, the RoPE key shared by all heads.
    attention_type: Literal["mha", "mla"] = "mha"
    q_lora_rank: int | None = Field(default=None, ge=1, description="MLA; None: a full-rank q_proj")
    kv_lora_rank: int | None = Field(default=None, ge=1, description="MLA: the compressed KV width")
    qk_nope_head_dim: int | None = Field(default=None, ge=1, description="MLA")
    qk_rope_head_dim: int | None = Field(default=None, ge=2, description="MLA")
    v_head_dim: int | None = Field(default=None, ge=1, description="MLA")
    moe: MoEConfig

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.attention_type == "mla":
            self._check_mla()
        else:
            if self.head_dim is None and self.dim % self.n_heads:
                raise ValueError("dim must be divisible by n_heads (or set head_dim)")
            if self.n_heads % self.kv_heads:
                raise ValueError("n_heads must be a multiple of n_kv_heads")
        if self.rope_head_dim % 2:
            raise ValueError("rotary embeddings need an even head_dim (qk_rope_head_dim under MLA)")
        if self.moe.n_dense_layers > self.n_layers:
            raise ValueError("n_dense_layers cannot exceed n_layers")
        return self

    def _check_mla(self) -> None:
        widths = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
        missing = [name for name in widths if getattr(self, name) is None]
        if missing:
            raise ValueError(f"attention_type='mla' needs {', '.join(missing)}")
        # MLA's heads are not grouped and its projections have no bias (DeepSeek-V3 has none).
        if self.n_kv_heads is not None or self.head_dim is not None or self.qkv_bias:
            raise ValueError("attention_type='mla' takes no n_kv_heads, head_dim or qkv_bias")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def attn_head_dim(self) -> int:
        """Query/key head width (under MLA its position-free plus its RoPE part)."""
        if self.attention_type == "mla":
            return self.qk_nope_head_dim + self.qk_rope_head_dim
        return self.head_dim or self.dim // self.n_heads

    @property
    def value_head_dim(self) -> int:
        return self.v_head_dim if self.attention_type == "mla" else self.attn_head_dim

    @property
    def rope_head_dim(self) -> int:
        """Dims of each head that RoPE rotates: all of them, or MLA's decoupled part."""
        return self.qk_rope_head_dim if self.attention_type == "mla" else self.attn_head_dim

    @property
    def dense_dim(self) -> int:
        moe = self.moe
        return self.dense_ffn_dim or (moe.n_shared_experts + moe.n_activated_experts) * moe.expert_dim

    def is_moe_layer(self, layer_id: int) -> bool:
        return layer_id >= self.moe.n_dense_layers

    def build(self) -> Transformer:
        from training.model import Transformer  # torch: configs are validated without it (the service does)

        return Transformer(self)

    def hf_architecture(self) -> str:
        """The Hugging Face class this config exports to: DeepseekV3ForCausalLM for V3-style
        configs (sigmoid router, routing bias, ungated shared expert, MLA), else Qwen2MoeForCausalLM."""
        moe = self.moe
        v3_style = (
            moe.score_func == "sigmoid" or moe.bias_update_rate > 0 or self.attention_type == "mla"
            or (moe.n_shared_experts > 0 and not moe.shared_expert_gate) or moe.topk_groups is not None
        )  # fmt: skip
        return HF_DEEPSEEK_V3 if v3_style else HF_QWEN2_MOE

    def hf_export_problems(self, architecture: str | None = None) -> list[str]:
        """Why this config would not export exactly to `architecture` ([] if it does; default:
        `hf_architecture()`).

        Qwen2-MoE computes routed = sum_k softmax(x W_r^T)_k * SwiGLU_k(x) over all experts
        without bias in selection, always gates its single shared expert with sigmoid(x . w_g),
        and has q/k/v attention. DeepSeek-V3 routes with sigmoid scores (plus its correction bias,
        zero when the model has none, top-2-sum group scores, renormalisation and a route scale),
        always adds its shared experts ungated, and has MLA attention.
        """
        architecture = architecture or self.hf_architecture()
        if architecture == HF_QWEN2_MOE:
            return self._qwen2_moe_problems()
        if architecture == HF_DEEPSEEK_V3:
            return self._deepseek_v3_problems()
        raise ValueError(f"unknown export architecture {architecture!r}: {HF_QWEN2_MOE} or {HF_DEEPSEEK_V3}")

    def _qwen2_moe_problems(self) -> list[str]:
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
        if moe.topk_groups is not None:
            problems.append("Qwen2-MoE routes over all experts (topk_groups=None)")
        if self.attention_type != "mha":
            problems.append("Qwen2-MoE has q/k/v attention (attention_type='mha')")
        return problems

    def _deepseek_v3_problems(self) -> list[str]:
        moe, problems = self.moe, []
        if moe.score_func != "sigmoid":
            problems.append("DeepSeek-V3 routes with sigmoid scores (score_func='sigmoid')")
        if moe.n_shared_experts == 0:
            problems.append("DeepSeek-V3 always has a shared expert (n_shared_experts>=1)")
        elif moe.shared_expert_gate:
            problems.append("DeepSeek-V3 adds its shared experts ungated (shared_expert_gate=False)")
        if moe.n_routed_experts < 2:
            problems.append("DeepSeek-V3 scores expert groups by their top 2 (n_routed_experts>=2)")
        if self.attention_type != "mla":
            problems.append("DeepSeek-V3 has multi-head latent attention (attention_type='mla')")
        return problems


def attention_params(cfg: ModelConfig) -> int:
    """Parameters of one attention layer (MHA/GQA or MLA, as training.model builds it)."""
    d, heads = cfg.dim, cfg.n_heads
    if cfg.attention_type == "mla":
        qk, rope, latent = cfg.attn_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank
        q = d * heads * qk if cfg.q_lora_rank is None else (d + 1 + heads * qk) * cfg.q_lora_rank  # + latent norm
        kv = d * (latent + rope) + latent + latent * heads * (cfg.qk_nope_head_dim + cfg.v_head_dim)
        return q + kv + heads * cfg.v_head_dim * d
    q_out, kv_out = heads * cfg.attn_head_dim, cfg.kv_heads * cfg.attn_head_dim
    bias = q_out + 2 * kv_out if cfg.qkv_bias else 0
    return d * q_out + 2 * d * kv_out + q_out * d + bias


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Total and per-token active parameters, analytically (nothing is allocated).

    Active = everything a token touches: embedding row and output projection counted as full
    matrices (the usual convention), attention, norms, routers, shared experts and K' of the
    routed experts. The routing bias is a buffer, not a parameter.
    """
    d, moe = cfg.dim, cfg.moe
    attn = attention_params(cfg)
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


def tiny_v3(vocab_size: int) -> ModelConfig:
    """tiny's width with DeepSeek-V3's choices (arXiv 2412.19437 section 2), for tests and demos.

    Multi-head latent attention (query and KV latents, decoupled RoPE), a dense first layer,
    sigmoid affinities renormalised over the top-K', balancing by the routing bias alone (no
    balance loss, no z-loss), one ungated shared expert, and group-limited routing: 8 experts
    in 4 groups of 2, each token routed inside its best 2 groups. Exports to DeepseekV3ForCausalLM.
    """
    return ModelConfig(
        vocab_size=vocab_size, dim=64, n_layers=3, n_heads=4, max_seq_len=256,
        attention_type="mla", q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
        v_head_dim=16,
        moe=MoEConfig(
            n_routed_experts=8, n_activated_experts=2, n_shared_experts=1, expert_dim=32, n_dense_layers=1,
            score_func="sigmoid", normalize_topk=True, shared_expert_gate=False, balance_loss_coef=0.0,
            z_loss_coef=0.0, bias_update_rate=1e-3, n_expert_groups=4, topk_groups=2,
        ),
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


PRESETS = {"tiny": tiny, "tiny-v3": tiny_v3, "small": small, "moe-67b": moe_67b}
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
