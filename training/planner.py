"""Capacity planner: memory per GPU, step time, MFU, days and failure cost of a training run.

    spec = PlanSpec(gpus=2048, gpu="a100-80g", tokens=2e12)
    plan = make_plan(preset("moe-67b", 128_000), spec)
    print_plan(plan)                        # rich tables; `flywheel plan` = plan_command(...)

The layout is the trainer's one mesh (training/parallel.py, torchtitan's): gpus = pp x dp x tp.
Dense weights are split over tp (Megatron tensor parallel with sequence parallel norms), by
layer over pp pipeline stages, and FSDP2-sharded over `fsdp` of the dp ranks (HSDP replicates
over dp / fsdp); routed experts are split over `ep` ranks of a stage and FSDP-sharded again over
the other dp x tp / ep. Without `tp`/`pp`/`ep` make_plan searches the layouts that keep the
global batch exactly (micro-batch x accumulation x dp = batch) and keeps the fastest that fits.

Conventions (each a `NOTE:` where it is used):
- FLOPs: 6 x active matmul parameters per token + 12 x layers x heads x head_dim x seq_len for
  attention (PaLM, arXiv 2204.02311 appendix B; torchtitan and training/parallel.py count the
  same). MFU = these model FLOPs / (GPUs x peak bf16 x time); recomputation is not counted.
- Memory: mixed-precision AdamW costs 16 bytes per parameter (ZeRO, arXiv 1910.02054 section
  3.1); activations are counted per token as in Korthikanti et al. (arXiv 2205.05198 section
  4.1), for SwiGLU experts and fused (flash) attention, which stores no seq x seq scores.
- Pipeline: 1F1B (Narayanan et al., arXiv 2104.04473) idles (p - 1) / (m + p - 1) of a step
  and holds up to p micro-batches on the first stage; TP costs 2 all-reduces per layer forward
  and 2 backward, on the critical path. PP point-to-point sends (one bf16 micro-batch x dim per
  stage boundary) are small next to these and not counted.
- Links: datasheet NVLink figures are both directions together; a collective moves data at the
  one-direction rate (half), times `comm_efficiency`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich.console import Console
from rich.table import Table

from training.config import PRESET_ALIASES, PRESETS, ModelConfig, canonical_preset, count_params, preset
from training.layout import Layout

GB = 1e9
SECONDS_PER_DAY = 86_400.0


class PlanError(ValueError):
    """A plan that cannot be made (unknown GPU, layout that does not divide): one line for the user."""


# ---------------------------------------------------------------------------------------------
# Hardware
# ---------------------------------------------------------------------------------------------


class GpuSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    bf16_tflops: float = Field(gt=0, description="dense bf16 tensor-core peak (no sparsity)")
    memory_gb: float = Field(gt=0)
    nvlink_gb_s: float = Field(gt=0, description="NVLink per GPU, both directions (datasheet figure)")
    ib_gbit_s: float = Field(gt=0, description="inter-node InfiniBand per GPU, one direction")
    gpus_per_node: int = Field(default=8, ge=1)


# Sources: NVIDIA A100 datasheet (SXM 80GB: 312 TFLOP/s bf16 dense, 80 GB HBM2e, NVLink 600 GB/s);
# NVIDIA H100 datasheet (SXM: 989 TFLOP/s bf16 dense, 80 GB HBM3, NVLink 900 GB/s); NVIDIA H200
# datasheet (SXM: 989 TFLOP/s, 141 GB HBM3e, NVLink 900 GB/s); H800 SXM = H100 compute with
# NVLink cut to 400 GB/s (DeepSeek-V3 report, arXiv 2412.19437 section 3.1). InfiniBand: DGX
# A100 has one 200 Gb/s HDR ConnectX-6 per GPU, DGX H100/H200 one 400 Gb/s NDR ConnectX-7
# per GPU (NVIDIA DGX user guides); DeepSeek's H800 nodes 400 Gb/s (50 GB/s) per GPU.
GPUS: dict[str, GpuSpec] = {
    "a100-80g": GpuSpec(name="A100-SXM-80GB", bf16_tflops=312, memory_gb=80, nvlink_gb_s=600, ib_gbit_s=200),
    "h100": GpuSpec(name="H100-SXM", bf16_tflops=989, memory_gb=80, nvlink_gb_s=900, ib_gbit_s=400),
    "h200": GpuSpec(name="H200-SXM", bf16_tflops=989, memory_gb=141, nvlink_gb_s=900, ib_gbit_s=400),
    "h800": GpuSpec(name="H800-SXM", bf16_tflops=989, memory_gb=80, nvlink_gb_s=400, ib_gbit_s=400),
}


def gpu_spec(name: str) -> GpuSpec:
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise PlanError(f"unknown GPU {name!r}; choose one of {', '.join(GPUS)}") from None


# ---------------------------------------------------------------------------------------------
# What the run is
# ---------------------------------------------------------------------------------------------


class PlanSpec(BaseModel):
    """A training run on a cluster; every knob that is an assumption says so in its description."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpus: int = Field(ge=1)
    gpu: str = "h100"
    tokens: float = Field(gt=0, description="training tokens")
    seq_len: int | None = Field(default=None, ge=1, description="None: the model's max_seq_len")
    # The article's batch: "4 million" tokens (1,024 sequences of 4,096).
    global_batch_tokens: int = Field(default=4 * 1024 * 1024, ge=1)
    micro_batch_seqs: int = Field(default=1, ge=1, description="sequences per pipeline per forward")
    # Layout: None searches (make_plan keeps the fastest layout that fits); a number forces it.
    tp: int | None = Field(default=None, ge=1, description="tensor parallel degree, inside a node")
    pp: int | None = Field(default=None, ge=1, description="pipeline stages, dividing the layers")
    pp_schedule: Literal["1f1b", "interleaved-1f1b", "gpipe"] = "1f1b"
    pp_virtual_stages: int = Field(default=2, ge=1, description="model chunks per rank (interleaved-1f1b)")
    fsdp: int | None = Field(default=None, ge=1, description="sharding degree of the dp ranks; None: all")
    ep: int | None = Field(default=None, ge=1, description="expert parallel degree; None: searched")
    activation_checkpointing: bool = True
    # FSDP2 set_requires_gradient_sync(False) until the last micro-batch, as training/parallel.py
    # does: one reduce-scatter per step, but with 2+ micro-batches the unsharded bf16 gradients
    # of every block stay resident. False: reduce-scatter after every micro-batch (torchtitan).
    accumulate_unsharded_grads: bool = True
    mfu: float | None = Field(default=None, gt=0, le=1, description="pin MFU instead of estimating it")
    # Assumption: the fraction of peak the matmuls and attention kernels reach while they run
    # (large GEMMs reach 0.6-0.8; small fine-grained experts and attention less).
    compute_efficiency: float = Field(default=0.55, gt=0, le=1)
    comm_efficiency: float = Field(default=0.8, gt=0, le=1, description="achieved / one-direction link rate")
    a2a_overlap: float = Field(default=0.0, ge=0, le=1, description="share of EP all-to-all hidden by compute")
    nvlink_gb_s: float | None = Field(default=None, gt=0, description="override the GPU's NVLink (both directions)")
    ib_gbit_s: float | None = Field(default=None, gt=0, description="override the GPU's InfiniBand per GPU")
    # The seed: "GPU failures were happening every 48 hours on average", "checkpointing (every 10
    # minutes)". MTBF here is of the whole job at this size, not of one GPU.
    mtbf_hours: float = Field(default=48.0, gt=0)
    checkpoint_interval_min: float = Field(default=10.0, gt=0)
    restart_min: float = Field(default=5.0, ge=0, description="detect, replace, reload: assumption")
    reserved_gb: float = Field(default=4.0, ge=0, description="CUDA context, NCCL buffers, fragmentation")

    @model_validator(mode="after")
    def _check(self) -> PlanSpec:
        gpu_spec(self.gpu)
        if self.fsdp is not None and self.gpus % self.fsdp:
            raise ValueError(f"fsdp={self.fsdp} must divide gpus={self.gpus}")
        return self


