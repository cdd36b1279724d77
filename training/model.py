"""Decoder-only transformer with DeepSeekMoE FFNs.

Pre-norm blocks: x += Attn(RMSNorm(x)); x += FFN(RMSNorm(x)), FFN a dense SwiGLU in the first
`n_dense_layers` and a `training.moe.MoE` after. Rotary embeddings use the rotate-half layout
and every attention module calls `attend`: causal by default or restricted to each packed
document when document ids are given, as a dense mask for SDPA or a FlexAttention block mask
(`Transformer.attention_kernel`). `forward(return_hidden=True)` leaves the output projection to
`chunked_lm_loss`, so the training step never holds the whole B x S x V logits.

Shape legend: B batch, S sequence, D model width, H query heads, G key/value heads, Dh head
width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from torch.utils.checkpoint import checkpoint

from training.config import ModelConfig
from training.moe import FeedForward, MoE

# ---------------------------------------------------------------------------------------------
# Rotary embeddings and attention
# ---------------------------------------------------------------------------------------------


def rope_tables(head_dim: int, max_seq_len: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos_SDh, sin_SDh for the rotate-half layout (frequencies repeated over both halves)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    freqs_SDh2 = torch.outer(torch.arange(max_seq_len, device=device, dtype=torch.float32), inv_freq)
    emb_SDh = torch.cat((freqs_SDh2, freqs_SDh2), dim=-1)
    return emb_SDh.cos(), emb_SDh.sin()


def apply_rope(x_BHSDh: torch.Tensor, cos_SDh: torch.Tensor, sin_SDh: torch.Tensor) -> torch.Tensor:
    x1, x2 = x_BHSDh.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x_BHSDh * cos_SDh + rotated * sin_SDh).to(x_BHSDh.dtype)


def document_causal_mask(doc_ids_BS: torch.Tensor) -> torch.Tensor:
    """mask_B1SS, True where query s may attend key s': s' <= s and both in the same document.

    NOTE: a dense B x S x S mask, and SDPA then skips its flash kernel on GPU; at long context
    use the block mask instead (`flex_document_mask`, TrainConfig `attention: flex`). RoPE needs no position reset: q.k depends only on
    the distance, and tokens never see across a boundary.
    """
    seq = doc_ids_BS.shape[1]
    causal_SS = torch.ones(seq, seq, dtype=torch.bool, device=doc_ids_BS.device).tril()
    same_doc_BSS = doc_ids_BS.unsqueeze(2) == doc_ids_BS.unsqueeze(1)
    return (same_doc_BSS & causal_SS).unsqueeze(1)


def flex_document_mask(doc_ids_BS: torch.Tensor) -> BlockMask:
    """The same rule as `document_causal_mask` as a FlexAttention block mask.

    NOTE: the mask keeps, per batch row and 128-query block, the list of 128-key blocks that are
    partly or fully visible: O(B (S/128)^2) ints instead of B x S x S bools, and the kernel skips
    the invisible blocks (most of them with short documents). Building it evaluates the rule on
    every (b, q, kv) once per forward, shared by all layers (eager, that is a transient
    B x S x S bool tensor, as large as the dense mask).
    """
    bsz, seq = doc_ids_BS.shape

    def same_document_causal(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (doc_ids_BS[b, q_idx] == doc_ids_BS[b, kv_idx])

    return create_block_mask(same_document_causal, bsz, None, seq, seq, device=doc_ids_BS.device)


# What attention modules take as their mask: None = plain causal, a dense mask_B1SS (SDPA) or
# a flex BlockMask. Built once per forward by `attention_mask`.
AttentionMask = torch.Tensor | BlockMask | None
ATTENTION_KERNELS = ("sdpa", "flex")


def attention_mask(doc_ids_BS: torch.Tensor | None, kernel: str) -> AttentionMask:
    """The mask for `attend`: None without document ids (causal: SDPA's flash kernel on GPU),
    else the dense mask ("sdpa", B x S x S bools) or the block mask ("flex")."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; choose one of {ATTENTION_KERNELS}")
    if doc_ids_BS is None:
        return None
    return flex_document_mask(doc_ids_BS) if kernel == "flex" else document_causal_mask(doc_ids_BS)


