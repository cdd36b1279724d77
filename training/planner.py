"""Capacity planner: memory per GPU, step time, MFU, days and failure cost of a training run.

    spec = PlanSpec(gpus=2048, gpu="a100-80g", tokens=2e12)
    plan = make_plan(preset("moe-67b", 128_000), spec)
    print_plan(plan)                        # rich tables; `flywheel plan` = plan_command(...)

The layout is the trainer's (training/parallel.py): FSDP2 shards every parameter over `fsdp`
ranks (HSDP replicates over gpus / fsdp), routed experts are split over `ep` ranks and
FSDP-sharded again over fsdp / ep. No tensor or pipeline parallelism, so every GPU holds at
least one whole sequence per micro-batch.

Conventions (each a `NOTE:` where it is used):
- FLOPs: 6 x active matmul parameters per token + 12 x layers x heads x head_dim x seq_len for
  attention (PaLM, arXiv 2204.02311 appendix B; torchtitan and training/parallel.py count the
  same). MFU = these model FLOPs / (GPUs x peak bf16 x time); recomputation is not counted.
- Memory: mixed-precision AdamW costs 16 bytes per parameter (ZeRO, arXiv 1910.02054 section
  3.1); activations are counted per token as in Korthikanti et al. (arXiv 2205.05198 section
  4.1), for SwiGLU experts and fused (flash) attention, which stores no seq x seq scores.
- Links: datasheet NVLink figures are both directions together; a collective moves data at the
  one-direction rate (half), times `comm_efficiency`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich.console import Console
from rich.table import Table

from training.config import PRESET_ALIASES, PRESETS, ModelConfig, canonical_preset, count_params, preset

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
    micro_batch_seqs: int = Field(default=1, ge=1, description="sequences per GPU per forward")
    fsdp: int | None = Field(default=None, ge=1, description="sharding degree; None: all GPUs")
    ep: int | None = Field(default=None, ge=1, description="expert parallel degree; None: up to a node")
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
    compute_s: float
    fsdp_bytes: float
    fsdp_s: float
    a2a_bytes: float
    a2a_s: float
    step_s: float
    mfu: float
    tokens_per_gpu_s: float
    days: float


@dataclass
class Plan:
    cfg: ModelConfig
    spec: PlanSpec
    gpu: GpuSpec
    params: ParamBreakdown
    seq_len: int
    fsdp: int
    ep: int
    micro_batch_tokens: int
    accumulation: int
    global_batch_tokens: int
    model_flops_per_token: float
    memory: dict[bool, Memory]  # by activation checkpointing on/off
    timing: dict[bool, Timing]
    failures: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def chosen(self) -> Timing:
        return self.timing[self.spec.activation_checkpointing]

    @property
    def gpu_days(self) -> float:
        return self.chosen.days * self.spec.gpus


def _default_ep(n_experts: int, fsdp: int, gpus_per_node: int) -> int:
    # Within a node when possible: all-to-all then rides NVLink.
    return max(d for d in range(1, min(gpus_per_node, fsdp) + 1) if n_experts % d == 0 and fsdp % d == 0)


def _link_bytes_per_s(gb_s: float, efficiency: float) -> float:
    return gb_s * GB * efficiency


def make_plan(cfg: ModelConfig, spec: PlanSpec) -> Plan:
    gpu = gpu_spec(spec.gpu)
    p = param_breakdown(cfg)
    seq = spec.seq_len or cfg.max_seq_len
    n, moe = spec.gpus, cfg.moe
    fsdp = spec.fsdp or n
    ep = spec.ep or _default_ep(moe.n_routed_experts, fsdp, gpu.gpus_per_node)
    if moe.n_routed_experts % ep or fsdp % ep:
        raise PlanError(f"ep={ep} must divide the {moe.n_routed_experts} experts and fsdp={fsdp}")
    notes: list[str] = []

    # Batch: every GPU takes micro_batch_seqs whole sequences per forward.
    micro_tokens = spec.micro_batch_seqs * seq
    accum = max(1, math.ceil(spec.global_batch_tokens / (n * micro_tokens)))
    batch = accum * n * micro_tokens
    if batch != spec.global_batch_tokens:
        notes.append(f"global batch {spec.global_batch_tokens:,} -> {batch:,} tokens: without TP/PP each of "
                     f"{n:,} GPUs takes {spec.micro_batch_seqs} x {seq:,}-token sequence(s) per micro-batch")
    tokens_per_gpu_step = batch / n

    # --- memory per GPU -------------------------------------------------------------------
    n_moe = cfg.n_layers - moe.n_dense_layers
    # NOTE: 16 bytes per parameter, sharded fsdp ways (experts: ep x fsdp/ep = fsdp ways too):
    # fp32 master weights 4 + fp32 gradients 4 + AdamW m and v 4 + 4 (FSDP2 keeps the sharded
    # parameters fp32 and gathers bf16 copies: MixedPrecisionPolicy(bf16, reduce fp32)).
    shard = p.total / fsdp
    # The largest FSDP unit gathered in bf16: a block (its experts only the ep-local ones) or
    # the root (embeddings + head, kept gathered through the step by reshard_after_forward=False).
    moe_unit = p.moe_layer_shared + p.moe_layer_routed / ep
    block_unit = max(p.dense_layer if moe.n_dense_layers else 0, moe_unit if n_moe else 0)
    gathered = 2 * (p.head + 2 * block_unit)  # root + current block + the prefetched next one
    # Backward also holds a block's unsharded bf16 gradients until its reduce-scatter.
    grad_buffer = 2 * block_unit
    if spec.accumulate_unsharded_grads and accum > 1:
        grad_buffer = 2 * (p.head + moe.n_dense_layers * p.dense_layer + n_moe * moe_unit)
    act = activation_bytes_per_token(cfg)
    layers_bytes = moe.n_dense_layers * act["dense_layer"] + n_moe * act["moe_layer"]
    biggest_layer = max(act["dense_layer"] if moe.n_dense_layers else 0, act["moe_layer"] if n_moe else 0)
    memory = {}
    for ac in (False, True):
        # With full activation checkpointing a block keeps only its input; backward recomputes
        # one block at a time, so one block's activations are live on top.
        saved = cfg.n_layers * act["layer_input"] + biggest_layer if ac else layers_bytes
        memory[ac] = Memory({
            "parameters (fp32 master, sharded)": 4 * shard,
            "gradients (fp32, sharded)": 4 * shard,
            "AdamW m + v (fp32, sharded)": 8 * shard,
            "gathered bf16 parameters (FSDP units)": gathered,
            "unsharded bf16 gradients": grad_buffer,
            "activations": micro_tokens * saved,
            "logits + loss": micro_tokens * act["loss"],
            "reserved (CUDA, NCCL, fragmentation)": spec.reserved_gb * GB,
        })  # fmt: skip

    # --- time per step ----------------------------------------------------------------------
    nvlink = _link_bytes_per_s((spec.nvlink_gb_s or gpu.nvlink_gb_s) / 2, spec.comm_efficiency)
    ib = _link_bytes_per_s((spec.ib_gbit_s or gpu.ib_gbit_s) / 8, spec.comm_efficiency)
    gpn = gpu.gpus_per_node
    # FSDP: ring all-gather / reduce-scatter over the fsdp group sends (g - 1) / g of the whole
    # unit per GPU; a group wider than a node is paced by each GPU's InfiniBand rail.
    efsdp = fsdp // ep
    root_bytes = 2 * p.head * (fsdp - 1) / fsdp
    block_bytes = (2 * (p.total - p.routed - p.head) * (fsdp - 1) / fsdp
                   + 2 * (p.routed / ep) * (efsdp - 1) / efsdp)
    # Per micro-batch: blocks are gathered for forward and again for backward (resharded after
    # forward), the root once (kept gathered). Gradients reduce-scatter in fp32: twice the bytes.
    reduce_count = 1 if spec.accumulate_unsharded_grads else accum
    fsdp_bytes = accum * (2 * block_bytes + root_bytes) + reduce_count * 2 * (block_bytes + root_bytes)
    fsdp_s = fsdp_bytes / (nvlink if fsdp <= gpn else ib)

    mflops = model_flops_per_token(cfg, seq)
    peak = gpu.bf16_tflops * 1e12
    timing = {}
    for ac in (False, True):
        # NOTE: full activation checkpointing reruns every forward: 8 instead of 6 FLOPs per
        # parameter and token of hardware work, for the same model FLOPs.
        hw_flops = mflops * (4 / 3 if ac else 1)
        compute_s = hw_flops * tokens_per_gpu_step / (peak * spec.compute_efficiency)
        # EP: each token's K' copies go out (dispatch) and come back (combine), forward and
        # backward, and again in the recomputed forward. (ep - 1) / ep of them leave the GPU;
        # the peers inside the node are reached over NVLink, the others over InfiniBand,
        # both at once.
        passes = 6 if ac else 4
        a2a_bytes = (passes * n_moe * tokens_per_gpu_step * moe.n_activated_experts * 2 * cfg.dim
                     * (ep - 1) / ep)
        in_node = min(ep, gpn) - 1
        out_node = ep - min(ep, gpn)
        a2a_s = max(a2a_bytes * in_node / max(ep - 1, 1) / nvlink,
                    a2a_bytes * out_node / max(ep - 1, 1) / ib) if ep > 1 else 0.0
        # FSDP prefetch overlaps its collectives with compute; what does not fit is exposed.
        step_s = compute_s + a2a_s * (1 - spec.a2a_overlap) + max(0.0, fsdp_s - compute_s)
        if spec.mfu is not None:
            step_s = mflops * tokens_per_gpu_step / (peak * spec.mfu)
        mfu = mflops * tokens_per_gpu_step / (peak * step_s)
        tps = tokens_per_gpu_step / step_s
        timing[ac] = Timing(hw_flops_per_token=hw_flops, compute_s=compute_s, fsdp_bytes=fsdp_bytes, fsdp_s=fsdp_s,
                            a2a_bytes=a2a_bytes, a2a_s=a2a_s, step_s=step_s, mfu=mfu, tokens_per_gpu_s=tps,
                            days=spec.tokens / (tps * n) / SECONDS_PER_DAY)

    chosen = timing[spec.activation_checkpointing]
    failures = failure_cost(chosen.days * 24, spec.mtbf_hours, spec.checkpoint_interval_min, spec.restart_min)
    for ac, mem in memory.items():
        if mem.total > gpu.memory_gb * GB:
            notes.append(f"does not fit with activation checkpointing {'on' if ac else 'off'}: "
                         f"{mem.total / GB:,.1f} GB > {gpu.memory_gb:g} GB per GPU")
    return Plan(cfg=cfg, spec=spec, gpu=gpu, params=p, seq_len=seq, fsdp=fsdp, ep=ep, micro_batch_tokens=micro_tokens,
                accumulation=accum, global_batch_tokens=batch, model_flops_per_token=mflops, memory=memory,
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
        ("layout", f"FSDP {plan.fsdp} (x{s.gpus // plan.fsdp} replicas), EP {plan.ep}, "
                   f"expert FSDP {plan.fsdp // plan.ep}"),
        ("sequence / micro-batch", f"{plan.seq_len:,} / {plan.micro_batch_tokens:,} tokens per GPU"),
        ("global batch", f"{plan.global_batch_tokens:,} tokens ({plan.accumulation} micro-batches)"),
        ("model FLOPs per token", f"{plan.model_flops_per_token:.3e}"),
        ("links (per GPU, both directions)",
         f"NVLink {s.nvlink_gb_s or g.nvlink_gb_s:g} GB/s, IB {s.ib_gbit_s or g.ib_gbit_s:g} Gb/s"),
    ]:
        layout.add_row(k, v)
    console.print(layout)

    mem = Table(title=f"Memory per GPU (GB of {g.memory_gb:g})")
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
        ("FSDP all-gather + reduce-scatter (GB / s)", lambda x: f"{x.fsdp_bytes / GB:,.1f} / {x.fsdp_s:,.2f}"),
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
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


def plan_command(config: str, gpus: int, gpu: str = "h100", tokens: str | float = "2T", *,
                 vocab_size: int | None = None, console=None, **options) -> Plan:
    """`flywheel plan CONFIG --gpus N --gpu KIND --tokens T [options]`: make and print a plan.

    `options` are further PlanSpec fields (fsdp, ep, seq_len, mfu, mtbf_hours, ...). Raises
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
    "plan_command", "print_plan", "param_breakdown", "model_flops_per_token", "matmul_flops_per_token",
    "attention_flops_per_token", "activation_bytes_per_token", "implied_mfu", "gpu_hours_at_mfu",
    "failure_cost", "reference_runs", "load_model_config", "parse_count",
]