# ---------------------------------------------------------------------------------------------
# Model arithmetic
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamBreakdown:
    total: int
    active: int
    routed: int  # all routed experts of all MoE layers
    embedding_lookup: int  # the input table when untied (a gather, not a matmul)
    dense_layer: int  # one of the first n_dense_layers
    moe_layer_shared: int  # one MoE layer without its routed experts
    moe_layer_routed: int  # one MoE layer's routed experts
    head: int  # output projection (+ input table when untied) and final norm

    @property
    def non_routed(self) -> int:
        return self.total - self.routed


def param_breakdown(cfg: ModelConfig) -> ParamBreakdown:
    """Per-layer sizes from `count_params` itself, so the planner never disagrees with it."""
    moe = cfg.moe
    counts = count_params(cfg)

    def total_with(n_layers: int) -> int:
        # The first n_layers layers of this model (dense ones first), counted by count_params.
        dense = min(n_layers, moe.n_dense_layers)
        part = cfg.model_copy(update={"n_layers": n_layers, "moe": moe.model_copy(update={"n_dense_layers": dense})})
        return count_params(part)["total"]

    head = total_with(0)
    n_dense = moe.n_dense_layers
    dense_layer = (total_with(n_dense) - head) // n_dense if n_dense else 0
    moe_layer = total_with(n_dense + 1) - total_with(n_dense) if cfg.n_layers > n_dense else 0
    routed_one_layer = moe.n_routed_experts * 3 * cfg.dim * moe.expert_dim if moe_layer else 0
    return ParamBreakdown(
        total=counts["total"], active=counts["active"],
        routed=routed_one_layer * (cfg.n_layers - n_dense),
        embedding_lookup=0 if cfg.tie_embeddings else cfg.vocab_size * cfg.dim,
        dense_layer=dense_layer, moe_layer_shared=moe_layer - routed_one_layer,
        moe_layer_routed=routed_one_layer, head=head,
    )  # fmt: skip


def matmul_flops_per_token(active_params: float, embedding_lookup: float = 0.0) -> float:
    """Forward 2 + backward 4 FLOPs per active parameter and token; a lookup table costs none."""
    return 6.0 * (active_params - embedding_lookup)


def attention_flops_per_token(n_layers: int, n_heads: int, head_dim: int, seq_len: int,
                              v_head_dim: int | None = None) -> float:
    """Scores (QK^T) and mix (AV) for one token against seq_len keys, forward + backward.

    NOTE: PaLM's 12 L H Q T counts the causal mask's zeros too (FlashAttention skips them, so
    the hardware does about half); it is the convention MFU figures are quoted in. MLA has a
    wider query-key head than value head: (qk + v) / 2 replaces Q.
    """
    width = (head_dim + (v_head_dim or head_dim)) / 2
    return 12.0 * n_layers * n_heads * width * seq_len


def model_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    p = param_breakdown(cfg)
    # Norm weights are parameters but no matmul: 2 per layer plus the final norm.
    norms = cfg.dim * (2 * cfg.n_layers + 1)
    return (matmul_flops_per_token(p.active, p.embedding_lookup + norms)
            + attention_flops_per_token(cfg.n_layers, cfg.n_heads, cfg.attn_head_dim, seq_len))


def implied_mfu(flops_per_token: float, tokens: float, gpus: int, days: float, gpu: str) -> float:
    """The MFU a published run must have sustained: its model FLOPs over its GPU time at peak."""
    return flops_per_token * tokens / (gpus * days * SECONDS_PER_DAY * gpu_spec(gpu).bf16_tflops * 1e12)


def gpu_hours_at_mfu(flops_per_token: float, tokens: float, gpu: str, mfu: float) -> float:
    return flops_per_token * tokens / (gpu_spec(gpu).bf16_tflops * 1e12 * mfu) / 3600.0


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------


def activation_bytes_per_token(cfg: ModelConfig) -> dict[str, float]:
    """Bytes saved for backward per token: one dense layer, one MoE layer, and the loss.

    bf16 (2 bytes) tensors as autograd keeps them (Korthikanti et al. section 4.1 counting):
    attention = norm input and output, q/k/v, attention output (the o_proj input) and the
    fp32 log-sum-exp per head that fused attention keeps instead of the seq x seq scores;
    SwiGLU of width F = its input plus gate, up and gate*up outputs (2D + 6F bytes). A MoE layer
    keeps the fp32 router scores, and per routed copy (K' per token, balanced routing) the
    permuted input, the SwiGLU tensors and the expert output for the gate's gradient.
    """
    d, moe = cfg.dim, cfg.moe
    q, kv = cfg.n_heads * cfg.attn_head_dim, cfg.kv_heads * cfg.attn_head_dim
    attention = 2 * (2 * d + q + 2 * kv + q) + 4 * cfg.n_heads
    ffn_norm = 2 * 2 * d
    swiglu = lambda width: 6 * width  # noqa: E731  gate, up, gate*up in bf16
    dense = attention + ffn_norm + swiglu(cfg.dense_dim)
    k = moe.n_activated_experts
    routed = k * (2 * d + swiglu(moe.expert_dim) + 2 * d)
    shared = swiglu(moe.shared_dim) if moe.n_shared_experts else 0
    moe_layer = attention + ffn_norm + 4 * moe.n_routed_experts + routed + shared
    # training/model.py: cross_entropy(logits.float()): bf16 logits + fp32 copy + fp32 log-softmax.
    loss = 10 * cfg.vocab_size
    return {"dense_layer": dense, "moe_layer": moe_layer, "layer_input": 2 * d, "loss": loss}


