"""Tensor parallelism of the transformer's blocks (Megatron-style, as torchtitan plans it).

    apply_tensor_parallel(model, meshes.tp)    # before FSDP (training.parallel.parallelize)

Heads and FFN widths are split over the tp ranks of a node: the projections into heads and the
FFN's gate/up are column-sharded, o and down row-sharded, so each block costs one all-gather
and one reduce-scatter of the sequence in forward (and the same in backward). Norms run
sequence-parallel on the residual stream, a Shard(1) DTensor between blocks. The routed experts
are never tp-sharded (training.parallel's expert parallelism holds them); the MoE's input is
gathered so every tp rank routes the full sequence. Embeddings, the final norm and the output
head stay FSDP-only.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from training.moe import MoE


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's blocks in order (a ModuleList, or a ModuleDict keyed by layer id)."""
    layers = model.layers
    return list(layers.values()) if isinstance(layers, nn.ModuleDict) else list(layers)


def chunk_ends(model: nn.Module) -> list[nn.Module]:
    """Blocks whose successor this module does not hold: the last block, and under a pipeline
    each stage chunk's last (an interleaved schedule gives a rank several chunks)."""
    layers = model.layers
    named = dict(layers.items()) if isinstance(layers, nn.ModuleDict) else {str(i): b for i, b in enumerate(layers)}
    return [block for layer_id, block in named.items() if str(int(layer_id) + 1) not in named]


class _SumGradOverTP(torch.autograd.Function):
    """Identity forward; backward all-reduces (sums) the gradient of the last `width` features
    over the tp group, and leaves the others (already whole on every rank) alone."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, width: int, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.width, ctx.group = width, group
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        partial = grad[..., -ctx.width:].contiguous()
        dist.all_reduce(partial, group=ctx.group)
        return torch.cat((grad[..., : -ctx.width], partial), dim=-1), None, None


def sum_rope_key_grad(attn: nn.Module, tp_mesh: DeviceMesh) -> None:
    """MLA under tp: each rank's heads use the one RoPE key (shared by all heads), so its
    gradient is a partial sum over the rank's heads; sum it over tp where it leaves
    kv_a_proj_with_mqa (the latent part's gradient is already whole: kv_b_proj all-reduces)."""
    group, width = tp_mesh.get_group(), attn.rope_dim
    attn.kv_a_proj_with_mqa.register_forward_hook(lambda _m, _inp, y: _SumGradOverTP.apply(y, width, group))


def tp_attention_plan(attn: nn.Module) -> dict[str, object]:
    """Heads split over tp: the projections into heads column-sharded, o_proj row-sharded.

    MLA (`model.MLAttention`): as transformers' DeepseekV3 plan, the latent projections and
    their norms stay whole (computed on the gathered input by every tp rank, so their gradients
    are the same on each), q_proj or q_b_proj and kv_b_proj split by head; the shared RoPE key's
    gradient is summed over tp (`sum_rope_key_grad`).
    """
    seq, gathered = Shard(1), (Replicate(), None, None, None)
    out = {"attn.o_proj": RowwiseParallel(output_layouts=seq, use_local_output=False)}
    if not hasattr(attn, "kv_b_proj"):
        heads = {f"attn.{name}": ColwiseParallel() for name in ("q_proj", "k_proj", "v_proj")}
        return {"attn": PrepareModuleInput(input_layouts=(seq, None, None, None), desired_input_layouts=gathered),
                **heads, **out}  # fmt: skip
    query = "attn.q_proj" if attn.q_proj is not None else "attn.q_b_proj"
    return {"attn": PrepareModuleInput(input_layouts=(seq, None, None, None), desired_input_layouts=gathered,
                                       use_local_output=True),
            query: ColwiseParallel(), "attn.kv_b_proj": ColwiseParallel(), **out}  # fmt: skip


def tp_block_plan(block: nn.Module) -> dict[str, object]:
    """torchtitan's Llama plan for one block, plus the MoE's shared expert.

    The residual stream is sequence-sharded (Shard(1)); norms run on it sequence-parallel;
    attention and the FFN all-gather their input and reduce-scatter their output back.
    """
    seq = Shard(1)
    plan: dict[str, object] = {"attn_norm": SequenceParallel(), **tp_attention_plan(block.attn),
                               "ffn_norm": SequenceParallel()}  # fmt: skip
    if isinstance(block.ffn, MoE):
        # Every tp rank routes the whole sequence (exact router losses) on plain tensors; the
        # shared expert is tensor-parallel between a replicated input and a replicated output.
        plan["ffn"] = PrepareModuleInput(input_layouts=(seq,), desired_input_layouts=(Replicate(),),
                                         use_local_output=True)
        if block.ffn.shared_experts is not None:
            plan["ffn.shared_experts.gate_proj"] = ColwiseParallel()
            plan["ffn.shared_experts.up_proj"] = ColwiseParallel()
            plan["ffn.shared_experts.down_proj"] = RowwiseParallel(output_layouts=Replicate())
    else:
        plan["ffn"] = PrepareModuleInput(input_layouts=(seq,), desired_input_layouts=(Replicate(),))
        plan["ffn.gate_proj"] = ColwiseParallel()
        plan["ffn.up_proj"] = ColwiseParallel()
        plan["ffn.down_proj"] = RowwiseParallel(output_layouts=seq, use_local_output=False)
    return plan


def apply_tensor_parallel(model: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Tensor parallelism over `tp_mesh` (in place). Heads and FFN widths must divide by tp."""
    seq = Shard(1)
    blocks = transformer_blocks(model)
    for block in blocks:
        parallelize_module(block, tp_mesh, tp_block_plan(block))
        if hasattr(block.attn, "kv_a_proj_with_mqa"):
            sum_rope_key_grad(block.attn, tp_mesh)
        if isinstance(block.ffn, MoE):  # the MoE's output (out, aux): out back to sequence shards
            parallelize_module(block.ffn, tp_mesh, PrepareModuleOutput(output_layouts=(Replicate(), None),
                               desired_output_layouts=(seq, None), use_local_output=False))  # fmt: skip
        # A plain (replicated) input, the embeddings' output or a pipeline stage's, is cut to this
        # rank's tokens (no communication); a sharded DTensor from the previous block passes as is.
        parallelize_module(block, tp_mesh, PrepareModuleInput(
            input_layouts=(Replicate(), None, None, None), desired_input_layouts=(seq, None, None, None)))  # fmt: skip
    # Embeddings, the final norm and the output head stay FSDP-only: the last block of a run of
    # consecutive blocks gathers the sequence back into a plain tensor (one all-gather per forward
    # and pipeline stage), which the final norm or the next pipeline stage takes as is.
    for block in chunk_ends(model):
        parallelize_module(block, tp_mesh, PrepareModuleOutput(output_layouts=(seq, None, None),
                           desired_output_layouts=(Replicate(), None, None), use_local_output=True))  # fmt: skip


def check_tensor_parallel(model_cfg, tp: int, seq_len: int) -> None:
    """Raise ValueError when the model or the sequence does not split over tp ranks."""
    moe = model_cfg.moe
    widths = {"n_heads": model_cfg.n_heads, "n_kv_heads": model_cfg.kv_heads, "dense FFN width": model_cfg.dense_dim,
              "shared expert width": moe.shared_dim or tp, "seq_len": seq_len}  # fmt: skip
    if model_cfg.attention_type == "mla":  # no grouped heads: kv_b_proj has n_heads of them
        widths.pop("n_kv_heads")
    bad = [f"{name} {value}" for name, value in widths.items() if value % tp]
    if bad:
        raise ValueError(f"tp {tp} must divide {', '.join(bad)}")
