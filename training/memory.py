"""Memory and speed switches for the transformer blocks: activation checkpointing, torch.compile,
bf16 autocast. Each changes how the model computes, not what (equal results, tested on CPU).

    apply_activation_checkpointing(model, "selective")   # before compile and FSDP, as
    apply_compile(model)                                 # torchtitan's parallelize orders them
    parallelize(model, meshes)
    with autocast(device, torch.bfloat16):               # a single process without FSDP
        loss = ...

Both apply_* work per block (`model.layers`) and keep every parameter name: the block's forward
is replaced in place (no `_checkpoint_wrapped_module.` or `_orig_mod.` in the FQNs), so DCP
checkpoints load across settings.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch
import torch._dynamo
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

ACTIVATION_CHECKPOINTING = ("none", "selective", "full")

_aten = torch.ops.aten
# Selective AC keeps these ops' outputs and recomputes everything else (norms, RoPE, SiLU and
# the gating products, routing, permutations): the matmuls are the compute, the element-wise
# rest is most of the activation memory but cheap to redo (torchtitan's op-level policy, without
# its every-other-mm rule). Attention outputs are kept so the kernel never reruns.
SAVED_OPS = {
    _aten.mm.default,
    _aten.addmm.default,
    _aten.bmm.default,
    _aten._grouped_mm.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_cudnn_attention.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops.higher_order.flex_attention,
    # Collectives inside a block (EP's all-to-all, TP's reduce-scatter): not rerun in backward.
    torch.ops._c10d_functional.all_to_all_single.default,
    torch.ops._c10d_functional.reduce_scatter_tensor.default,
}


def _ignore_profiler_ranges() -> None:
    """NOTE: FSDP2's hooks on a sub-unit inside the block (EP's experts) open profiler ranges a
    different number of times in the forward and in the recompute, which SAC's replay (torch
    2.13) rejects as non-determinism; they compute nothing, so SAC passes them through, as it
    does aten.detach. A torch global: changed only when selective AC is asked for."""
    torch.utils.checkpoint.SAC_IGNORED_OPS |= {
        torch.ops.profiler._record_function_enter_new.default,
        torch.ops.profiler._record_function_exit._RecordFunction,
    }


def _save_matmuls(_ctx, op, *_args, **_kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_context():
    return create_selective_checkpoint_contexts(_save_matmuls)


def _checkpointed(forward: Callable, selective: bool) -> Callable:
    # Non-reentrant: works with keyword arguments, autocast, FSDP2 and torch.compile (which
    # takes no context_fn but a plain function: hence none at all for full AC).
    options = {"context_fn": _selective_context} if selective else {}

    @functools.wraps(forward)
    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **options, **kwargs)

    return run


def apply_activation_checkpointing(model: nn.Module, mode: str) -> nn.Module:
    """Recompute each block's activations in backward instead of keeping them.

    full:      keep only each block's inputs; backward reruns the whole block forward.
    selective: keep the matmul and attention outputs (SAVED_OPS), recompute the rest.
    Op-level rather than every-other-block: the matmuls are nearly all of a block's FLOPs but
    only part of what it keeps for backward (norm outputs, RoPE'd q/k, SiLU and the gating
    products, the permuted expert rows are the rest), so every block saves memory for an
    almost free recompute; every-other-block full AC would rerun whole matmul-heavy blocks.

    The MoE load counter skips the recomputed forward (`training.moe.recomputing`).
    """
    if mode not in ACTIVATION_CHECKPOINTING:
        raise ValueError(f"unknown activation_checkpointing {mode!r}; choose one of {ACTIVATION_CHECKPOINTING}")
    if mode == "none":
        return model
    if mode == "selective":
        _ignore_profiler_ranges()
    for block in model.layers.values():
        block.forward = _checkpointed(block.forward, selective=mode == "selective")
    return model


def apply_compile(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """torch.compile each block (not the whole model: one graph per block type, compiled once and
    reused by every layer; the embedding, loss and FSDP hooks stay eager).

    Not fullgraph: the padded-bmm experts (fp32, or no grouped_mm) are a deliberate graph break
    (`torch.compiler.disable`d in training.moe: C is read on the host); bf16 takes grouped_mm,
    which compiles, and a block is then one graph. Under activation checkpointing that break
    makes dynamo run the checkpointed block eagerly: compile pays off with AC in bf16 only.
    Data-dependent sizes (routing) are traced as unbacked symbols. backend: torch.compile's
    ("aot_eager" traces without inductor's code generation: the tests' quick check).
    """
    torch._dynamo.config.capture_scalar_outputs = True
    torch._dynamo.config.capture_dynamic_output_shape_ops = True
    # The MoE load counter's in-place add inside a checkpointed block: count it once, in the
    # forward, not again in backward's recompute (as the eager path does, `moe.recomputing`).
    torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True
    for block in model.layers.values():
        block.compile(backend=backend)  # in place: parameter names unchanged (no `_orig_mod.`)
    return model


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Forward and loss under torch.autocast(dtype) (bf16 matmuls, fp32 master weights and
    gradients); a no-op for dtype None. For a single process: under FSDP, MixedPrecisionPolicy
    casts the parameters instead. Losses stay fp32: cross-entropy autocasts to fp32 and the
    router upcasts its logits (training.moe.Router)."""
    if dtype is None:
        yield
        return
    with torch.autocast(device.type, dtype=dtype):
        yield


def apply_model_options(model: nn.Module, attention: str, activation_checkpointing: str, compile: bool) -> nn.Module:
    """TrainConfig's switches on a freshly built (unsharded) model, in torchtitan's order:
    attention kernel, activation checkpointing, then compile; FSDP comes after."""
    model.attention_kernel = attention
    apply_activation_checkpointing(model, activation_checkpointing)
    if compile:
        apply_compile(model)
    return model