# ---------------------------------------------------------------------------------------------
# Layout: tensor x pipeline x data parallel for dense weights, expert parallel for experts
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanLayout(Layout):
    """The trainer's `training.layout.Layout` (gpus = pp x dp_replicate x dp_shard x tp, tp
    innermost inside a node, then the dp ranks, then the stages) with the planner's names:
    fsdp = dp_shard, replicas = dp_replicate, and model chunks per pipeline rank.

    Dense weights are split by tp (Megatron: attention by heads, FFN by width, embedding and
    head by vocabulary), by layer over pp stages, and FSDP-sharded over `fsdp` of the dp ranks
    (HSDP: dp / fsdp replicas). Routed experts: by stage, then over `ep` of a stage's ranks (ep
    divides fsdp x tp: it borrows those ranks), FSDP-sharded over the other efsdp = dp x tp / ep
    (torchtitan's (pp, efsdp, ep)).
    """

    virtual_stages: int = 1  # model chunks per pipeline rank (interleaved 1F1B)

    @classmethod
    def of(cls, tp: int, pp: int, dp: int, fsdp: int, ep: int, virtual_stages: int = 1) -> PlanLayout:
        return cls(world=tp * pp * dp, ep=ep, tp=tp, pp=pp, dp_replicate=dp // fsdp, virtual_stages=virtual_stages)

    @property
    def fsdp(self) -> int:
        return self.dp_shard

    @property
    def replicas(self) -> int:
        return self.dp_replicate

    def describe(self) -> str:
        replicas = f" x{self.replicas} replicas" if self.replicas > 1 else ""
        return (f"TP {self.tp} x PP {self.pp} x DP {self.dp} (FSDP {self.fsdp}{replicas}), "
                f"EP {self.ep} x expert FSDP {self.efsdp}")


@dataclass(frozen=True)
class Stage:
    """The layers one pipeline rank holds; the first also holds the embedding, the last the head."""

    index: int
    dense_layers: int
    moe_layers: int
    first: bool
    last: bool

    @property
    def layers(self) -> int:
        return self.dense_layers + self.moe_layers


def pipeline_stages(cfg: ModelConfig, pp: int) -> list[Stage]:
    """Equal runs of layers, dense ones first. NOTE: an interleaved rank holds v chunks spread
    over the model; counted here as its L / pp contiguous layers (the same sizes)."""
    per, n_dense = cfg.n_layers // pp, cfg.moe.n_dense_layers
    stages = []
    for i in range(pp):
        dense = max(0, min((i + 1) * per, n_dense) - i * per)
        stages.append(Stage(i, dense, per - dense, first=i == 0, last=i == pp - 1))
    return stages


def stage_params(cfg: ModelConfig, p: ParamBreakdown, stage: Stage) -> tuple[float, float]:
    """(dense, routed) parameters of a stage, before any TP, EP or FSDP split."""
    dense = stage.dense_layers * p.dense_layer + stage.moe_layers * p.moe_layer_shared
    if stage.first:
        # A tied table lives on the first and the last stage when they differ (two copies).
        dense += p.embedding_lookup or (0 if stage.last else cfg.vocab_size * cfg.dim)
    if stage.last:
        dense += p.head - p.embedding_lookup  # output projection (the table when tied) + final norm
    return dense, stage.moe_layers * p.moe_layer_routed


def stage_flops_per_token(cfg: ModelConfig, p: ParamBreakdown, stage: Stage, seq_len: int) -> float:
    """Model FLOPs per token of one stage; over all stages they add up to model_flops_per_token.

    The head sits on the last stage only: for moe-67b it costs as much as 3 layers, so the last
    stage paces a pipeline of equal layer counts.
    """
    d, moe = cfg.dim, cfg.moe
    routed_active = p.moe_layer_routed * moe.n_activated_experts / moe.n_routed_experts
    dense_matmul, moe_matmul = p.dense_layer - 2 * d, p.moe_layer_shared + routed_active - 2 * d  # norms: no matmul
    head_matmul = p.head - p.embedding_lookup - d
    n_moe = cfg.n_layers - moe.n_dense_layers
    all_matmul = 6.0 * (moe.n_dense_layers * dense_matmul + n_moe * moe_matmul + head_matmul)
    attention_per_layer = (model_flops_per_token(cfg, seq_len) - all_matmul) / cfg.n_layers
    matmul = stage.dense_layers * dense_matmul + stage.moe_layers * moe_matmul + (head_matmul if stage.last else 0)
    return 6.0 * matmul + stage.layers * attention_per_layer


def bubble_fraction(pp: int, micro_batches: int, virtual_stages: int = 1) -> float:
    """Share of a step the pipeline idles: (p - 1) / (m + p - 1) for GPipe and 1F1B; an
    interleaved schedule with v chunks per rank shrinks the fill and drain v-fold (Narayanan et
    al. 2021, arXiv 2104.04473 sections 2.2.1-2.2.2: bubble / ideal time = (p - 1) / (v m))."""
    fill = (pp - 1) / virtual_stages
    return fill / (micro_batches + fill)


def layers_in_flight(schedule: str, pp: int, rank: int, micro_batches: int, virtual_stages: int,
                     layers_per_stage: int) -> float:
    """Layer x micro-batch activations a pipeline rank holds at its peak.

    1F1B: rank r runs pp - r forwards before its first backward (Narayanan et al. section 2.2.1),
    so the first rank holds pp micro-batches of its L / pp layers: L layers in all. GPipe: all
    m. Interleaved: Megatron's warm-up of 2 (pp - r - 1) + (v - 1) pp chunks, plus one, of
    L / (pp v) layers each; on the first rank L (1 + (pp - 1) / (pp v)) (Korthikanti et al.
    2022, arXiv 2205.05198 section 4.2.3).
    """
    if pp == 1:
        return layers_per_stage
    if schedule == "gpipe":
        return micro_batches * layers_per_stage
    if schedule == "1f1b":
        return min(micro_batches, pp - rank) * layers_per_stage
    chunks = min(micro_batches * virtual_stages, 2 * (pp - rank - 1) + (virtual_stages - 1) * pp + 1)
    return chunks * layers_per_stage / virtual_stages


def tp_allreduce_bytes_per_token(cfg: ModelConfig, tp: int) -> float:
    """Bytes one GPU sends per token and layer pass for Megatron TP: 2 all-reduces of a bf16 token
    (after attention and after the FFN), ring all-reduce sending 2 (t - 1) / t of it. Sequence
    parallelism swaps each for a reduce-scatter + all-gather pair: the same bytes (Korthikanti
    et al. section 4.2.2). Forward 2, backward 2, a recomputed forward 2 more."""
    return 2 * (2 * cfg.dim) * 2 * (tp - 1) / tp


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------


@dataclass
class Memory:
    """Bytes per GPU, by item."""

    items: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.items.values())


