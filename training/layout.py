"""How many ranks train and what each degree of parallelism is: torch-free, so the planner and the
CLI's dry run use the same arithmetic as the trainer (training.parallel builds the meshes).

    layout = plan_layout(available=5, n_experts=8, max_ep=2, global_batch_seqs=16, tp=2)
    layout.summary(5)              # '5 workers -> 4 ranks: pp 1 x dp 2 x tp 2, ep 2; 1 spare'
    micro, accum = accumulation(16, layout.dp, max_micro_batch=8)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """Degrees of one run: world = pp * dp_replicate * dp_shard * tp = pp * efsdp * ep."""

    world: int  # ranks that train (W); ranks beyond it, if any, wait as spares
    ep: int = 1  # expert-parallel degree: divides the expert count and dp_shard * tp
    tp: int = 1  # tensor-parallel degree (attention heads, FFN width)
    pp: int = 1  # pipeline stages
    dp_replicate: int = 1  # HSDP replica groups (dense weights replicated across them)

    def __post_init__(self) -> None:
        if min(self.world, self.ep, self.tp, self.pp, self.dp_replicate) < 1:
            raise ValueError(f"every degree must be >= 1: {self}")
        if self.world % (self.pp * self.dp_replicate * self.tp):
            raise ValueError(f"world {self.world} is not a multiple of pp x dp_replicate x tp = "
                             f"{self.pp * self.dp_replicate * self.tp}")  # fmt: skip
        if (self.dp_shard * self.tp) % self.ep:
            raise ValueError(f"ep {self.ep} must divide dp_shard x tp = {self.dp_shard * self.tp} "
                             "(it borrows those ranks)")

    @property
    def dp_shard(self) -> int:
        """Ranks that FSDP-shard the dense weights inside one replica group."""
        return self.world // (self.pp * self.dp_replicate * self.tp)

    @property
    def dp(self) -> int:
        """Data-parallel degree: ranks that read distinct data."""
        return self.dp_replicate * self.dp_shard

    @property
    def efsdp(self) -> int:
        """Ranks of one stage that hold the same experts and FSDP-shard them between them."""
        return self.world // (self.pp * self.ep)

    def describe(self) -> str:
        """Both factorisations of the world, e.g. 'world 8 = efsdp 2 x ep 2 x pp 2 (experts) =
        dp_replicate 1 x dp_shard 2 x tp 2 x pp 2 (dense)'."""
        return (f"world {self.world} = efsdp {self.efsdp} x ep {self.ep} x pp {self.pp} (experts) = "
                f"dp_replicate {self.dp_replicate} x dp_shard {self.dp_shard} x tp {self.tp} x pp {self.pp} (dense)")

    def summary(self, available: int) -> str:
        """What the launcher chose: '5 workers -> 4 ranks: pp 1 x dp 2 x tp 2, ep 2; 1 spare'."""
        dp = f"dp {self.dp}" if self.dp_replicate == 1 else f"dp {self.dp} ({self.dp_replicate} x {self.dp_shard} HSDP)"
        spares = available - self.world
        tail = f"; {spares} spare{'s' if spares != 1 else ''}" if spares else ""
        return f"{available} workers -> {self.world} ranks: pp {self.pp} x {dp} x tp {self.tp}, ep {self.ep}{tail}"


def plan_layout(
    available: int,
    n_experts: int,
    max_ep: int,
    global_batch_seqs: int,
    *,
    tp: int = 1,
    pp: int = 1,
    dp_replicate: int = 1,
    n_layers: int | None = None,
) -> Layout:
    """The largest layout that fits `available` ranks with these fixed tp, pp and dp_replicate.

    Only dp_shard is elastic: W = pp * dp_replicate * dp_shard * tp is the largest such count
    <= available whose data-parallel degree dp = dp_replicate * dp_shard divides the global
    batch (every data rank takes the same number of sequences, so tokens per step stay fixed
    whatever the size); ep is the largest degree <= max_ep dividing the experts and
    dp_shard * tp (1 = no expert parallelism). Raises ValueError when nothing fits.
    """
    if available < 1 or max_ep < 1 or global_batch_seqs < 1 or min(tp, pp, dp_replicate) < 1:
        raise ValueError(f"need >= 1 rank, ep, tp, pp, replica and sequence (got available={available}, "
                         f"max_ep={max_ep}, tp={tp}, pp={pp}, dp_replicate={dp_replicate}, "
                         f"global_batch_seqs={global_batch_seqs})")  # fmt: skip
    if n_layers is not None and pp > n_layers:
        raise ValueError(f"pp {pp} exceeds the model's {n_layers} layers (a stage holds at least one)")
    unit = pp * dp_replicate * tp
    if unit > available:
        raise ValueError(f"pp {pp} x dp_replicate {dp_replicate} x tp {tp} needs {unit} ranks, {available} available")
    fits = [s for s in range(1, available // unit + 1) if global_batch_seqs % (dp_replicate * s) == 0]
    if not fits:
        raise ValueError(f"no data-parallel degree dp_replicate {dp_replicate} x dp_shard (<= {available // unit}) "
                         f"divides the global batch of {global_batch_seqs} sequences")  # fmt: skip
    dp_shard = max(fits)
    ep = max(d for d in range(1, max_ep + 1) if (dp_shard * tp) % d == 0 and n_experts % d == 0)
    return Layout(world=unit * dp_shard, ep=ep, tp=tp, pp=pp, dp_replicate=dp_replicate)


def accumulation(global_batch_seqs: int, world: int, max_micro_batch: int) -> tuple[int, int]:
    """(micro_batch, accumulation steps) so that world * micro_batch * steps == global batch.

    `world` is the data-parallel degree (ranks reading distinct data). The micro-batch is the
    largest divisor of the per-rank share not above `max_micro_batch`.
    """
    if global_batch_seqs % world:
        raise ValueError(f"global batch of {global_batch_seqs} sequences does not split over {world} ranks")
    per_rank = global_batch_seqs // world
    micro = max(m for m in range(1, min(max_micro_batch, per_rank) + 1) if per_rank % m == 0)
    return micro, per_rank // micro
