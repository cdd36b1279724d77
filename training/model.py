"""Decoder-only transformer with DeepSeekMoE FFNs.

Pre-norm blocks: x += Attn(RMSNorm(x)); x += FFN(RMSNorm(x)), FFN a dense SwiGLU in the first
`n_dense_layers` and a `training.moe.MoE` after. Rotary embeddings use the rotate-half layout
and attention is `F.scaled_dot_product_attention`, causal by default or restricted to each
packed document when document ids are given.

Shape legend: B batch, S sequence, D model width, H query heads, G key/value heads, Dh head
width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

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
    use flex_attention's block mask instead. RoPE needs no position reset: q.k depends only on
    the distance, and tokens never see across a boundary.
    """
    seq = doc_ids_BS.shape[1]
    causal_SS = torch.ones(seq, seq, dtype=torch.bool, device=doc_ids_BS.device).tril()
    same_doc_BSS = doc_ids_BS.unsqueeze(2) == doc_ids_BS.unsqueeze(1)
    return (same_doc_BSS & causal_SS).unsqueeze(1)


def doc_ids_from_starts(starts_BS: torch.Tensor) -> torch.Tensor:
    """Document ids from a boolean 'a document starts here' map (e.g. BOS positions)."""
    return torch.cumsum(starts_BS.long(), dim=1)


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
        self, x_BSD: torch.Tensor, cos_SDh: torch.Tensor, sin_SDh: torch.Tensor, mask_B1SS: torch.Tensor | None
    ) -> torch.Tensor:
        bsz, seq, _ = x_BSD.shape
        q_BHSDh = self.q_proj(x_BSD).view(bsz, seq, self.n_heads, self.head_dim).transpose(1, 2)
        k_BGSDh = self.k_proj(x_BSD).view(bsz, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v_BGSDh = self.v_proj(x_BSD).view(bsz, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q_BHSDh, k_BGSDh = apply_rope(q_BHSDh, cos_SDh, sin_SDh), apply_rope(k_BGSDh, cos_SDh, sin_SDh)
        out_BHSDh = F.scaled_dot_product_attention(
            q_BHSDh, k_BGSDh, v_BGSDh,
            attn_mask=mask_B1SS,
            is_causal=mask_B1SS is None,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )  # fmt: skip
        return self.o_proj(out_BHSDh.transpose(1, 2).reshape(bsz, seq, -1))


# ---------------------------------------------------------------------------------------------
# Blocks and the model
# ---------------------------------------------------------------------------------------------


class TransformerBlock(nn.Module):
    def __init__(self, layer_id: int, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.is_moe = cfg.is_moe_layer(layer_id)
        self.ffn: nn.Module = MoE(cfg.dim, cfg.moe) if self.is_moe else FeedForward(cfg.dim, cfg.dense_dim)

    def forward(
        self, x_BSD: torch.Tensor, cos_SDh: torch.Tensor, sin_SDh: torch.Tensor, mask_B1SS: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Returns the block output and this layer's (balance_loss, z_loss), None when dense."""
        x_BSD = x_BSD + self.attn(self.attn_norm(x_BSD), cos_SDh, sin_SDh, mask_B1SS)
        if not self.is_moe:
            return x_BSD + self.ffn(self.ffn_norm(x_BSD)), None, None
        out_BSD, aux = self.ffn(self.ffn_norm(x_BSD))
        return x_BSD + out_BSD, aux.balance_loss, aux.z_loss


@dataclass
class TransformerOutput:
    logits_BSV: torch.Tensor
    balance_loss: torch.Tensor  # summed over MoE layers, coefficient applied
    z_loss: torch.Tensor  # summed over MoE layers, coefficient applied

    @property
    def aux_loss(self) -> torch.Tensor:
        return self.balance_loss + self.z_loss


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(TransformerBlock(i, cfg) for i in range(cfg.n_layers))
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
            self.cfg.attn_head_dim, self.cfg.max_seq_len, self.cfg.rope_theta, device=device
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

    def forward(self, tokens_BS: torch.Tensor, doc_ids_BS: torch.Tensor | None = None) -> TransformerOutput:
        """tokens_BS: int64 ids. doc_ids_BS: optional packed-document ids; when given, attention
        stays inside each document (default: plain causal attention)."""
        seq = tokens_BS.shape[1]
        if seq > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {seq} exceeds max_seq_len {self.cfg.max_seq_len}")
        cos_SDh, sin_SDh = self.rope_cos[:seq], self.rope_sin[:seq]
        mask_B1SS = document_causal_mask(doc_ids_BS) if doc_ids_BS is not None else None

        h_BSD = self.tok_embeddings(tokens_BS)
        balance = z = h_BSD.new_zeros((), dtype=torch.float32)
        for layer in self.layers:
            h_BSD, layer_balance, layer_z = layer(h_BSD, cos_SDh, sin_SDh, mask_B1SS)
            if layer_balance is not None:
                balance, z = balance + layer_balance, z + layer_z
        return TransformerOutput(self.output(self.norm(h_BSD)), balance, z)


def causal_lm_loss(logits_BSV: torch.Tensor, targets_BS: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross-entropy; targets are the inputs shifted by one (done by the loader).

    NOTE: the fp32 upcast materialises B x S x V floats: 2 GiB for 4k tokens of a 128k vocab;
    chunk the sequence for large vocabularies.
    """
    return F.cross_entropy(logits_BSV.flatten(0, 1).float(), targets_BS.flatten(), ignore_index=ignore_index)