@dataclass
class Timing:
    hw_flops_per_token: float
    compute_s: float  # busy time of the slowest stage, bubble excluded
    tp_bytes: float
    tp_s: float
    fsdp_bytes: float
    fsdp_s: float
    hsdp_bytes: float  # gradient all-reduce across HSDP replicas
    hsdp_s: float
    a2a_bytes: float
    a2a_s: float
    bubble: float  # share of the step the pipeline idles
    step_s: float
    mfu: float
    tokens_per_gpu_s: float
    days: float
    modelled_step_s: float  # step_s before a pinned MFU overrides it: what layouts are ranked by


@dataclass
class Plan:
    cfg: ModelConfig
    spec: PlanSpec
    gpu: GpuSpec
    params: ParamBreakdown
    seq_len: int
    layout: PlanLayout
    micro_batch_tokens: int
    accumulation: int  # micro-batches per step per pipeline (m)
    global_batch_tokens: int
    model_flops_per_token: float
    memory: dict[bool, Memory]  # by activation checkpointing on/off, of the fullest stage
    memory_stage: dict[bool, int]  # which stage that is
    timing: dict[bool, Timing]
    failures: dict[str, float]
    notes: list[str] = field(default_factory=list)
    alternatives: list[Plan] = field(default_factory=list, repr=False)  # other layouts, fastest first
    layouts_considered: int = 1

    @property
    def fsdp(self) -> int:
        return self.layout.fsdp

    @property
    def ep(self) -> int:
        return self.layout.ep

    @property
    def tp(self) -> int:
        return self.layout.tp

    @property
    def pp(self) -> int:
        return self.layout.pp

    @property
    def chosen(self) -> Timing:
        return self.timing[self.spec.activation_checkpointing]

    @property
    def chosen_memory(self) -> Memory:
        return self.memory[self.spec.activation_checkpointing]

    @property
    def fits(self) -> bool:
        return self.chosen_memory.total <= self.gpu.memory_gb * GB

    @property
    def gpu_days(self) -> float:
        return self.chosen.days * self.spec.gpus


def _link_bytes_per_s(gb_s: float, efficiency: float) -> float:
    return gb_s * GB * efficiency


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_layouts(cfg: ModelConfig, spec: PlanSpec, gpu: GpuSpec) -> list[PlanLayout]:
    """Every layout of spec.gpus that keeps the global batch exactly: tp a power of 2 inside a
    node dividing the heads, pp dividing the layers, dp = gpus / (tp pp) dividing the batch's
    sequences into micro-batches, ep dividing the experts and the fsdp x tp ranks of a stage.
    Values given in the spec are forced; a forced value that cannot work is a PlanError."""
    seq = spec.seq_len or cfg.max_seq_len
    n, moe = spec.gpus, cfg.moe
    v = spec.pp_virtual_stages if spec.pp_schedule == "interleaved-1f1b" else 1
    if spec.global_batch_tokens % seq:
        raise PlanError(f"global batch of {spec.global_batch_tokens:,} tokens is not a whole number of "
                        f"{seq:,}-token sequences")
    batch_seqs = spec.global_batch_tokens // seq
    if spec.tp is not None and (spec.tp > gpu.gpus_per_node or cfg.n_heads % spec.tp):
        raise PlanError(f"tp={spec.tp} must divide the {cfg.n_heads} heads and stay inside a node "
                        f"of {gpu.gpus_per_node} GPUs")
    if spec.pp is not None and cfg.n_layers % (spec.pp * v):
        raise PlanError(f"pp={spec.pp} x {v} chunks per rank must divide the {cfg.n_layers} layers")
    if spec.ep is not None and moe.n_routed_experts % spec.ep:
        raise PlanError(f"ep={spec.ep} must divide the {moe.n_routed_experts} experts")
    tps = [spec.tp] if spec.tp else [t for t in (1, 2, 4, 8, 16, 32) if t <= gpu.gpus_per_node and cfg.n_heads % t == 0]
    pps = [spec.pp] if spec.pp else [p for p in _divisors(cfg.n_layers) if cfg.n_layers % (p * v) == 0]
    layouts = []
    for tp in tps:
        for pp in pps:
            if n % (tp * pp):
                continue
            dp = n // (tp * pp)
            fsdp = spec.fsdp or dp
            if batch_seqs % (dp * spec.micro_batch_seqs) or dp % fsdp:
                continue
            eps = [spec.ep] if spec.ep else _divisors(moe.n_routed_experts)
            layouts += [PlanLayout.of(tp, pp, dp, fsdp, ep, v) for ep in eps if (fsdp * tp) % ep == 0]
    if not layouts:
        forced = ", ".join(f"{k}={getattr(spec, k)}" for k in ("tp", "pp", "fsdp", "ep") if getattr(spec, k))
        raise PlanError(
            f"no layout of {n:,} GPUs keeps the global batch of {batch_seqs:,} x {seq:,}-token sequences"
            f"{' with ' + forced if forced else ''}: dp = gpus / (tp x pp) must divide {batch_seqs:,} / "
            f"{spec.micro_batch_seqs} micro-batch sequences (and fsdp divide dp, ep divide fsdp x tp)")
    return layouts


def make_plan(cfg: ModelConfig, spec: PlanSpec) -> Plan:
    """The fastest layout that fits memory (by the step-time model below), the global batch kept.

    With tp and pp both given the plan is that layout's even if it does not fit (notes say so);
    a search that finds nothing that fits is a PlanError naming the leanest layout it tried.
    """
    gpu = gpu_spec(spec.gpu)
    p = param_breakdown(cfg)
    plans = [plan_for_layout(cfg, spec, layout, p) for layout in candidate_layouts(cfg, spec, gpu)]
    fitting = sorted((x for x in plans if x.fits), key=lambda x: (x.chosen.modelled_step_s, x.chosen_memory.total))
    forced = spec.tp is not None and spec.pp is not None
    if not fitting and not forced:
        lean = min(plans, key=lambda x: x.chosen_memory.total)
        raise PlanError(f"no layout of {spec.gpus:,} x {gpu.name} fits {cfg.n_layers} layers / "
                        f"{p.total / 1e9:,.1f}B parameters: the leanest, {lean.layout.describe()}, needs "
                        f"{lean.chosen_memory.total / GB:,.1f} GB per GPU of {gpu.memory_gb:g}")
    ranked = fitting or sorted(plans, key=lambda x: x.chosen.modelled_step_s)
    best = ranked[0]
    best.alternatives = ranked[1:]
    best.layouts_considered = len(plans)
    return best


