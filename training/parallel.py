"""Parallel layout for the MoE transformer: one device mesh for TP, PP, HSDP/FSDP2 and EP.

    layout = plan_layout(available=8, n_experts=E, max_ep=2, global_batch_seqs=G, tp=2)
    meshes = build_meshes(layout, "cpu")
    parallelize(model, meshes)             # in place: TP plan, EP experts, FSDP2 units, root
    norm = clip_grad_norm_(model.parameters(), 1.0)

The W ranks of a run form two meshes over the same ranks (torchtitan's ParallelDims):
- dense weights on (pp, dp_replicate, dp_shard, tp), tp fastest-varying: tp ranks are
  neighbours (one node's NVLink), dp_replicate the slowest after pp (across nodes);
- routed experts on (pp, efsdp, ep), ep fastest-varying: ep borrows its ranks from
  dp_shard x tp (it must divide dp_shard * tp), and efsdp = dp_replicate * dp_shard * tp / ep.

What each degree does:
- tp: DTensor tensor parallelism inside each block (Megatron-style, as torchtitan): q/k/v (MLA:
  the projections into heads) and the FFN's gate/up are column-sharded, o and down row-sharded;
  attention uses this rank's H/tp heads. The norms run sequence-parallel
  (each tp rank normalises S/tp tokens) and the residual stream between blocks is a Shard(1)
  DTensor (this rank holds S/tp tokens; its shape is the global one). Embeddings, the final
  norm and the output head stay FSDP-only: every tp rank computes the full logits and the same
  loss (no loss parallelism).
- MoE under tp: the layer's input is all-gathered, and every tp rank routes the full sequence
  (the balance and z losses are exactly the single-process ones) and runs the shared expert
  tensor-parallel. The routed experts are never TP-sharded: with ep > 1 they are split over
  the ep ranks (rank r of an EP group holds experts [r E/ep, (r+1) E/ep) as a DTensor Shard(0))
  and tokens travel with two uneven all-to-alls per layer (`ExpertParallel`).
  NOTE: tp ranks hold the same tokens, so the routed experts' work is repeated tp times (the
  price of exact router losses without splitting the routed rows over tp afterwards).
- dp_shard, dp_replicate: FSDP2 over the `dp` mesh (1-D dp_shard, or HSDP: 2-D
  (dp_replicate, dp_shard), sharded inside a replica group, all-reduced across groups).
  dp = dp_replicate * dp_shard ranks read distinct data; the ranks of one tp/pp group read the same.
- pp: `Meshes.pp` is the stage group, `Meshes.pp_rank` this rank's position (the schedule is
  `training.pipeline`'s). Under tp, stages exchange plain full-sequence activations (B, S, D):
  the last block of each chunk gathers the sequence, as it does before the final norm.

Gradient scale: the loss is a mean over the dp data-parallel ranks. FSDP divides the dense
gradients by dp (reduce-scatter over dp_shard, all-reduce over dp_replicate); tp copies of a
dense weight compute identical gradients (DTensor reduces the sharded ones). An expert shard's
local gradient already sums over the ep ranks that sent it tokens (all-to-all backward), then
FSDP sums over the efsdp ranks: every rank of the stage contributes once (a tp copy of a token
is a contribution too, counted tp times), W/pp = efsdp * ep contributions in all, so the
experts' reduce-scatter divides by W/pp = dp * tp, not by efsdp (dp alone when tp = 1, as
torchtitan divides by the dp x ep world).

Shape legend as in moe.py: N routed rows on this rank, E experts, P peers in the EP group,
L = E / P experts held locally, R rows received from all peers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import _functional_collectives as funcol
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Shard, distribute_module, distribute_tensor

from training.layout import Layout
from training.moe import GroupedExperts, MoE
from training.tensor_parallel import apply_tensor_parallel, transformer_blocks

# ---------------------------------------------------------------------------------------------
# Mesh dimensions (the degrees themselves: training.layout)
# ---------------------------------------------------------------------------------------------

DENSE_DIMS = ("pp", "dp_replicate", "dp_shard", "tp")
EXPERT_DIMS = ("pp", "efsdp", "ep")


# ---------------------------------------------------------------------------------------------
# Device meshes
# ---------------------------------------------------------------------------------------------


@dataclass
class Meshes:
    """This rank's view of the layout (every mesh None on a spare: `member` False).

    dp        FSDP mesh of the dense weights: 1-D dp_shard, or 2-D (dp_replicate, dp_shard) (HSDP)
    tp, pp    tensor-parallel and pipeline-stage meshes (None when that degree is 1)
    ep, efsdp expert-parallel and expert-FSDP meshes (None when ep == 1: experts are then
              sharded like the dense weights)
    data_group the dp ranks of this rank's (pp, tp) coordinate: reduces logged metrics and expert
              loads over distinct data
    world     every training rank (checkpoint collectives, barriers)
    data_rank, data_world  this rank's data shard (the dataset's rank / world_size)
    pp_rank   this rank's pipeline stage
    """

    layout: Layout
    member: bool
    dp: DeviceMesh | None = None
    tp: DeviceMesh | None = None
    pp: DeviceMesh | None = None
    ep: DeviceMesh | None = None
    efsdp: DeviceMesh | None = None
    data_group: dist.ProcessGroup | None = None
    world: DeviceMesh | None = None
    data_rank: int = 0
    pp_rank: int = 0

    @property
    def data_world(self) -> int:
        return self.layout.dp

    @property
    def group(self) -> dist.ProcessGroup | None:
        """Every training rank: the checkpoint's and the control's group."""
        return self.world.get_group() if self.world is not None else None


def _root_mesh(device_type: str, shape: tuple[int, ...], names: tuple[str, ...], world: int) -> DeviceMesh:
    if world == dist.get_world_size():
        return init_device_mesh(device_type, shape, mesh_dim_names=names)
    return DeviceMesh(device_type, torch.arange(world).view(shape), mesh_dim_names=names)


def data_parallel_group(layout: Layout) -> dist.ProcessGroup | None:
    """The ranks that share this rank's (pp, tp) coordinate, one per data shard.

    NOTE: a plain process group, not a flattened sub-mesh: a spare (outside the mesh) cannot
    slice one, and every process must take part in creating each group.
    """
    ranks_PRST = torch.arange(layout.world).view(layout.pp, layout.dp_replicate, layout.dp_shard, layout.tp)
    groups = ranks_PRST.permute(0, 3, 1, 2).reshape(layout.pp * layout.tp, layout.dp).tolist()
    group, _ = dist.new_subgroups_by_enumeration(groups)
    return group


def build_meshes(layout: Layout, device_type: str) -> Meshes:
    """Meshes over ranks [0, layout.world). Every process of the default group must call this
    (group creation is collective); ranks outside the layout get `member=False`."""
    world = dist.get_world_size()
    if layout.world > world:
        raise ValueError(f"layout needs {layout.world} ranks, the process group has {world}")
    dense_shape = (layout.pp, layout.dp_replicate, layout.dp_shard, layout.tp)
    dense = _root_mesh(device_type, dense_shape, DENSE_DIMS, layout.world)
    # NOTE: `_flatten` is private but is how torchtitan builds its flattened meshes; it creates
    # the group once (collective: spares call it too) and caches it on the root mesh.
    everyone = dense._flatten("world")
    data_group = data_parallel_group(layout)
    experts = None
    if layout.ep > 1:
        experts = _root_mesh(device_type, (layout.pp, layout.efsdp, layout.ep), EXPERT_DIMS, layout.world)
    if dist.get_rank() >= layout.world:
        return Meshes(layout, member=False)
    pp_rank, replica, shard, _ = dense.get_coordinate()
    return Meshes(
        layout, member=True,
        dp=dense["dp_shard"] if layout.dp_replicate == 1 else dense["dp_replicate", "dp_shard"],
        tp=dense["tp"] if layout.tp > 1 else None,
        pp=dense["pp"] if layout.pp > 1 else None,
        ep=experts["ep"] if experts is not None else None,
        efsdp=experts["efsdp"] if experts is not None else None,
        data_group=data_group, world=everyone,
        data_rank=replica * layout.dp_shard + shard, pp_rank=pp_rank,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Expert parallelism: dispatch rows to the rank holding their expert, and back
# ---------------------------------------------------------------------------------------------


class ExpertParallel:
    """Turns a `GroupedExperts` into its EP shard plus an all-to-all around it.

    `MoE.forward` hands the experts rows sorted by global expert id with counts_E. Experts are
    split contiguously, so the rows for peer p are one contiguous block: send block p to p,
    regroup what arrives by local expert, run the L local experts, undo the regrouping, send
    the results back. The module's parameter names do not change (hooks, not a wrapper), so
    checkpoints load across layouts.

    NOTE: the split sizes go to the host (`tolist`): a device sync per layer on GPU, as in
    torchtitan. The exchange is `funcol.all_to_all_single_autograd`, whose backward is the
    reverse all-to-all (the plain functional `all_to_all_single` has no autograd formula on
    older torch builds, which then drop the gradients silently).
    """

    def __init__(self) -> None:
        # Per-module routing plan from the pre-hook, consumed by the post-hook of the same call.
        self._plans: dict[int, tuple[list[int], list[int], torch.Tensor]] = {}

    def apply(self, experts: GroupedExperts, ep_mesh: DeviceMesh) -> GroupedExperts:
        if experts.n_experts % ep_mesh.size():
            raise ValueError(f"{experts.n_experts} experts do not split over ep={ep_mesh.size()}")
        return distribute_module(experts, ep_mesh, self._partition, self._dispatch, self._combine)

    @staticmethod
    def _partition(name: str, module: nn.Module, mesh: DeviceMesh) -> None:
        for pname, param in list(module.named_parameters(recurse=False)):
            sharded = nn.Parameter(distribute_tensor(param.data, mesh, [Shard(0)]), param.requires_grad)
            module.register_parameter(pname, sharded)

    def _dispatch(self, module: nn.Module, inputs, mesh: DeviceMesh):
        x_sorted_ND, counts_E = inputs
        group, peers = mesh.get_group(), mesh.size()
        counts_PL = counts_E.view(peers, -1)
        recv_PL = torch.empty_like(counts_PL)
        dist.all_to_all_single(recv_PL, counts_PL, group=group)  # how many rows each peer sends
        send_splits = counts_PL.sum(dim=1).tolist()
        recv_splits = recv_PL.sum(dim=1).tolist()
        x_recv_RD = funcol.wait_tensor(funcol.all_to_all_single_autograd(x_sorted_ND, recv_splits, send_splits, group))
        # Arrived rows are grouped (peer, local expert); the kernels want them by local expert.
        n_local = recv_PL.shape[1]
        expert_R = torch.repeat_interleave(
            torch.arange(n_local, device=counts_E.device).repeat(peers), recv_PL.reshape(-1), output_size=x_recv_RD.shape[0]
        )
        order_R = torch.argsort(expert_R, stable=True)
        self._plans[id(module)] = (send_splits, recv_splits, order_R)
        return x_recv_RD[order_R], recv_PL.sum(dim=0)

    def _combine(self, module: nn.Module, y_local_RD: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
        send_splits, recv_splits, order_R = self._plans.pop(id(module))
        y_recv_RD = torch.zeros_like(y_local_RD).index_copy(0, order_R, y_local_RD)
        y_back_ND = funcol.all_to_all_single_autograd(y_recv_RD, send_splits, recv_splits, mesh.get_group())
        return funcol.wait_tensor(y_back_ND)


# ---------------------------------------------------------------------------------------------
# FSDP2 wrapping
# ---------------------------------------------------------------------------------------------


def _shard_experts(moe: MoE, meshes: Meshes, mp: MixedPrecisionPolicy, reshard_after_forward: bool) -> None:
    """EP over the ep mesh, then FSDP over efsdp with the W/pp divide factor (module docstring)."""
    layout = meshes.layout
    ExpertParallel().apply(moe.experts, meshes.ep)
    # Shard dim 1 (F) when there are fewer local experts than efsdp ranks, as torchtitan does,
    # rather than pad dim 0 (a layout of >= 12 ranks: not exercised by the tests).
    local_experts = moe.experts.n_experts // layout.ep
    dim = 0 if local_experts >= layout.efsdp else 1
    fully_shard(
        moe.experts, mesh=meshes.efsdp, mp_policy=mp, reshard_after_forward=reshard_after_forward,
        shard_placement_fn=lambda _p, dim=dim: Shard(dim),
    )  # fmt: skip
    moe.experts.set_gradient_divide_factor(float(layout.world // layout.pp))
    if meshes.efsdp.size() > 1 and dist.get_backend(meshes.efsdp.get_group()) == "gloo":
        # A custom factor means ReduceOp.PREMUL_SUM on NCCL, which gloo lacks: sum,
        # then divide in a separate kernel. Not on a one-rank mesh: there torch 2.13 divides the
        # copied gradient by the factor and then again after it (expert grads came out halved
        # at EP=2 on 2 ranks, hidden from the loss parity checks by AdamW's scale invariance).
        moe.experts.set_force_sum_reduction_for_comms(True)


def fsdp_units(block: nn.Module) -> list[FSDPModule]:
    """A block's FSDP units: the block, and its routed experts when they are a unit of their own."""
    experts = getattr(getattr(block, "ffn", None), "experts", None)
    return [block] + ([experts] if isinstance(experts, FSDPModule) else [])


