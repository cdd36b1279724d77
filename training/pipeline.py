"""Pipeline parallelism: the transformer split into stages by layer, run by a
`torch.distributed.pipelining` schedule over the step's micro-batches.

    stage_layer_ids(n_layers=7, n_stages=3)              # [["0", "1"], ["2", "3", "4"], ["5", "6"]]
    model = split_model(model, stage_ids=[pp_rank], n_stages=pp)     # before sharding the stage
    pipeline = Pipeline(model, "1f1b", pp_group, device, micro_batch, seq_len, n_microbatches)
    lm_balance_z = pipeline.step(micro_batches, scale)   # forward/backward of every micro-batch
    nll = pipeline.forward_nll(tokens_BS, doc_ids_BS, targets_BS)   # evaluation, any batch shape

A stage is the model itself with the other stages' parts removed: `layers` keeps its own blocks
under their original ids ("layers.3.attn...", a ModuleDict), `tok_embeddings` is None except on
the first stage, `norm` and `output` are None except on the last (as torchtitan does). Parameter
names are those of the unsplit model, so a DCP checkpoint loads into any layout.

Schedules: "1f1b" and "gpipe" give each of the pp ranks one stage; "interleaved-1f1b" gives each
rank two virtual stages (rank r holds stages r and r + pp, Megatron's looped placement): the
idle bubble, (pp - 1)/m of the useful time with m micro-batches, becomes (pp - 1)/(2m)
(Narayanan et al. 2021, arXiv 2104.04473), for one more activation exchange per layer group.
The schedule's micro-batches are the trainer's accumulation steps, so 1F1B needs at least `pp`
of them per step.

Loss scale: each micro-batch's LM loss enters as its summed CE x dp / N (`training.token_mean`:
N the step's loss tokens over the dp ranks, counted by the trainer before the schedule runs, so
the last stage's loss_fn knows it), as in the single process. The MoE balance and z losses are
computed on stages that never see the LM loss: `AuxLossGrad` hangs them on the stage's
activations and, in backward, gives each the gradient 1/m (d(aux / m)/d aux, m micro-batches),
the way Megatron's MoEAuxLossAutoScaler attaches them. So the gradient is that of
sum_mb (lm_mb x count_mb x dp / N + aux_mb / m), exactly the single process's.

Shape legend as in model.py: B micro-batch sequences, S sequence, D model width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

from training.evaluate import summed_nll
from training.model import Transformer, causal_lm_loss, chunked_lm_loss
from training.token_mean import token_weighted

if TYPE_CHECKING:
    from training.parallel import Meshes
    from training.trainer import MicroBatch

PipelineSchedule = Literal["1f1b", "interleaved-1f1b", "gpipe"]

# Virtual stages per rank for each schedule (interleaved: two, as the config promises).
STAGES_PER_RANK: dict[str, int] = {"1f1b": 1, "gpipe": 1, "interleaved-1f1b": 2}


# ---------------------------------------------------------------------------------------------
# Which layers each stage holds
# ---------------------------------------------------------------------------------------------


def stage_layer_ids(n_layers: int, n_stages: int) -> list[list[str]]:
    """Contiguous layer ids ("0".."n-1") of each stage, balanced by layer count.

    Every stage gets n_layers // n_stages blocks; the n_layers % n_stages left over go one each
    to the middle stages first, then to the first stage, and to the last stage only when every
    other stage has one: the last stage also runs the output projection and the loss (a V x D
    matmul on every token, the largest single one), the first only an embedding lookup.
    """
    if n_layers < n_stages:
        raise ValueError(f"{n_layers} layers cannot fill {n_stages} pipeline stages (one layer each at least)")
    counts = [n_layers // n_stages] * n_stages
    preference = list(range(1, n_stages - 1)) + [0, n_stages - 1] if n_stages > 1 else [0]
    for stage in preference[: n_layers % n_stages]:
        counts[stage] += 1
    starts = [sum(counts[:s]) for s in range(n_stages)]
    return [[str(i) for i in range(start, start + count)] for start, count in zip(starts, counts)]


def stages_of_rank(pp_rank: int, pp: int, schedule: PipelineSchedule) -> list[int]:
    """Stage indices held by pipeline rank `pp_rank` (looped: r, r + pp, ...)."""
    return [pp_rank + v * pp for v in range(STAGES_PER_RANK[schedule])]


def check_pipeline(pp: int, schedule: PipelineSchedule, n_layers: int, n_microbatches: int, tied: bool) -> None:
    """Raise a ValueError saying what to change when this pipeline cannot run."""
    if pp == 1:
        return
    n_stages = pp * STAGES_PER_RANK[schedule]
    if n_layers < n_stages:
        raise ValueError(f"pp={pp} with {schedule} needs {n_stages} stages of >= 1 layer; the model has {n_layers}")
    if schedule == "1f1b" and n_microbatches < pp:
        raise ValueError(
            f"{schedule} with pp={pp} needs >= {pp} micro-batches per step, the accumulation gives "
            f"{n_microbatches}: lower micro_batch or raise global_batch_tokens (or use pp_schedule: gpipe)"
        )
    if schedule == "interleaved-1f1b" and n_microbatches % max(1, n_microbatches // pp):
        raise ValueError(f"interleaved-1f1b needs the micro-batches ({n_microbatches}) in whole rounds of pp={pp}")
    if tied:
        raise ValueError("tie_embeddings with pp > 1: the embedding and the output live on different stages")


# ---------------------------------------------------------------------------------------------
# The stage module
# ---------------------------------------------------------------------------------------------


class AuxLossGrad(torch.autograd.Function):
    """Identity on the activations that gives `aux_loss` the gradient `scale` in backward.

    A stage's aux losses are not part of the tensor it sends on, so nothing downstream would
    differentiate them; hanging them on the activations makes autograd reach them when the
    activation's gradient comes back, as if `scale * aux_loss` had been added to the loss.
    """

    @staticmethod
    def forward(ctx, h_BSD: torch.Tensor, aux_loss: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        ctx.save_for_backward(aux_loss)
        # NOTE: a copy, not the input itself: autograd would return that as a view, and FSDP
        # warns on a root returning a view (an in-place op on it would skip its backward hook).
        return h_BSD.clone()

    @staticmethod
    def backward(ctx, grad_BSD: torch.Tensor):
        (aux_loss,) = ctx.saved_tensors
        return grad_BSD, torch.full_like(aux_loss, ctx.scale), None


@dataclass(frozen=True)
class StageChunk:
    """One (virtual) stage held by this rank."""

    index: int  # position in the pipeline, 0 .. n_stages - 1
    layer_ids: list[str]
    is_first: bool  # runs the embedding
    is_last: bool  # runs the final norm and the output projection


class PipelineTransformer(Transformer):
    """A `Transformer` holding only some stages' parts (see `split_model`); its forward runs one
    of them and returns a tensor, as `torch.distributed.pipelining` passes between stages.

    `aux_scale` is the gradient given to each aux loss (1 / micro-batches, set per step);
    `aux_sums` adds up the detached (balance, z) of every forward since the last reset;
    `return_hidden`: the last stage stops after the final norm (the loss projects in chunks).
    """

    chunks: list[StageChunk]
    aux_scale: float
    aux_sums: torch.Tensor
    return_hidden: bool = False

    def forward(self, x: torch.Tensor, doc_ids_BS: torch.Tensor | None = None, chunk: int = 0) -> torch.Tensor:
        """x: tokens_BS on the first stage, the previous stage's h_BSD otherwise. Returns the
        logits_BSV on the last stage (its normed h_BSD when `return_hidden`), h_BSD on the others."""
        stage = self.chunks[chunk]
        h_BSD = self.tok_embeddings(x) if stage.is_first else x
        h_BSD, balance, z = self.run_layers(h_BSD, doc_ids_BS, stage.layer_ids)
        self.aux_sums += torch.stack([balance.detach(), z.detach()]).to(self.aux_sums)
        if torch.is_grad_enabled() and (balance.requires_grad or z.requires_grad):
            h_BSD = AuxLossGrad.apply(h_BSD, balance + z, self.aux_scale)
        if not stage.is_last:
            return h_BSD
        h_BSD = self.norm(h_BSD)
        return h_BSD if self.return_hidden else self.output(h_BSD)


class VirtualStage(nn.Module):
    """One of several stages on a rank: calls the rank's model (so FSDP's root hooks run) with
    its chunk index. The model is not registered as a child: parameter names stay the model's."""

    def __init__(self, model: PipelineTransformer, chunk: int):
        super().__init__()
        self.chunk = chunk
        object.__setattr__(self, "model", model)

    def forward(self, x: torch.Tensor, doc_ids_BS: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x, doc_ids_BS, chunk=self.chunk)