def stage_memory(cfg: ModelConfig, spec: PlanSpec, p: ParamBreakdown, layout: PlanLayout, stage: Stage,
                 micro_batches: int, ac: bool) -> Memory:
    """Bytes per GPU of one pipeline stage's rank, by item."""
    L = layout
    dense, routed = stage_params(cfg, p, stage)
    # NOTE: 16 bytes per parameter (fp32 master 4 + fp32 gradient 4 + AdamW m, v 8), dense
    # weights split tp x fsdp ways, experts ep x efsdp = dp x tp ways. Norms and routers are
    # replicated over tp, not split: under 0.1% of a layer, counted as split.
    shard = dense / (L.tp * L.fsdp) + routed / (L.ep * L.efsdp)
    root = stage_params(cfg, p, Stage(stage.index, 0, 0, stage.first, stage.last))[0] / L.tp
    layer_units = [u for u, count in ((p.dense_layer / L.tp, stage.dense_layers),
                                      (p.moe_layer_shared / L.tp + p.moe_layer_routed / L.ep, stage.moe_layers))
                   if count]  # fmt: skip
    unit = max(layer_units, default=0.0)
    whole = dense / L.tp + routed / L.ep  # the stage's share of an unsharded TP x EP rank
    # Gathered bf16: the root (kept through the step) + the current and the prefetched block; under
    # PP the whole stage (torchtitan keeps it gathered: no all-gather per micro-batch).
    gathered = 2 * (root + 2 * unit) if L.pp == 1 else 2 * whole
    # Backward holds a block's unsharded bf16 gradients until its reduce-scatter; accumulating
    # them unsharded over micro-batches (always, under PP) holds the whole stage's.
    grads = 2 * unit
    if micro_batches > 1 and (spec.accumulate_unsharded_grads or L.pp > 1):
        grads = 2 * whole
    act = activation_bytes_per_token(cfg)
    layer_bytes = (stage.dense_layers * act["dense_layer"] + stage.moe_layers * act["moe_layer"]) / stage.layers
    held = layers_in_flight(spec.pp_schedule, L.pp, stage.index, micro_batches, L.virtual_stages, stage.layers)
    biggest = max(act["dense_layer"] if stage.dense_layers else 0, act["moe_layer"] if stage.moe_layers else 0)
    # Sequence parallelism splits every saved tensor over tp (Korthikanti et al. eq. 5 with fused
    # attention: no 5as/h score term, sbh 34 / t). Full checkpointing keeps each layer's input
    # and recomputes one layer at a time.
    saved = held * act["layer_input"] + biggest if ac else held * layer_bytes
    micro_tokens = spec.micro_batch_seqs * (spec.seq_len or cfg.max_seq_len)
    return Memory({
        "parameters (fp32 master, sharded)": 4 * shard,
        "gradients (fp32, sharded)": 4 * shard,
        "AdamW m + v (fp32, sharded)": 8 * shard,
        "gathered bf16 parameters (FSDP units)": gathered,
        "unsharded bf16 gradients": grads,
        "activations": micro_tokens * saved / L.tp,
        # The last stage's logits, vocabulary-parallel over tp.
        "logits + loss": micro_tokens * act["loss"] / L.tp if stage.last else 0.0,
        "reserved (CUDA, NCCL, fragmentation)": spec.reserved_gb * GB,
    })  # fmt: skip


def fsdp_bytes_per_step(cfg: ModelConfig, spec: PlanSpec, p: ParamBreakdown, layout: PlanLayout, stage: Stage,
                        micro_batches: int) -> float:
    """Bytes one GPU of this stage sends in FSDP all-gathers and reduce-scatters per step.

    A ring all-gather / reduce-scatter over g ranks sends (g - 1) / g of the whole unit per GPU.
    Per micro-batch the blocks are gathered for forward and again for backward (resharded after
    forward), the root once (kept); under PP the stage once per step. Gradients reduce-scatter in
    fp32: twice the bytes, once per step unless reduced after every micro-batch.
    """
    L, f, ef = layout, layout.fsdp, layout.efsdp
    dense, routed = stage_params(cfg, p, stage)
    root = stage_params(cfg, p, Stage(stage.index, 0, 0, stage.first, stage.last))[0]
    root_bytes = 2 * root / L.tp * (f - 1) / f
    block_bytes = 2 * (dense - root) / L.tp * (f - 1) / f + 2 * routed / L.ep * (ef - 1) / ef
    reshard = L.pp == 1
    gathers = micro_batches * (2 * block_bytes + root_bytes) if reshard else block_bytes + root_bytes
    reduces = micro_batches if reshard and not spec.accumulate_unsharded_grads else 1
    return gathers + reduces * 2 * (block_bytes + root_bytes)


def hsdp_bytes_per_step(cfg: ModelConfig, p: ParamBreakdown, layout: PlanLayout, stage: Stage) -> float:
    """Bytes one GPU sends per step all-reducing its fp32 dense gradient shard across the
    dp / fsdp HSDP replicas (ring: 2 (r - 1) / r). Experts are FSDP-sharded over the replicas
    too (efsdp = dp x tp / ep, as in the trainer): no replica all-reduce for them."""
    r = layout.replicas
    dense, _ = stage_params(cfg, p, stage)
    return 4 * dense / (layout.tp * layout.fsdp) * 2 * (r - 1) / r