def attend(
    q_BHSDh: torch.Tensor,
    k_BGSDh: torch.Tensor,
    v_BGSDv: torch.Tensor,
    mask: AttentionMask,
    dropout_p: float,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v, out_BHSDv; G < H key/value heads are shared (GQA);
    scale defaults to 1/sqrt(Dh).

    Every attention module calls this, so the kernel choice lives in one place: SDPA with
    is_causal (mask None) or a dense mask, or FlexAttention with a block mask. FlexAttention
    has no dropout; eager it runs an unfused reference (B x H x S x S scores, like SDPA's math
    path): it is fast under torch.compile (`compile: true` compiles each block, this call
    included). NOTE: torch 2.13 has no CPU backward for flex_attention: on CPU, flex evaluates
    but does not train.
    """
    gqa = k_BGSDh.shape[1] != q_BHSDh.shape[1]
    if isinstance(mask, BlockMask):
        if dropout_p > 0:
            raise ValueError("attention: flex has no dropout; set attn_dropout to 0 or use sdpa")
        return flex_attention(q_BHSDh, k_BGSDh, v_BGSDv, block_mask=mask, scale=scale, enable_gqa=gqa)
    return F.scaled_dot_product_attention(
        q_BHSDh, k_BGSDh, v_BGSDv, attn_mask=mask, is_causal=mask is None, dropout_p=dropout_p, scale=scale,
        enable_gqa=gqa,
    )


def doc_ids_from_starts(starts_BS: torch.Tensor) -> torch.Tensor:
    """Document ids from a boolean 'a document starts here' map (e.g. BOS positions)."""
    return torch.cumsum(starts_BS.long(), dim=1)


class KVCache:
    """What every layer's attention keeps of a batch being decoded (`training.generate`), in
    `capacity` preallocated slots per row (T below), shared by all layers.

    Each cached forward appends S slots to every row: `append_slots(valid_BS)` first says which
    hold real tokens (False: left padding, or the filler a finished row is fed) and gives each
    real token the next position of its row, so ragged rows get the RoPE angles and keys they
    would get alone. A query sees the real keys at or before its slot; a padding query sees only
    itself (SDPA gives NaN for a row with nothing to see, and NaN times a zero weight would reach
    later queries through the values).

    What a layer keeps is its attention's choice (`extend`): Attention its RoPE'd keys and values
    (B x G x T x Dh each), MLAttention the normed latent and the shared RoPE'd key (B x 1 x T x L
    and B x 1 x T x R, DeepSeek-V2's cache).
    """

    def __init__(self, batch: int, capacity: int, device: torch.device | str | None = None):
        self.capacity = capacity
        self.valid_BT = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.seen_B = torch.zeros(batch, dtype=torch.long, device=device)  # real tokens per row so far
        self.length = 0  # slots in use, this forward's included
        self.step = 0  # slots this forward appends
        self.positions_BS: torch.Tensor | None = None  # this forward's positions (0 at padding)
        self._layers: dict[str, list[torch.Tensor]] = {}

    def append_slots(self, valid_BS: torch.Tensor) -> torch.Tensor:
        """Claim the next S slots of every row for the coming forward; returns their positions."""
        step = valid_BS.shape[1]
        if self.length + step > self.capacity:
            raise ValueError(f"KV cache full: {self.length} + {step} slots exceed its capacity {self.capacity}")
        valid_BS = valid_BS.to(self.valid_BT.device, torch.bool)
        counts_BS = valid_BS.long().cumsum(dim=1)
        self.positions_BS = torch.where(valid_BS, self.seen_B[:, None] + counts_BS - 1, 0)
        self.valid_BT[:, self.length : self.length + step] = valid_BS
        self.seen_B += counts_BS[:, -1]
        self.length, self.step = self.length + step, step
        return self.positions_BS

    def attention_mask(self) -> torch.Tensor:
        """mask_B1SK (K = length): query slot i sees real key slots j <= i, and itself."""
        keys_K = torch.arange(self.length, device=self.valid_BT.device)
        queries_S = keys_K[self.length - self.step :]
        causal_SK = keys_K[None, :] <= queries_S[:, None]
        itself_SK = keys_K[None, :] == queries_S[:, None]
        return ((self.valid_BT[:, None, : self.length] & causal_SK) | itself_SK).unsqueeze(1)

    def extend(self, layer_id: str, *new_BGSD: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Write layer `layer_id`'s tensors for this forward's slots (each B x G x S x D) and
        return the layer's whole cache so far (each B x G x length x D)."""
        if layer_id not in self._layers:
            self._layers[layer_id] = [t.new_zeros(t.shape[0], t.shape[1], self.capacity, t.shape[3]) for t in new_BGSD]
        buffers = self._layers[layer_id]
        for buffer, new in zip(buffers, new_BGSD, strict=True):
            buffer[:, :, self.length - self.step : self.length] = new
        return tuple(buffer[:, :, : self.length] for buffer in buffers)

    def layer(self, layer_id: str) -> LayerCache:
        return LayerCache(self, layer_id)


@dataclass(frozen=True)
class LayerCache:
    """One layer's view of a KVCache, what an attention module's `cache` argument takes."""

    cache: KVCache
    layer_id: str

    def extend(self, *new_BGSD: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.cache.extend(self.layer_id, *new_BGSD)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.attn_head_dim
        self.dropout = cfg.attn_dropout
        self.q_proj = nn.Linear(cfg.dim, self.n_heads * self.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.dim, bias=False)

    def forward(
        self,
        x_BSD: torch.Tensor,
        cos_SDh: torch.Tensor,
        sin_SDh: torch.Tensor,
        mask_B1SS: AttentionMask,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """cache: decoding (`KVCache`); then cos/sin are per token (B x 1 x S x Dh) and the mask
        B x 1 x S x K over the cached keys."""
        bsz, seq, _ = x_BSD.shape
        # -1 heads: under tensor parallelism q/k/v are column-sharded and this rank holds H/tp
        # query and G/tp key/value heads (the GQA ratio is the same on every rank).
        q_BHSDh = self.q_proj(x_BSD).view(bsz, seq, -1, self.head_dim).transpose(1, 2)
        k_BGSDh = self.k_proj(x_BSD).view(bsz, seq, -1, self.head_dim).transpose(1, 2)
        v_BGSDh = self.v_proj(x_BSD).view(bsz, seq, -1, self.head_dim).transpose(1, 2)
        q_BHSDh, k_BGSDh = apply_rope(q_BHSDh, cos_SDh, sin_SDh), apply_rope(k_BGSDh, cos_SDh, sin_SDh)
        if cache is not None:
            k_BGSDh, v_BGSDh = cache.extend(k_BGSDh, v_BGSDh)  # S -> K: every key so far
        out_BHSDh = attend(q_BHSDh, k_BGSDh, v_BGSDh, mask_B1SS, self.dropout if self.training else 0.0)
        return self.o_proj(out_BHSDh.transpose(1, 2).reshape(bsz, seq, -1))


# DeepSeek normalises the MLA latents with RMSNorm's default eps whatever the model's norm_eps
# (its reference code and transformers' DeepseekV3Attention alike).
MLA_LATENT_NORM_EPS = 1e-6


class MLAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2 arXiv 2405.04434 section 2.1, kept by V3):

        q = RMSNorm(x W_qa) W_qb  (or x W_q)            q_h = [q_nope_h | RoPE(q_rope_h)]
        [c_kv | k_rope] = x W_kva                        k_h = [k_nope_h | RoPE(k_rope)]
        [k_nope_h | v_h] = RMSNorm(c_kv) W_kvb           softmax scale 1/sqrt(Dn + R)

    Only c_kv (L) and the one RoPE key (R) shared by all heads need caching at inference.
    Module names are transformers' DeepseekV3Attention ones. RoPE rotates halves of the R dims
    (rotate-half); the export permutes them to DeepSeek's interleaved-pair layout.
    Shapes: L kv latent, Dn position-free (nope) dims, R rope dims, Dv value dims.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dropout = cfg.attn_dropout
        self.nope_dim, self.rope_dim, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.kv_lora_rank = cfg.kv_lora_rank
        q_out = cfg.n_heads * cfg.attn_head_dim
        self.q_proj = nn.Linear(cfg.dim, q_out, bias=False) if cfg.q_lora_rank is None else None
        self.q_a_proj = self.q_a_layernorm = self.q_b_proj = None
        if cfg.q_lora_rank is not None:
            self.q_a_proj = nn.Linear(cfg.dim, cfg.q_lora_rank, bias=False)
            self.q_a_layernorm = nn.RMSNorm(cfg.q_lora_rank, eps=MLA_LATENT_NORM_EPS)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, q_out, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(cfg.dim, cfg.kv_lora_rank + self.rope_dim, bias=False)
        self.kv_a_layernorm = nn.RMSNorm(cfg.kv_lora_rank, eps=MLA_LATENT_NORM_EPS)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, cfg.n_heads * (self.nope_dim + self.v_dim), bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * self.v_dim, cfg.dim, bias=False)

    def queries(self, x_BSD: torch.Tensor) -> torch.Tensor:
        if self.q_proj is not None:
            return self.q_proj(x_BSD)
        return self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x_BSD)))

    def forward(
        self,
        x_BSD: torch.Tensor,
        cos_SR: torch.Tensor,
        sin_SR: torch.Tensor,
        mask_B1SS: AttentionMask,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        if cache is not None:
            return self.forward_cached(x_BSD, cos_SR, sin_SR, mask_B1SS, cache)
        bsz, seq, _ = x_BSD.shape
        # -1 heads: q_proj/q_b_proj and kv_b_proj split by head under tensor parallelism (the
        # latent projections stay whole), as transformers' DeepseekV3 TP plan does.
        q_BHSDh = self.queries(x_BSD).view(bsz, seq, -1, self.nope_dim + self.rope_dim).transpose(1, 2)
        q_nope_BHSDn, q_rope_BHSR = q_BHSDh.split([self.nope_dim, self.rope_dim], dim=-1)
        latent_BSL, k_rope_BSR = self.kv_a_proj_with_mqa(x_BSD).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        kv_BSHDnv = self.kv_b_proj(self.kv_a_layernorm(latent_BSL)).view(bsz, seq, -1, self.nope_dim + self.v_dim)
        k_nope_BHSDn, v_BHSDv = kv_BSHDnv.transpose(1, 2).split([self.nope_dim, self.v_dim], dim=-1)
        k_rope_B1SR = apply_rope(k_rope_BSR.unsqueeze(1), cos_SR, sin_SR)
        q_BHSDh = torch.cat((q_nope_BHSDn, apply_rope(q_rope_BHSR, cos_SR, sin_SR)), dim=-1)
        k_BHSDh = torch.cat((k_nope_BHSDn, k_rope_B1SR.expand(-1, k_nope_BHSDn.shape[1], -1, -1)), dim=-1)
        out_BHSDv = attend(q_BHSDh, k_BHSDh, v_BHSDv, mask_B1SS, self.dropout if self.training else 0.0)
        return self.o_proj(out_BHSDv.transpose(1, 2).reshape(bsz, seq, -1))

    def forward_cached(
        self, x_BSD: torch.Tensor, cos_B1SR: torch.Tensor, sin_B1SR: torch.Tensor, mask_B1SK: torch.Tensor,
        cache: LayerCache,
    ) -> torch.Tensor:  # fmt: skip
        """Decoding: the cache keeps only c = RMSNorm(c_kv) (L) and RoPE(k_rope) (R) per token,
        and W_kvb is absorbed into the query and the output (DeepSeek-V2 section 2.1.2):

            q_h . k_h = (q_nope_h W_UK_h) . c + q_rope_h . k_rope      out_h = (attn_h c) W_UV_h^T

        so all query heads share one key head (width L + R) and one value head (width L), the
        cached latents are never expanded, and the scale stays 1/sqrt(Dn + R). NOTE: equal to
        `forward` up to fp rounding (the products are reassociated); a decoded token costs
        O(K (L + R)) per head instead of re-expanding all K cached latents through W_kvb.
        """
        bsz, seq, _ = x_BSD.shape
        q_BHSDh = self.queries(x_BSD).view(bsz, seq, -1, self.nope_dim + self.rope_dim).transpose(1, 2)
        q_nope_BHSDn, q_rope_BHSR = q_BHSDh.split([self.nope_dim, self.rope_dim], dim=-1)
        latent_BSL, k_rope_BSR = self.kv_a_proj_with_mqa(x_BSD).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        latent_B1SL = self.kv_a_layernorm(latent_BSL).unsqueeze(1)
        k_rope_B1SR = apply_rope(k_rope_BSR.unsqueeze(1), cos_B1SR, sin_B1SR)
        latent_B1KL, k_rope_B1KR = cache.extend(latent_B1SL, k_rope_B1SR)
        w_kvb_HDnvL = self.kv_b_proj.weight.view(-1, self.nope_dim + self.v_dim, self.kv_lora_rank)
        w_uk_HDnL, w_uv_HDvL = w_kvb_HDnvL.split([self.nope_dim, self.v_dim], dim=1)
        q_latent_BHSL = torch.einsum("bhsn,hnl->bhsl", q_nope_BHSDn, w_uk_HDnL)
        q_BHSLR = torch.cat((q_latent_BHSL, apply_rope(q_rope_BHSR, cos_B1SR, sin_B1SR)), dim=-1)
        k_B1KLR = torch.cat((latent_B1KL, k_rope_B1KR), dim=-1)
        scale = (self.nope_dim + self.rope_dim) ** -0.5
        out_BHSL = attend(q_BHSLR, k_B1KLR, latent_B1KL, mask_B1SK, 0.0, scale=scale)
        out_BHSDv = torch.einsum("bhsl,hvl->bhsv", out_BHSL, w_uv_HDvL)
        return self.o_proj(out_BHSDv.transpose(1, 2).reshape(bsz, seq, -1))


# ---------------------------------------------------------------------------------------------
# Blocks and the model
# ---------------------------------------------------------------------------------------------


class TransformerBlock(nn.Module):
    def __init__(self, layer_id: int, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = MLAttention(cfg) if cfg.attention_type == "mla" else Attention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.is_moe = cfg.is_moe_layer(layer_id)
        self.ffn: nn.Module = MoE(cfg.dim, cfg.moe) if self.is_moe else FeedForward(cfg.dim, cfg.dense_dim)

    def forward(
        self,
        x_BSD: torch.Tensor,
        cos_SDh: torch.Tensor,
        sin_SDh: torch.Tensor,
        mask_B1SS: AttentionMask,
        cache: LayerCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Returns the block output and this layer's (balance_loss, z_loss), None when dense."""
        # cache by keyword: tensor parallelism's input plan covers the four positional tensors
        x_BSD = x_BSD + self.attn(self.attn_norm(x_BSD), cos_SDh, sin_SDh, mask_B1SS, cache=cache)
        if not self.is_moe:
            return x_BSD + self.ffn(self.ffn_norm(x_BSD)), None, None
        out_BSD, aux = self.ffn(self.ffn_norm(x_BSD))
        return x_BSD + out_BSD, aux.balance_loss, aux.z_loss


@dataclass
class TransformerOutput:
    logits_BSV: torch.Tensor | None  # None under forward(return_hidden=True)
    balance_loss: torch.Tensor  # summed over MoE layers, coefficient applied
    z_loss: torch.Tensor  # summed over MoE layers, coefficient applied
    hidden_BSD: torch.Tensor | None = None  # the final norm's output, under return_hidden=True

    @property
    def aux_loss(self) -> torch.Tensor:
        return self.balance_loss + self.z_loss


class Transformer(nn.Module):
    # The document-mask kernel, "sdpa" or "flex" (`attention_mask`): how attention is computed,
    # not what, so not part of ModelConfig; the trainer sets it from TrainConfig.attention.
    attention_kernel: str = "sdpa"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        # Keyed by layer id ("0".."n-1"): a pipeline stage keeps its own layers under their
        # original names (training.pipeline), so checkpoints load across layouts.
        self.layers = nn.ModuleDict({str(i): TransformerBlock(i, cfg) for i in range(cfg.n_layers)})
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            # NOTE: under FSDP2 keep both uses in one fully_shard unit (the root), or the
            # shared parameter is all-gathered twice and its gradient split.
            self.output.weight = self.tok_embeddings.weight
        # Rebuilt by init_weights (non-persistent: derived from the config, so it survives
        # meta-device construction followed by to_empty + init_weights).
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, buffer_device: torch.device | None = None) -> None:
        """Truncated normal(0, init_std) for every matrix (DeepSeek: 0.006); ones for norms."""
        std = self.cfg.init_std
        device = buffer_device or self.tok_embeddings.weight.device
        self.rope_cos, self.rope_sin = rope_tables(
            self.cfg.rope_head_dim, self.cfg.max_seq_len, self.cfg.rope_theta, device=device
        )
        for module in self.modules():
            if isinstance(module, MoE):
                module.init_weights(std)
            elif isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, std=std, a=-3 * std, b=3 * std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)

    def forward(
        self,
        tokens_BS: torch.Tensor,
        doc_ids_BS: torch.Tensor | None = None,
        return_hidden: bool = False,
        cache: KVCache | None = None,
    ) -> TransformerOutput:
        """tokens_BS: int64 ids. doc_ids_BS: optional packed-document ids; when given, attention
        stays inside each document (default: plain causal attention). return_hidden: skip the
        output projection and return the final hidden states, for `chunked_lm_loss`.
        cache: decode (`training.generate`): tokens_BS are the next S tokens of every row, whose
        slots `cache.append_slots` has claimed. Through forward, not a side method, so FSDP's
        and compile's hooks on the root run as in training."""
        if cache is not None and doc_ids_BS is not None:
            raise ValueError("a cached forward takes no document ids: the cache's rows are the documents")
        h_BSD, balance, z = self.run_layers(self.tok_embeddings(tokens_BS), doc_ids_BS, cache=cache)
        h_BSD = self.norm(h_BSD)
        if return_hidden:
            return TransformerOutput(None, balance, z, hidden_BSD=h_BSD)
        return TransformerOutput(self.output(h_BSD), balance, z)

    def run_layers(
        self,
        h_BSD: torch.Tensor,
        doc_ids_BS: torch.Tensor | None,
        layer_ids: list[str] | None = None,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The blocks `layer_ids` (default: every block this module holds, in order) on h_BSD;
        returns h_BSD and their balance and z losses. A pipeline stage runs its own through this.
        With a cache: RoPE at each token's own position and the cache's mask (`KVCache`)."""
        seq = h_BSD.shape[1]
        if cache is None:
            if seq > self.cfg.max_seq_len:
                raise ValueError(f"sequence length {seq} exceeds max_seq_len {self.cfg.max_seq_len}")
            cos_SDh, sin_SDh = self.rope_cos[:seq], self.rope_sin[:seq]
            mask_B1SS = attention_mask(doc_ids_BS, self.attention_kernel)
        else:
            if cache.capacity > self.cfg.max_seq_len or cache.step != seq:
                raise ValueError(f"the KV cache must hold at most max_seq_len {self.cfg.max_seq_len} slots "
                                 f"(has {cache.capacity}) and have claimed this forward's {seq} (claimed {cache.step})")
            positions_BS = cache.positions_BS
            cos_SDh, sin_SDh = self.rope_cos[positions_BS].unsqueeze(1), self.rope_sin[positions_BS].unsqueeze(1)
            mask_B1SS = cache.attention_mask()

        balance = z = h_BSD.new_zeros((), dtype=torch.float32)
        for layer_id in layer_ids if layer_ids is not None else list(self.layers):
            block = self.layers[layer_id]
            if cache is None:  # the training call, unchanged (activation checkpointing wraps it)
                h_BSD, layer_balance, layer_z = block(h_BSD, cos_SDh, sin_SDh, mask_B1SS)
            else:
                h_BSD, layer_balance, layer_z = block(h_BSD, cos_SDh, sin_SDh, mask_B1SS, cache.layer(layer_id))
            if layer_balance is not None:
                balance, z = balance + layer_balance, z + layer_z
        return h_BSD, balance, z


def causal_lm_loss(logits_BSV: torch.Tensor, targets_BS: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross-entropy; targets are the inputs shifted by one (done by the loader).

    NOTE: the fp32 upcast materialises B x S x V floats: 2 GiB for 4k tokens of a 128k vocab;
    chunk the sequence for large vocabularies.
    """
    return F.cross_entropy(logits_BSV.flatten(0, 1).float(), targets_BS.flatten(), ignore_index=ignore_index)


def _chunk_loss_sum(output: nn.Module, h_ND: torch.Tensor, targets_N: torch.Tensor, ignore_index: int) -> torch.Tensor:
    return F.cross_entropy(output(h_ND).float(), targets_N, ignore_index=ignore_index, reduction="sum")


def chunked_lm_loss(
    hidden_BSD: torch.Tensor, output: nn.Module, targets_BS: torch.Tensor, chunk_tokens: int, ignore_index: int = -100
) -> torch.Tensor:
    """`causal_lm_loss(output(hidden_BSD), targets_BS)`, projected and upcast `chunk_tokens`
    tokens at a time: the B x S x V logits never exist at once.

    Each chunk is activation-checkpointed: backward keeps only its N x D hidden rows and
    recomputes its N x V logits (one extra output matmul per chunk), so one chunk's fp32 slab
    is live at a time. The mean divides the sum over all chunks by the counted targets, as
    F.cross_entropy does; only the summation order differs (fp32 rounding).
    """
    h_ND, targets_N = hidden_BSD.flatten(0, 1), targets_BS.flatten()
    total = hidden_BSD.new_zeros((), dtype=torch.float32)
    for start in range(0, targets_N.numel(), chunk_tokens):
        rows = slice(start, start + chunk_tokens)
        total = total + checkpoint(_chunk_loss_sum, output, h_ND[rows], targets_N[rows], ignore_index, use_reentrant=False)
    return total / (targets_N != ignore_index).sum()