def set_explicit_prefetch(model: nn.Module) -> None:
    """Forward: each block all-gathers the next block's units; backward: the previous one's.

    NOTE: FSDP2's implicit prefetch follows the order of the last forward, which EP's
    all-to-alls (blocking on the host) interleave with: the next all-gather is only issued once
    the exchange returns. Explicit lists issue it a block ahead.
    """
    blocks = transformer_blocks(model)
    for i, block in enumerate(blocks):
        if i + 1 < len(blocks):
            block.set_modules_to_forward_prefetch(fsdp_units(blocks[i + 1]))
        if i > 0:
            block.set_modules_to_backward_prefetch(fsdp_units(blocks[i - 1]))
    if blocks and isinstance(model, FSDPModule):
        model.set_modules_to_forward_prefetch(fsdp_units(blocks[0]))


def parallelize(
    model: nn.Module,
    meshes: Meshes,
    param_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
    fsdp_prefetch: bool = False,
) -> nn.Module:
    """Tensor parallelism (tp > 1), expert parallelism on every MoE layer (ep > 1), then FSDP2:
    experts on the efsdp mesh, each block on the dp mesh (HSDP when 2-D), the root (embeddings,
    final norm, output; tied weights stay in one unit).

    param_dtype: compute dtype of the gathered parameters (bf16 on GPUs); gradients are
    reduced in fp32 and the sharded master weights stay fp32. fsdp_prefetch: explicit
    forward/backward prefetch of the neighbouring block (`set_explicit_prefetch`).
    """
    if meshes.tp is not None:
        apply_tensor_parallel(model, meshes.tp)
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in transformer_blocks(model):
        if isinstance(block.ffn, MoE) and meshes.ep is not None:
            _shard_experts(block.ffn, meshes, mp, reshard_after_forward)
        fully_shard(block, mesh=meshes.dp, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    # The root's parameters are needed again first thing in backward: keep them gathered.
    fully_shard(model, mesh=meshes.dp, mp_policy=mp, reshard_after_forward=False)
    if fsdp_prefetch:
        set_explicit_prefetch(model)
    return model


def fsdp_modules(model: nn.Module) -> list[FSDPModule]:
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """FSDP2: skip (False) or run (True) the reduce-scatter in the coming backward. Off for all
    but the last micro-batch of a step: gradients accumulate unsharded, reduced once."""
    for module in fsdp_modules(model):
        module.set_requires_gradient_sync(enabled, recurse=False)


# ---------------------------------------------------------------------------------------------
# Gradient clipping across meshes
# ---------------------------------------------------------------------------------------------


def _grads_by_mesh(params: Iterable[torch.Tensor]) -> dict[object, list[torch.Tensor]]:
    by_mesh: dict[object, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            by_mesh.setdefault(p.grad.device_mesh if isinstance(p.grad, DTensor) else None, []).append(p)
    return by_mesh


@torch.no_grad()
def grad_norm(params: Iterable[torch.Tensor], pp_group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Global L2 norm of the gradients, whatever mesh each lives on.

    `clip_grad_norm_` cannot mix DTensors of different meshes in one foreach call, and expert
    gradients (efsdp x ep) and tensor-parallel ones ((dp, tp)) do not live on the FSDP mesh of
    the others: take each mesh's norm (a full reduction over that mesh, DTensor counting
    replicated dims once), then combine sqrt(sum_m norm_m^2). With pipeline stages each holds
    its own parameters: the squares are summed over `pp_group` too.
    """
    squares = []
    for group in _grads_by_mesh(params).values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in group], norm_type=2.0, foreach=True)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        squares.append(norm.float().square())
    total = torch.stack(squares).sum() if squares else torch.zeros(())
    if pp_group is not None:
        dist.all_reduce(total, group=pp_group)
    return total.sqrt()


@torch.no_grad()
def clip_grad_norm_(
    params: Iterable[torch.Tensor], max_norm: float, pp_group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """Scale all gradients so their global L2 norm is at most `max_norm`; returns the norm
    before clipping (as `torch.nn.utils.clip_grad_norm_` does, across meshes and stages)."""
    params = [p for p in params if p.grad is not None]
    total = grad_norm(params, pp_group)
    for group in _grads_by_mesh(params).values():
        torch.nn.utils.clip_grads_with_norm_(group, max_norm, total, foreach=True)
    return total