def step_timing(cfg: ModelConfig, spec: PlanSpec, p: ParamBreakdown, layout: PlanLayout, micro_batches: int,
                ac: bool) -> Timing:
    """Step time of the slowest stage: compute, TP and EP collectives, the bubble, exposed FSDP."""
    gpu, L, moe = gpu_spec(spec.gpu), layout, cfg.moe
    seq = spec.seq_len or cfg.max_seq_len
    stages = pipeline_stages(cfg, L.pp)
    tokens_per_pipeline = spec.global_batch_tokens / L.dp  # through every stage of a pipeline per step
    nvlink = _link_bytes_per_s((spec.nvlink_gb_s or gpu.nvlink_gb_s) / 2, spec.comm_efficiency)
    ib = _link_bytes_per_s((spec.ib_gbit_s or gpu.ib_gbit_s) / 8, spec.comm_efficiency)
    gpn = gpu.gpus_per_node
    # An fsdp group spans tp x fsdp consecutive ranks: wider than a node, each GPU's IB rail paces it.
    fsdp_bytes = max(fsdp_bytes_per_step(cfg, spec, p, L, s, micro_batches) for s in stages)
    fsdp_s = fsdp_bytes / (nvlink if L.tp * L.fsdp <= gpn else ib)
    hsdp_bytes = max(hsdp_bytes_per_step(cfg, p, L, s) for s in stages)
    hsdp_s = hsdp_bytes / (nvlink if L.tp * L.dp <= gpn else ib)

    # NOTE: full activation checkpointing reruns every forward: 8 instead of 6 FLOPs per
    # parameter and token of hardware work, for the same model FLOPs.
    recompute = 4 / 3 if ac else 1
    mflops = model_flops_per_token(cfg, seq)
    slowest_flops = max(stage_flops_per_token(cfg, p, s, seq) for s in stages)
    peak = gpu.bf16_tflops * 1e12
    # The slowest stage's share of its pipeline's tokens, split over its tp GPUs.
    compute_s = slowest_flops * recompute * tokens_per_pipeline / L.tp / (peak * spec.compute_efficiency)
    # TP: inside a node, on the critical path (no overlap assumed).
    passes = 6 if ac else 4
    tp_bytes = passes / 2 * stages[0].layers * tokens_per_pipeline * tp_allreduce_bytes_per_token(cfg, L.tp)
    tp_s = tp_bytes / nvlink
    # EP: each token's K' copies go out (dispatch) and come back (combine), forward and backward,
    # and again in the recomputed forward; under SP a GPU routes its 1 / tp of the tokens.
    # (ep - 1) / ep of them leave the GPU; the peers inside the node over NVLink, the others over
    # InfiniBand, both at once.
    moe_layers = max(s.moe_layers for s in stages)
    a2a_bytes = (passes * moe_layers * tokens_per_pipeline / L.tp * moe.n_activated_experts * 2 * cfg.dim
                 * (L.ep - 1) / L.ep)
    in_node, out_node = min(L.ep, gpn) - 1, L.ep - min(L.ep, gpn)
    a2a_s = max(a2a_bytes * in_node / max(L.ep - 1, 1) / nvlink,
                a2a_bytes * out_node / max(L.ep - 1, 1) / ib) if L.ep > 1 else 0.0
    # The pipeline idles `bubble` of the step; FSDP prefetch overlaps its collectives with
    # compute, and what does not fit under it is exposed.
    bubble = bubble_fraction(L.pp, micro_batches, L.virtual_stages)
    busy = compute_s + tp_s + a2a_s * (1 - spec.a2a_overlap)
    step_s = modelled = busy / (1 - bubble) + max(0.0, fsdp_s + hsdp_s - compute_s)
    tokens_per_gpu_step = spec.global_batch_tokens / spec.gpus
    if spec.mfu is not None:
        step_s = mflops * tokens_per_gpu_step / (peak * spec.mfu)
    tps = tokens_per_gpu_step / step_s
    return Timing(hw_flops_per_token=mflops * recompute, compute_s=compute_s, tp_bytes=tp_bytes, tp_s=tp_s,
                  fsdp_bytes=fsdp_bytes, fsdp_s=fsdp_s, hsdp_bytes=hsdp_bytes, hsdp_s=hsdp_s, a2a_bytes=a2a_bytes,
                  a2a_s=a2a_s, bubble=bubble,
                  step_s=step_s, mfu=mflops * tokens_per_gpu_step / (peak * step_s), tokens_per_gpu_s=tps,
                  modelled_step_s=modelled, days=spec.tokens / (tps * spec.gpus) / SECONDS_PER_DAY)


def plan_for_layout(cfg: ModelConfig, spec: PlanSpec, layout: PlanLayout, p: ParamBreakdown | None = None) -> Plan:
    """Memory per GPU (the fullest stage) and step time of one layout that keeps the global batch."""
    gpu = gpu_spec(spec.gpu)
    p = p or param_breakdown(cfg)
    seq = spec.seq_len or cfg.max_seq_len
    # Batch: each pipeline (a TP group per stage) takes micro_batch_seqs whole sequences per
    # forward; m micro-batches per step, which 1F1B also uses to fill the pipeline.
    micro_tokens = spec.micro_batch_seqs * seq
    accum = spec.global_batch_tokens // (layout.dp * micro_tokens)
    if accum * layout.dp * micro_tokens != spec.global_batch_tokens:
        raise PlanError(f"{layout.describe()} does not keep the global batch of {spec.global_batch_tokens:,} tokens")

    stages = pipeline_stages(cfg, layout.pp)
    memory, memory_stage, notes = {}, {}, []
    for ac in (False, True):
        by_stage = [stage_memory(cfg, spec, p, layout, s, accum, ac) for s in stages]
        memory_stage[ac] = max(range(layout.pp), key=lambda i: by_stage[i].total)
        memory[ac] = by_stage[memory_stage[ac]]
        if memory[ac].total > gpu.memory_gb * GB:
            stage = f" (pipeline stage {memory_stage[ac]})" if layout.pp > 1 else ""
            notes.append(f"does not fit with activation checkpointing {'on' if ac else 'off'}: "
                         f"{memory[ac].total / GB:,.1f} GB > {gpu.memory_gb:g} GB per GPU{stage}")
    timing = {ac: step_timing(cfg, spec, p, layout, accum, ac) for ac in (False, True)}
    chosen = timing[spec.activation_checkpointing]
    failures = failure_cost(chosen.days * 24, spec.mtbf_hours, spec.checkpoint_interval_min, spec.restart_min)
    return Plan(cfg=cfg, spec=spec, gpu=gpu, params=p, seq_len=seq, layout=layout, micro_batch_tokens=micro_tokens,
                accumulation=accum, global_batch_tokens=spec.global_batch_tokens,
                model_flops_per_token=model_flops_per_token(cfg, seq), memory=memory, memory_stage=memory_stage,
                timing=timing, failures=failures, notes=notes)


def failure_cost(train_hours: float, mtbf_hours: float, interval_min: float, restart_min: float) -> dict[str, float]:
    """Expected cost of failures for a run needing `train_hours` of failure-free time.

    A failure lands on average halfway through a checkpoint interval, so it costs interval / 2
    of recomputed work plus the restart. Over the wall-clock run, failures keep coming at 1 per
    MTBF (also during recomputation), so wall = train / (1 - loss per failure / MTBF).
    """
    per_failure_h = interval_min / 60 / 2 + restart_min / 60
    if per_failure_h >= mtbf_hours:
        raise PlanError(f"each failure costs {per_failure_h:.2f} h, more than the MTBF of {mtbf_hours} h")
    wall_h = train_hours / (1 - per_failure_h / mtbf_hours)
    return {"per_failure_h": per_failure_h, "failures": wall_h / mtbf_hours, "lost_h": wall_h - train_hours,
            "wall_h": wall_h, "goodput": train_hours / wall_h}


# ---------------------------------------------------------------------------------------------
# Published runs: what the same arithmetic says about them
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceRun:
    name: str
    gpu: str
    gpu_hours: float
    tokens: float
    flops_per_token: float
    source: str

    @property
    def mfu(self) -> float:
        return implied_mfu(self.flops_per_token, self.tokens, 1, self.gpu_hours / 24, self.gpu)


