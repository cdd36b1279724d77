"""Parallel layout for the MoE transformer: FSDP2 over every rank, expert parallelism inside.

    layout = plan_layout(available=world, n_experts=E, max_ep=2, global_batch_seqs=G)
    meshes = build_meshes(layout, "cpu")
    parallelize(model, meshes)             # in place: EP experts, FSDP2 units, root
    norm = clip_grad_norm_(model.parameters(), 1.0)

Ranks form a 2-D mesh (efsdp, ep) of W = efsdp * ep ranks (torchtitan's dp_shard_mod_ep x ep):
- dense parameters (attention, norms, routers, shared experts, embeddings) are FSDP-sharded
  over all W ranks (the flattened `dp` mesh), and every rank reads its own data;
- routed experts are split over `ep` (rank r of an EP group holds experts
  [r E/ep, (r+1) E/ep) as a DTensor Shard(0)), and each EP shard is FSDP-sharded again over the
  `efsdp` ranks that hold the same experts. Tokens travel to their expert's rank and back with
  two uneven all-to-alls per MoE layer (`ExpertParallel`).

Gradient scale: the loss is a mean over the W ranks' data, and FSDP divides the dense
reduce-scatter by W. An expert shard's local gradient already sums over the ep ranks that sent
it tokens (all-to-all backward), then FSDP sums over the efsdp ranks: W ranks' worth of
contributions, so its reduce-scatter must also divide by W, not by efsdp (as torchtitan does).

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

from training.moe import GroupedExperts, MoE

# ---------------------------------------------------------------------------------------------
# Layout: how many ranks train, and how the experts are split
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    world: int  # ranks that train (W); ranks beyond it, if any, wait as spares
    ep: int  # expert-parallel degree: divides both W and the expert count

    @property
    def efsdp(self) -> int:
        """Ranks that hold the same experts and FSDP-shard them between them."""
        return self.world // self.ep

    def describe(self) -> str:
        return f"world {self.world} = efsdp {self.efsdp} x ep {self.ep}"


def plan_layout(available: int, n_experts: int, max_ep: int, global_batch_seqs: int) -> Layout:
    """The largest layout that fits `available` ranks.

    W is the largest count <= available that divides the global batch (every rank takes the same
    number of sequences per step, so tokens per step stay fixed whatever the size); ep is the
    largest degree <= max_ep that divides both W and the expert count (1 = no expert parallelism).
    """
    if available < 1 or max_ep < 1 or global_batch_seqs < 1:
        raise ValueError(f"need >= 1 rank, ep and sequence (got {available}, {max_ep}, {global_batch_seqs})")
    world = max(w for w in range(1, available + 1) if global_batch_seqs % w == 0)
    ep = max(d for d in range(1, min(max_ep, world) + 1) if world % d == 0 and n_experts % d == 0)
    return Layout(world=world, ep=ep)


def accumulation(global_batch_seqs: int, world: int, max_micro_batch: int) -> tuple[int, int]:
    """(micro_batch, accumulation steps) so that world * micro_batch * steps == global batch.

    The micro-batch is the largest divisor of the per-rank share not above `max_micro_batch`.
    """
    if global_batch_seqs % world:
        raise ValueError(f"global batch of {global_batch_seqs} sequences does not split over {world} ranks")
    per_rank = global_batch_seqs // world
    micro = max(m for m in range(1, min(max_micro_batch, per_rank) + 1) if per_rank % m == 0)
    return micro, per_rank // micro


# ---------------------------------------------------------------------------------------------
# Device meshes
# ---------------------------------------------------------------------------------------------


@dataclass
class Meshes:
    """`dp`: every training rank (FSDP of dense parameters, data parallel, metrics reductions).
    `ep` / `efsdp`: this rank's expert-parallel group and its expert-FSDP group (None when
    ep == 1: experts are then sharded like everything else). `member` is False on a spare."""

    layout: Layout
    dp: DeviceMesh | None
    ep: DeviceMesh | None
    efsdp: DeviceMesh | None
    member: bool

    @property
    def group(self) -> dist.ProcessGroup | None:
        return self.dp.get_group() if self.dp is not None else None


def build_meshes(layout: Layout, device_type: str) -> Meshes:
    """Meshes over ranks [0, layout.world). Every process of the default group must call this
    (sub-group creation is collective); ranks outside the layout get `member=False`."""
    world = dist.get_world_size()
    if layout.world > world:
        raise ValueError(f"layout needs {layout.world} ranks, the process group has {world}")
    ranks = torch.arange(layout.world).view(layout.efsdp, layout.ep)
    if layout.world == world:
        mesh = init_device_mesh(device_type, (layout.efsdp, layout.ep), mesh_dim_names=("efsdp", "ep"))
    else:
        mesh = DeviceMesh(device_type, ranks, mesh_dim_names=("efsdp", "ep"))
    member = dist.get_rank() < layout.world
    # NOTE: `_flatten` is private but is how torchtitan builds its dp_shard mesh; it creates the
    # W-rank group once and caches it on the root mesh.
    dp = mesh._flatten("dp")
    if not member:  # slicing creates no groups: a spare needs none of them
        return Meshes(layout, None, None, None, member)
    if layout.ep == 1:
        return Meshes(layout, dp, None, None, member)
    return Meshes(layout, dp, mesh["ep"], mesh["efsdp"], member)


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
    torchtitan. The exchange is the functional collective `all_to_all_single`, differentiable
    (its backward is the reverse all-to-all); `torch.distributed.nn.functional`'s version is
    deprecated in its favour since torch 2.10.
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
        x_recv_RD = funcol.all_to_all_single(x_sorted_ND, recv_splits, send_splits, group)
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
        return funcol.wait_tensor(funcol.all_to_all_single(y_recv_RD, send_splits, recv_splits, mesh.get_group()))


# ---------------------------------------------------------------------------------------------
# FSDP2 wrapping
# ---------------------------------------------------------------------------------------------


def parallelize(
    model: nn.Module,
    meshes: Meshes,
    param_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Expert parallelism on every MoE layer, then FSDP2: experts on the efsdp mesh, each block on
    the dp mesh, the root (embeddings, final norm, output; tied weights stay in one unit).

    param_dtype: compute dtype of the gathered parameters (bf16 on GPUs); gradients are
    reduced in fp32 and the sharded master weights stay fp32.
    """
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    world = meshes.layout.world
    for block in model.layers:
        moe = block.ffn if isinstance(block.ffn, MoE) else None
        if moe is not None and meshes.ep is not None:
            ExpertParallel().apply(moe.experts, meshes.ep)
            # Shard dim 1 (F) when there are fewer local experts than efsdp ranks, as torchtitan
            # does, rather than pad dim 0 (a layout of >= 12 ranks: not exercised by the tests).
            local_experts = moe.experts.n_experts // meshes.layout.ep
            dim = 0 if local_experts >= meshes.layout.efsdp else 1
            fully_shard(
                moe.experts, mesh=meshes.efsdp, mp_policy=mp, reshard_after_forward=reshard_after_forward,
                shard_placement_fn=lambda _p, dim=dim: Shard(dim),
            )  # fmt: skip
            moe.experts.set_gradient_divide_factor(float(world))
            if dist.get_backend(meshes.efsdp.get_group()) == "gloo":
                # A custom factor means ReduceOp.PREMUL_SUM on NCCL, which gloo lacks: sum,
                # then divide in a separate kernel.
                moe.experts.set_force_sum_reduction_for_comms(True)
        fully_shard(block, mesh=meshes.dp, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    # The root's parameters are needed again first thing in backward: keep them gathered.
    fully_shard(model, mesh=meshes.dp, mp_policy=mp, reshard_after_forward=False)
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


@torch.no_grad()
def grad_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of the gradients, whatever mesh each lives on.

    `clip_grad_norm_` cannot mix DTensors of different meshes in one foreach call, and expert
    gradients (efsdp x ep) do not live on the dense parameters' mesh: take each mesh's norm
    (a full reduction over that mesh), then combine sqrt(sum_m norm_m^2).
    """
    by_mesh: dict[object, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            key = p.grad.device_mesh if isinstance(p.grad, DTensor) else None
            by_mesh.setdefault(key, []).append(p.grad)
    squares = []
    for grads in by_mesh.values():
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        squares.append(norm.float().square())
    if not squares:
        return torch.zeros(())
    return torch.stack(squares).sum().sqrt()


@torch.no_grad()
def clip_grad_norm_(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale all gradients so their global L2 norm is at most `max_norm`; returns the norm
    before clipping (as `torch.nn.utils.clip_grad_norm_` does, across meshes)."""
    params = [p for p in params if p.grad is not None]
    total = grad_norm(params)
    by_mesh: dict[object, list[torch.Tensor]] = {}
    for p in params:
        by_mesh.setdefault(p.grad.device_mesh if isinstance(p.grad, DTensor) else None, []).append(p)
    for group in by_mesh.values():
        torch.nn.utils.clip_grads_with_norm_(group, max_norm, total, foreach=True)
    return total