def split_model(model: Transformer, stage_ids: list[int], n_stages: int) -> PipelineTransformer:
    """Keep only the parts of stages `stage_ids` (in place, before any sharding) and turn the
    model into a `PipelineTransformer` (same class layout, so the same parameter names)."""
    cfg = model.cfg
    groups = stage_layer_ids(cfg.n_layers, n_stages)
    keep = {layer_id for s in stage_ids for layer_id in groups[s]}
    for layer_id in list(model.layers):
        if layer_id not in keep:
            del model.layers[layer_id]
    if 0 not in stage_ids:
        model.tok_embeddings = None
    if n_stages - 1 not in stage_ids:
        model.norm = None
        model.output = None
    # NOTE: the same swap fully_shard does (to a subclass that adds no state): the stage stays
    # the module that FSDP wraps and DCP saves, only its forward changes.
    model.__class__ = PipelineTransformer
    model.chunks = [StageChunk(s, groups[s], s == 0, s == n_stages - 1) for s in stage_ids]
    model.aux_scale = 1.0
    model.aux_sums = torch.zeros(2, dtype=torch.float64)  # moved to the device by Pipeline
    return model


def pipeline_stage_of(model: Transformer, meshes: Meshes | None, schedule: PipelineSchedule) -> Transformer:
    """The model itself without pipeline parallelism, else the stages this rank holds.

    NOTE: on CPU the whole model is initialised first, so every layout starts from the same
    weights; a model built on the meta device (GPUs) draws its stage's weights itself, a sample
    as good but not the same numbers as pp=1 (torchtitan's behaviour too).
    """
    if meshes is None or meshes.pp is None:
        return model
    pp = meshes.layout.pp
    return split_model(model, stages_of_rank(meshes.pp_rank, pp, schedule), pp * STAGES_PER_RANK[schedule])