def reference_runs() -> list[ReferenceRun]:
    seed = preset("moe-67b", 128_000)
    return [
        # "About 55 days on 2,048 A100 GPUs", 2T tokens, 16.7B active (the article).
        ReferenceRun("the article, 67B MoE", "a100-80g", 2048 * 55 * 24, 2e12,
                     matmul_flops_per_token(16.7e9) + attention_flops_per_token(60, 56, 128, 4096),
                     "the article (its model: moe-67b preset, seq 4096 assumed)"),
        # Llama 2 paper (arXiv 2307.09288) Table 2: 70B, 1,720,320 A100-80GB GPU-hours, 2T
        # tokens; 80 layers, 64 heads of 128, context 4,096. Dense: all 70B are active.
        ReferenceRun("Llama 2 70B (dense)", "a100-80g", 1_720_320, 2e12,
                     matmul_flops_per_token(70e9) + attention_flops_per_token(80, 64, 128, 4096),
                     "arXiv 2307.09288 Table 2"),
        # DeepSeek-V3 (arXiv 2412.19437) Table 1: pre-training 2,664K H800 GPU-hours (2,788K
        # with context extension and post-training) for 14.8T tokens; 37B active; 61 layers of
        # MLA with 128 heads, query-key head 192, value head 128; sequence 4,096.
        ReferenceRun("DeepSeek-V3 pre-training", "h800", 2_664_000, 14.8e12,
                     matmul_flops_per_token(37e9) + attention_flops_per_token(61, 128, 192, 4096, v_head_dim=128),
                     "arXiv 2412.19437 Table 1"),
        # This repository's moe-67b preset at the article's budget, from its own config.
        ReferenceRun("moe-67b preset (this repo)", "a100-80g", 2048 * 55 * 24, 2e12,
                     model_flops_per_token(seed, 4096), "training/config.py moe_67b"),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Command
# ---------------------------------------------------------------------------------------------


def _preset(name: str, vocab_size: int | None) -> ModelConfig:
    name = canonical_preset(name)
    if name not in PRESETS:
        raise PlanError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    if vocab_size is None:  # moe-67b has the article's 128k; the small presets get 32k
        return PRESETS[name]() if name == "moe-67b" else preset(name, 32_000)
    return preset(name, vocab_size)


def load_model_config(spec: str, vocab_size: int | None = None) -> ModelConfig:
    """A preset name (`moe-67b`) or a YAML file: a ModelConfig (bare or under `model:`), or a
    training config (`preset:` plus `model:` overrides and `seq_len`, as TrainConfig reads it)."""
    if spec in PRESETS or spec in PRESET_ALIASES:
        return _preset(spec, vocab_size)
    path = Path(spec)
    if not path.is_file():
        raise PlanError(f"{spec!r} is neither a preset ({', '.join(PRESETS)}) nor a file")

    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise PlanError(f"{path}: a model config is a mapping")
    if "preset" in data:
        # TrainConfig.build_model_config without importing torch: preset, then overrides.
        base = _preset(data["preset"], vocab_size).model_dump()
        overrides = dict(data.get("model") or {})
        moe = {**base["moe"], **overrides.pop("moe", {})}
        seq_len = int(data.get("seq_len") or 0)
        data = {**base, **overrides, "moe": moe}
        data["max_seq_len"] = max(data["max_seq_len"], seq_len)
    elif isinstance(data.get("model"), dict):
        data = data["model"]
    if vocab_size is not None:
        data = {**data, "vocab_size": vocab_size}
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise PlanError(f"{path}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def parse_count(text: str | float | int) -> float:
    """'2T', '14.8T', '500B', '3e11' -> a number."""
    if isinstance(text, (int, float)):
        return float(text)
    units = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
    s = text.strip().upper().replace(",", "").replace("_", "")
    try:
        return float(s[:-1]) * units[s[-1]] if s and s[-1] in units else float(s)
    except ValueError:
        raise PlanError(f"not a count: {text!r} (examples: 2T, 500B, 3e11)") from None


def print_plan(plan: Plan, console=None) -> None:
    """The plan as rich tables: layout, memory per GPU, time, failures, reference runs."""

    console = console or Console()
    s, p, g = plan.spec, plan.params, plan.gpu

    layout = Table(title=f"Plan: {s.gpus:,} x {g.name}, {s.tokens / 1e12:g}T tokens", show_header=False)
    layout.add_column(style="bold")
    layout.add_column(justify="right")
    for k, v in [
        ("parameters total / active", f"{p.total / 1e9:,.2f}B / {p.active / 1e9:,.2f}B"),
        ("routed expert parameters", f"{p.routed / 1e9:,.2f}B"),
        ("layout", plan.layout.describe()),
        ("sequence / micro-batch", f"{plan.seq_len:,} / {plan.micro_batch_tokens:,} tokens per pipeline"),
        ("global batch", f"{plan.global_batch_tokens:,} tokens ({plan.accumulation} micro-batches x "
                         f"{plan.layout.dp:,} pipelines)"),
        ("pipeline", f"{plan.pp} stages, {s.pp_schedule}" + (f" x {plan.layout.virtual_stages} chunks"
                     if plan.layout.virtual_stages > 1 else "") + f", bubble {plan.chosen.bubble:.1%}"),
        ("TP all-reduce per token per layer pass", f"{tp_allreduce_bytes_per_token(plan.cfg, plan.tp) / 1e3:,.1f} kB"),
        ("model FLOPs per token", f"{plan.model_flops_per_token:.3e}"),
        ("links (per GPU, both directions)",
         f"NVLink {s.nvlink_gb_s or g.nvlink_gb_s:g} GB/s, IB {s.ib_gbit_s or g.ib_gbit_s:g} Gb/s"),
    ]:
        layout.add_row(k, v)
    console.print(layout)

    stages = None if plan.pp == 1 else (f"the fullest of stages 0-{plan.pp - 1}: {plan.memory_stage[False]} "
                                        f"with AC off, {plan.memory_stage[True]} with AC on")
    mem = Table(title=f"Memory per GPU (GB of {g.memory_gb:g})", caption=stages)
    mem.add_column("item")
    mem.add_column("AC off", justify="right")
    mem.add_column("AC on", justify="right")
    for item in plan.memory[False].items:
        mem.add_row(item, f"{plan.memory[False].items[item] / GB:,.2f}", f"{plan.memory[True].items[item] / GB:,.2f}")
    fits = {ac: "fits" if m.total <= g.memory_gb * GB else "DOES NOT FIT" for ac, m in plan.memory.items()}
    mem.add_row("[bold]total", f"[bold]{plan.memory[False].total / GB:,.2f} ({fits[False]})",
                f"[bold]{plan.memory[True].total / GB:,.2f} ({fits[True]})", end_section=True)
    console.print(mem)

    t = Table(title="Time" + (f" (MFU pinned at {s.mfu:.0%})" if s.mfu else ""))
    t.add_column("per step, per GPU")
    t.add_column("AC off", justify="right")
    t.add_column("AC on", justify="right")
    off, on = plan.timing[False], plan.timing[True]
    rows = [
        ("hardware FLOPs per token", lambda x: f"{x.hw_flops_per_token:.3e}"),
        (f"compute at {s.compute_efficiency:.0%} of peak (s)", lambda x: f"{x.compute_s:,.2f}"),
        ("TP all-reduce, NVLink (GB / s)", lambda x: f"{x.tp_bytes / GB:,.1f} / {x.tp_s:,.2f}"),
        ("pipeline bubble (share of step)", lambda x: f"{x.bubble:.1%}"),
        ("FSDP all-gather + reduce-scatter (GB / s)", lambda x: f"{x.fsdp_bytes / GB:,.1f} / {x.fsdp_s:,.2f}"),
        ("HSDP all-reduce across replicas (GB / s)", lambda x: f"{x.hsdp_bytes / GB:,.1f} / {x.hsdp_s:,.2f}"),
        ("EP all-to-all (GB / s)", lambda x: f"{x.a2a_bytes / GB:,.1f} / {x.a2a_s:,.2f}"),
        ("step time (s)", lambda x: f"{x.step_s:,.2f}"),
        ("tokens / s / GPU", lambda x: f"{x.tokens_per_gpu_s:,.0f}"),
        ("MFU", lambda x: f"{x.mfu:.1%}"),
        ("days to train (no failures)", lambda x: f"{x.days:,.1f}"),
        ("GPU-days", lambda x: f"{x.days * s.gpus:,.0f}"),
    ]
    for name, fmt in rows:
        t.add_row(name, fmt(off), fmt(on))
    console.print(t)

    f = plan.failures
    fail = Table(title=f"Failures (AC {'on' if s.activation_checkpointing else 'off'})", show_header=False)
    fail.add_column(style="bold")
    fail.add_column(justify="right")
    for k, v in [
        ("MTBF of the job / checkpoint interval / restart",
         f"{s.mtbf_hours:g} h / {s.checkpoint_interval_min:g} min / {s.restart_min:g} min"),
        ("expected loss per failure (interval/2 + restart)", f"{f['per_failure_h'] * 60:,.1f} min"),
        ("expected failures", f"{f['failures']:,.1f}"),
        ("work lost", f"{f['lost_h']:,.1f} h ({f['lost_h'] * s.gpus / 24:,.0f} GPU-days)"),
        ("days with failures", f"{f['wall_h'] / 24:,.2f}"),
        ("goodput", f"{f['goodput']:.2%}"),
    ]:
        fail.add_row(k, v)
    console.print(fail)

    ref = Table(title="Sanity check: MFU implied by published runs (same FLOPs arithmetic)")
    for col in ("run", "GPU", "GPU-hours", "tokens", "FLOPs/token", "implied MFU"):
        ref.add_column(col, justify="left" if col in ("run", "GPU") else "right")
    for r in reference_runs():
        ref.add_row(r.name, gpu_spec(r.gpu).name, f"{r.gpu_hours:,.0f}", f"{r.tokens / 1e12:g}T",
                    f"{r.flops_per_token:.3e}", f"{r.mfu:.1%}")
    ref.add_row("this plan", g.name, f"{plan.gpu_days * 24:,.0f}", f"{s.tokens / 1e12:g}T",
                f"{plan.model_flops_per_token:.3e}", f"{plan.chosen.mfu:.1%}")
    console.print(ref)
    print_alternatives(plan, console)
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


def print_alternatives(plan: Plan, console, rows: int = 6) -> None:
    """Why this layout: it and the next fastest ones, with the terms that set their step time."""
    if not plan.alternatives:
        return
    ac = plan.spec.activation_checkpointing
    fitting = sum(x.fits for x in [plan, *plan.alternatives])
    t = Table(title=f"Layouts: {plan.layouts_considered} keep the batch, {fitting} fit; fastest first "
                    f"(AC {'on' if ac else 'off'})")
    for col in ("TP", "PP", "DP", "EP", "m", "bubble", "compute s", "TP s", "a2a s", "FSDP s", "GB / GPU", "step s",
                "MFU", "vs chosen"):
        t.add_column(col, justify="right")
    for x in [plan, *plan.alternatives][:rows]:
        c, lay = x.timing[ac], x.layout
        slower = c.modelled_step_s / plan.chosen.modelled_step_s - 1
        t.add_row(str(lay.tp), str(lay.pp), f"{lay.dp:,}", str(lay.ep), str(x.accumulation), f"{c.bubble:.0%}",
                  f"{c.compute_s:,.2f}", f"{c.tp_s:,.2f}", f"{c.a2a_s:,.2f}", f"{c.fsdp_s:,.2f}",
                  f"{x.memory[ac].total / GB:,.1f}", f"{c.modelled_step_s:,.2f}", f"{c.mfu:.1%}",
                  "chosen" if x is plan else f"+{slower:.1%}")
    console.print(t)


def plan_command(config: str, gpus: int, gpu: str = "h100", tokens: str | float = "2T", *,
                 vocab_size: int | None = None, console=None, **options) -> Plan:
    """`flywheel plan CONFIG --gpus N --gpu KIND --tokens T [options]`: make and print a plan.

    `options` are further PlanSpec fields (tp, pp, ep, fsdp, seq_len, mfu, mtbf_hours, ...). Raises
    PlanError (and pydantic's ValidationError for bad option values) before printing anything.
    """

    cfg = load_model_config(config, vocab_size)
    try:
        spec = PlanSpec(gpus=gpus, gpu=gpu, tokens=parse_count(tokens), **options)
    except ValidationError as e:
        err = e.errors()[0]
        where, msg = ".".join(map(str, err["loc"])), err["msg"].removeprefix("Value error, ")
        raise PlanError(f"{where}: {msg}" if where else msg) from None
    plan = make_plan(cfg, spec)
    print_plan(plan, console)
    return plan


__all__ = [
    "GPUS", "GpuSpec", "PlanSpec", "Plan", "PlanError", "ParamBreakdown", "ReferenceRun", "make_plan",
    "PlanLayout", "Stage", "candidate_layouts", "plan_for_layout", "pipeline_stages", "stage_params",
    "stage_flops_per_token",
    "stage_memory", "fsdp_bytes_per_step", "hsdp_bytes_per_step", "step_timing", "bubble_fraction", "layers_in_flight",
    "tp_allreduce_bytes_per_token",
    "plan_command", "print_plan", "param_breakdown", "model_flops_per_token", "matmul_flops_per_token",
    "attention_flops_per_token", "activation_bytes_per_token", "implied_mfu", "gpu_hours_at_mfu",
    "failure_cost", "reference_runs", "load_model_config", "parse_count",
]