# ---------------------------------------------------------------------------------------------
# Running a step
# ---------------------------------------------------------------------------------------------


class Pipeline:
    """This rank's stages and the schedule that runs them.

    model            the split model (`split_model`), already sharded if FSDP is used
    schedule         "1f1b" | "gpipe" | "interleaved-1f1b"
    pp_group         the ranks of this pipeline (one per stage position)
    micro_batch, seq_len, n_microbatches: the step's geometry, fixed (the stages exchange
                     buffers of that shape: static metadata, no warm-up forward)
    act_dtype        dtype of the activations between stages (FSDP's param_dtype, else fp32)
    loss_chunk_tokens the LM loss projects and upcasts this many tokens at a time
                     (`chunked_lm_loss`; 0: the last stage returns the whole logits)

    NOTE: with one stage per rank, `torch.distributed.pipelining` defers FSDP's reduce-scatter
    to the last micro-batch whatever `reduce_every_micro_batch` says.
    """

    def __init__(
        self,
        model: PipelineTransformer,
        schedule: PipelineSchedule,
        pp_group: dist.ProcessGroup,
        device: torch.device,
        micro_batch: int,
        seq_len: int,
        n_microbatches: int,
        act_dtype: torch.dtype = torch.float32,
        loss_chunk_tokens: int = 0,
    ):
        self.model, self.pp_group, self.device, self.act_dtype = model, pp_group, device, act_dtype
        model.aux_sums = model.aux_sums.to(device)
        self.n_microbatches, self.loss_chunk_tokens = n_microbatches, loss_chunk_tokens
        self._lm_scale = torch.ones((), dtype=torch.float64, device=device)  # dp / N: set by each step
        n_stages = self.n_stages = dist.get_world_size(pp_group) * STAGES_PER_RANK[schedule]
        self.has_first = any(c.is_first for c in model.chunks)
        self.has_last = any(c.is_last for c in model.chunks)
        cfg = model.cfg
        hidden = torch.empty(micro_batch, seq_len, cfg.dim, dtype=act_dtype, device="meta", requires_grad=True)
        tokens = torch.empty(micro_batch, seq_len, dtype=torch.int64, device="meta")
        out_dim = cfg.dim if loss_chunk_tokens else cfg.vocab_size
        last = torch.empty(micro_batch, seq_len, out_dim, dtype=act_dtype, device="meta", requires_grad=True)
        stages = []
        for k, chunk in enumerate(model.chunks):
            # One stage per rank: the FSDP root itself, so the stage defers its reduce-scatter to
            # the last micro-batch. Several: wrappers, and FSDP reduces after every backward.
            submodule = model if len(model.chunks) == 1 else VirtualStage(model, k)
            stages.append(PipelineStage(
                submodule, chunk.index, n_stages, device,
                input_args=tokens if chunk.is_first else hidden,
                output_args=last if chunk.is_last else hidden,
                group=pp_group,
            ))  # fmt: skip
        # scale_grads=False: the loss is already weighted (token_weighted; the aux gradient 1 / m).
        if schedule == "interleaved-1f1b":
            self.schedule = ScheduleInterleaved1F1B(stages, n_microbatches, loss_fn=self._loss, scale_grads=False)
        else:
            cls = Schedule1F1B if schedule == "1f1b" else ScheduleGPipe
            self.schedule = cls(stages[0], n_microbatches, loss_fn=self._loss, scale_grads=False)

    def _inputs(self, micro_batches: list[MicroBatch]) -> tuple[tuple, torch.Tensor | None, dict]:
        """The schedule's whole-batch arguments: the micro-batches concatenated (it splits them
        back along dim 0); tokens only for the first stage, targets only for the last."""
        if len(micro_batches) != self.n_microbatches:
            raise ValueError(f"pipeline built for {self.n_microbatches} micro-batches, got {len(micro_batches)}")
        kwargs = {}
        if micro_batches[0].doc_ids_BS is not None:  # every stage's attention masks documents
            kwargs["doc_ids_BS"] = torch.cat([mb.doc_ids_BS for mb in micro_batches])
        args = (torch.cat([mb.inputs_BS for mb in micro_batches]),) if self.has_first else ()
        target = torch.cat([mb.targets_BS for mb in micro_batches]) if self.has_last else None
        return args, target, kwargs

    def _loss(self, out_BSX: torch.Tensor, targets_BS: torch.Tensor) -> torch.Tensor:
        """One micro-batch's weighted LM loss (`token_weighted` with this step's scale) from the
        last stage's output: logits_BSV, or the normed hidden_BSD when the loss is chunked."""
        if self.loss_chunk_tokens:
            lm = chunked_lm_loss(out_BSX, self.model.output, targets_BS, self.loss_chunk_tokens)
        else:
            lm = causal_lm_loss(out_BSX, targets_BS)
        return token_weighted(lm, targets_BS, self._lm_scale)

    def step(self, micro_batches: list[MicroBatch], lm_scale: torch.Tensor) -> torch.Tensor:
        """Forward and backward of the micro-batches through the pipeline (gradients accumulate
        in this rank's stage parameters). lm_scale: dp / N (`training.token_mean.lm_scale`).
        Returns float64 [lm, balance, z] (lm: the weighted LM losses summed, as the trainer's
        single-process path; balance, z: means over micro-batches), summed over the stages:
        the same on every rank of the pipeline."""
        args, target, kwargs = self._inputs(micro_batches)
        self._lm_scale = lm_scale
        self.model.aux_scale = 1.0 / self.n_microbatches
        self.model.aux_sums.zero_()
        losses: list[torch.Tensor] = []
        self.model.return_hidden = self.loss_chunk_tokens > 0
        try:
            self.schedule.step(*args, target=target, losses=losses, return_outputs=False, **kwargs)
        finally:
            self.model.return_hidden = False
        return self._stats(losses)

    # -- evaluation: any batch shape, no schedule --------------------------------------------

    def _stage_rank(self, stage: int) -> int:
        return dist.get_global_rank(self.pp_group, stage % dist.get_world_size(self.pp_group))

    @torch.no_grad()
    def forward(self, tokens_BS: torch.Tensor, doc_ids_BS: torch.Tensor | None) -> torch.Tensor | None:
        """One batch through every stage in turn (no overlap: for evaluation, whose batches need
        not have the schedule's shape). The logits_BSV on the rank holding the last stage, None
        elsewhere. Every rank of the pipeline must call it with the same batch."""
        chunk_of = {c.index: k for k, c in enumerate(self.model.chunks)}
        me = dist.get_rank()
        h_BSD = None
        for stage, chunk in sorted(chunk_of.items()):
            if stage > 0 and self._stage_rank(stage - 1) != me:
                h_BSD = torch.empty(*tokens_BS.shape, self.model.cfg.dim, dtype=self.act_dtype, device=self.device)
                dist.recv(h_BSD, src=self._stage_rank(stage - 1), group=self.pp_group)
            h_BSD = self.model(tokens_BS if stage == 0 else h_BSD, doc_ids_BS, chunk=chunk)
            if stage < self.n_stages - 1 and self._stage_rank(stage + 1) != me:
                dist.send(h_BSD.contiguous(), dst=self._stage_rank(stage + 1), group=self.pp_group)
        return h_BSD if self.has_last else None

    def forward_nll(
        self, tokens_BS: torch.Tensor, doc_ids_BS: torch.Tensor | None, targets_BS: torch.Tensor
    ) -> torch.Tensor:
        """Summed NLL of the batch (`training.evaluate.summed_nll`), the same on every rank of
        the pipeline: evaluate_model's `forward_nll`."""
        logits_BSV = self.forward(tokens_BS, doc_ids_BS)
        if logits_BSV is not None:
            total = summed_nll(logits_BSV, targets_BS)
        else:
            total = torch.zeros((), dtype=torch.float64, device=self.device)
        dist.all_reduce(total, group=self.pp_group)
        return total

    def gather_over_stages(self, per_layer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every stage's per-layer tensors (expert loads: each rank holds its own layers'), on
        every rank of the pipeline, for the metrics line. One small object all-gather."""
        parts: list[dict[str, torch.Tensor] | None] = [None] * dist.get_world_size(self.pp_group)
        dist.all_gather_object(parts, {name: t.cpu() for name, t in per_layer.items()}, group=self.pp_group)
        return {name: t for part in parts for name, t in part.items()}

    def _stats(self, losses: list[torch.Tensor]) -> torch.Tensor:
        lm = torch.stack(losses).sum().detach().double() if losses else self.model.aux_sums.new_zeros(())
        stats = torch.cat([lm.reshape(1), self.model.aux_sums / self.n_microbatches])
        # Only the last stage has the LM loss, each stage its own layers' aux losses.
        dist.all_reduce(stats, group=self.pp_group)
        return stats
