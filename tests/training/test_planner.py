"""The capacity planner against hand arithmetic, the article and published training runs."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from training.config import ModelConfig, MoEConfig, count_params, preset, tiny
from training.planner import (
    GB,
    PlanError,
    PlanSpec,
    activation_bytes_per_token,
    attention_flops_per_token,
    bubble_fraction,
    failure_cost,
    gpu_hours_at_mfu,
    implied_mfu,
    layers_in_flight,
    load_model_config,
    make_plan,
    matmul_flops_per_token,
    model_flops_per_token,
    param_breakdown,
    parse_count,
    pipeline_stages,
    plan_command,
    reference_runs,
    stage_flops_per_token,
    tp_allreduce_bytes_per_token,
)


def llama2_70b() -> ModelConfig:
    """Llama 2 70B (arXiv 2307.09288) as a one-expert 'MoE': a dense SwiGLU of 28,672, GQA 8."""
    return ModelConfig(
        vocab_size=32_000, dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, max_seq_len=4096,
        moe=MoEConfig(n_routed_experts=1, n_activated_experts=1, n_shared_experts=0, expert_dim=28_672,
                      shared_expert_gate=False),
    )  # fmt: skip


def test_breakdown_adds_up_to_count_params():
    for cfg in (tiny(1000), preset("small", 32_000), preset("moe-67b", 128_000)):
        p = param_breakdown(cfg)
        n_dense = cfg.moe.n_dense_layers
        assert p.head + n_dense * p.dense_layer + (cfg.n_layers - n_dense) * (p.moe_layer_shared + p.moe_layer_routed) \
            == p.total == count_params(cfg)["total"]
    seed = param_breakdown(preset("moe-67b", 128_000))
    assert seed.routed == 60 * 64 * 3 * 7168 * 640
    assert seed.head == 2 * 128_000 * 7168 + 7168 and seed.embedding_lookup == 128_000 * 7168
    small = param_breakdown(preset("small", 32_000))  # tied embeddings, first layer dense
    assert small.head == 32_000 * 512 + 512 and small.embedding_lookup == 0
    assert small.dense_layer == 4 * 512 * 512 + 2 * 512 + 3 * 512 * (3 * 384)


def test_flops_conventions():
    # 6N per token, and PaLM's 12 L H Q T for attention (GPT-3 175B: 96 x 96 heads x 128, T 2048).
    assert matmul_flops_per_token(1e9) == 6e9
    assert attention_flops_per_token(96, 96, 128, 2048) == 12 * 96 * 96 * 128 * 2048
    # MLA: query-key head 192, value head 128 count as their mean.
    assert attention_flops_per_token(1, 1, 192, 10, v_head_dim=128) == 12 * 160 * 10


def test_seed_article_implies_single_digit_mfu():
    """2,048 A100 x 55 days for 2T tokens at 16.7B active: ~112,000 GPU-days, ~8% MFU."""
    flops = matmul_flops_per_token(16.7e9) + attention_flops_per_token(60, 56, 128, 4096)
    mfu = implied_mfu(flops, 2e12, 2048, 55, "a100-80g")
    assert 2048 * 55 == pytest.approx(112_000, rel=0.01)  # the article's "roughly 112,000 GPU-days"
    assert 0.06 < mfu < 0.09
    # The repo's moe-67b preset agrees with the article's own figures within 5%.
    preset_run = next(r for r in reference_runs() if r.name.startswith("moe-67b"))
    assert preset_run.mfu == pytest.approx(mfu, rel=0.05)


def test_llama2_70b_gpu_hours_at_stated_mfu_within_25_percent():
    """Published: 1,720,320 A100-80GB hours for 2T tokens (Llama 2 paper, Table 2)."""
    cfg = llama2_70b()
    assert count_params(cfg)["total"] == pytest.approx(68.98e9, rel=0.005)  # HF config: 68,976,648,192
    # Stated MFU 45%: dense Megatron-class training on A100 (Megatron-LM, arXiv 2104.04473: 44-52%).
    plan = make_plan(cfg, PlanSpec(gpus=2048, gpu="a100-80g", tokens=2e12, mfu=0.45))
    assert plan.gpu_days * 24 == pytest.approx(1_720_320, rel=0.25)
    # Pinned MFU means exactly model FLOPs / (peak x MFU).
    assert plan.gpu_days * 24 == pytest.approx(gpu_hours_at_mfu(plan.model_flops_per_token, 2e12, "a100-80g", 0.45))


def test_deepseek_v3_gpu_hours_at_stated_mfu_within_25_percent():
    """Published: 2,664K H800 hours of pre-training (2,788K in all) for 14.8T tokens, 37B active."""
    v3 = next(r for r in reference_runs() if r.name.startswith("DeepSeek-V3"))
    hours = gpu_hours_at_mfu(v3.flops_per_token, 14.8e12, "h800", 0.40)  # stated: 40% bf16-equivalent
    assert hours == pytest.approx(2_664_000, rel=0.25)
    assert hours == pytest.approx(2_788_000, rel=0.25)
    assert 0.35 < v3.mfu < 0.5


def test_activation_bytes_by_hand_for_tiny():
    cfg = tiny(1000)  # dim 64, 4 heads of 16, 8 experts of 32 top-2, 1 shared
    act = activation_bytes_per_token(cfg)
    attention = 2 * (2 * 64 + 64 + 2 * 64 + 64) + 4 * 4
    routed = 2 * (2 * 64 + 6 * 32 + 2 * 64)
    assert act["moe_layer"] == attention + 4 * 64 + 4 * 8 + routed + 6 * 32
    assert act["loss"] == 10 * 1000


def test_memory_items_and_activation_checkpointing():
    cfg = preset("moe-67b", 128_000)
    plan = make_plan(cfg, PlanSpec(gpus=64, gpu="h200", tokens=1e11, fsdp=64, ep=8))
    off, on = plan.memory[False].items, plan.memory[True].items
    # ZeRO (arXiv 1910.02054) section 3.1: mixed-precision Adam = 16 bytes per parameter, here
    # sharded 64 ways (its Figure 1: 7.5B over 64 GPUs -> 1.9 GB).
    state = sum(v for k, v in off.items() if k.endswith(", sharded)"))
    assert state == pytest.approx(16 * plan.params.total / 64)
    assert 16 * 7.5e9 / 64 / GB == pytest.approx(1.9, abs=0.05)
    act = activation_bytes_per_token(cfg)
    assert off["activations"] == 4096 * 60 * act["moe_layer"]
    assert on["activations"] == 4096 * (60 * 2 * 7168 + act["moe_layer"])
    assert on["activations"] < off["activations"] / 5
    assert plan.memory[True].total < plan.memory[False].total
    # EP shrinks the gathered expert buffers: ep=1 gathers all 64 experts of a layer.
    no_ep = make_plan(cfg, PlanSpec(gpus=64, gpu="h200", tokens=1e11, ep=1, tp=1, pp=1))
    assert no_ep.memory[True].items["gathered bf16 parameters (FSDP units)"] > \
        on["gathered bf16 parameters (FSDP units)"]


def test_communication_volumes_by_hand():
    cfg = preset("small", 32_000)
    spec = PlanSpec(gpus=16, gpu="h100", tokens=1e9, fsdp=16, ep=4, global_batch_tokens=16 * 1024,
                    activation_checkpointing=False)
    plan = make_plan(cfg, spec)
    p, t = plan.params, plan.timing[False]
    assert plan.accumulation == 1 and plan.micro_batch_tokens == 1024
    root = 2 * p.head * 15 / 16  # embeddings + head: gathered once, kept through backward
    blocks = 2 * (p.total - p.routed - p.head) * 15 / 16 + 2 * (p.routed / 4) * 3 / 4
    assert t.fsdp_bytes == pytest.approx(2 * blocks + root + 2 * (blocks + root))  # reduce in fp32
    # A group of 16 spans two 8-GPU nodes: paced by 400 Gb/s IB at 80%.
    assert t.fsdp_s == pytest.approx(t.fsdp_bytes / (400 / 8 * GB * 0.8))
    a2a = 4 * 7 * 1024 * 2 * 2 * 512 * 3 / 4  # 4 passes, 7 MoE layers, 1024 tokens, K'=2, bf16 x dim
    assert t.a2a_bytes == pytest.approx(a2a)
    assert t.a2a_s == pytest.approx(a2a / (900 / 2 * GB * 0.8))  # ep 4 stays inside a node
    assert make_plan(cfg, spec.model_copy(update={"ep": 1})).timing[False].a2a_bytes == 0
    # 4 micro-batches: reduce-scatter once per step (unsharded gradients kept, the trainer's way)
    # or after every micro-batch (gradients stay sharded).
    once = make_plan(cfg, spec.model_copy(update={"global_batch_tokens": 4 * 16 * 1024}))
    every = make_plan(cfg, spec.model_copy(update={"global_batch_tokens": 4 * 16 * 1024,
                                                   "accumulate_unsharded_grads": False}))
    assert once.accumulation == every.accumulation == 4
    assert once.timing[False].fsdp_bytes == pytest.approx(4 * (2 * blocks + root) + 2 * (blocks + root))
    assert every.timing[False].fsdp_bytes == pytest.approx(4 * (2 * blocks + root) + 4 * 2 * (blocks + root))
    grads = "unsharded bf16 gradients"
    assert every.memory[True].items[grads] == 2 * (p.moe_layer_shared + p.moe_layer_routed / 4)  # one block
    every_block = p.head + p.dense_layer + 7 * (p.moe_layer_shared + p.moe_layer_routed / 4)
    assert once.memory[True].items[grads] == 2 * every_block


def test_step_time_mfu_and_days_are_consistent():
    cfg = preset("moe-67b", 128_000)
    plan = make_plan(cfg, PlanSpec(gpus=2048, gpu="h100", tokens=2e12))
    for ac, t in plan.timing.items():
        assert t.step_s >= t.compute_s
        assert t.mfu == pytest.approx(plan.model_flops_per_token * plan.global_batch_tokens
                                      / (2048 * 989e12 * t.step_s))
        assert t.days == pytest.approx(2e12 / plan.global_batch_tokens * t.step_s / 86_400)
    # Recomputation costs hardware FLOPs, not model FLOPs.
    assert plan.timing[True].hw_flops_per_token == pytest.approx(plan.model_flops_per_token * 4 / 3)
    assert plan.timing[True].compute_s > plan.timing[False].compute_s
    # 2,048 GPUs and a 4M batch leave half a 4,096-token sequence per GPU: TP x PP >= 2 shares
    # each sequence between GPUs instead of doubling the batch (as the planner did before TP/PP).
    assert plan.global_batch_tokens == 4 * 1024 * 1024 and plan.tp * plan.pp >= 2 and not plan.notes


def test_failure_cost_for_the_seed_numbers():
    """A failure every 48 h, checkpoints every 10 min: a failure costs 5 min + restart."""
    cost = failure_cost(55 * 24, mtbf_hours=48, interval_min=10, restart_min=5)
    assert cost["per_failure_h"] == pytest.approx(10 / 60)
    assert cost["failures"] == pytest.approx(55 * 24 / 48, rel=0.01)
    assert cost["lost_h"] == pytest.approx(cost["failures"] * 10 / 60)
    assert cost["goodput"] == pytest.approx(1 - (10 / 60) / 48)
    with pytest.raises(PlanError):
        failure_cost(10, mtbf_hours=0.1, interval_min=10, restart_min=5)


def test_errors_are_plan_errors():
    cfg = preset("moe-67b", 128_000)
    with pytest.raises(PlanError, match="ep=3"):
        make_plan(cfg, PlanSpec(gpus=48, tokens=1e9, ep=3))
    with pytest.raises(PlanError, match="unknown GPU"):
        plan_command("moe-67b", 8, "v100", "1T", console=Console(file=io.StringIO()))
    with pytest.raises(PlanError, match="fsdp"):
        plan_command("moe-67b", 8, "h100", "1T", fsdp=3, console=Console(file=io.StringIO()))
    with pytest.raises(PlanError, match="neither a preset"):
        load_model_config("no-such-model")
    assert parse_count("14.8T") == 14.8e12 and parse_count("500B") == 5e11 and parse_count("3e11") == 3e11
    with pytest.raises(PlanError):
        parse_count("lots")


def test_yaml_model_config(tmp_path):
    (tmp_path / "m.yaml").write_text(
        "model:\n  vocab_size: 1000\n  dim: 64\n  n_layers: 2\n  n_heads: 4\n"
        "  moe: {n_routed_experts: 8, n_activated_experts: 2, expert_dim: 32}\n")
    assert load_model_config(str(tmp_path / "m.yaml")) == tiny(1000).model_copy(update={"max_seq_len": 2048})
    assert load_model_config(str(tmp_path / "m.yaml"), vocab_size=500).vocab_size == 500


def test_plan_command_prints_every_table():
    out = io.StringIO()
    plan = plan_command("moe-67b", 2048, "a100-80g", "2T", console=Console(file=out, width=160))
    text = out.getvalue()
    for title in ("Plan: 2,048 x A100-SXM-80GB", "Memory per GPU", "AC off", "AC on", "Time", "Failures",
                  "implied MFU", "the article, 67B MoE", "Llama 2 70B", "DeepSeek-V3", "this plan"):
        assert title in text
    assert "Layouts: " in text and "chosen" in text  # why: the runners-up and their step times
    assert plan.memory[True].total < 80 * GB


def test_training_config_yaml_is_a_model_config(tmp_path):
    """`flywheel plan run.yaml` with the trainer's own config: preset + overrides + seq_len."""
    (tmp_path / "run.yaml").write_text(
        "preset: moe-67b\nseq_len: 8192\nmodel: {n_layers: 30, moe: {n_routed_experts: 32}}\nsteps: 10\n")
    cfg = load_model_config(str(tmp_path / "run.yaml"))
    assert (cfg.n_layers, cfg.moe.n_routed_experts, cfg.max_seq_len, cfg.dim) == (30, 32, 8192, 7168)
    with pytest.raises(PlanError, match="unknown model preset"):
        (tmp_path / "bad.yaml").write_text("preset: gpt-5\n")
        load_model_config(str(tmp_path / "bad.yaml"))


# ---------------------------------------------------------------------------------------------
# Tensor and pipeline parallelism
# ---------------------------------------------------------------------------------------------


def test_pipeline_bubble_and_in_flight_micro_batches():
    """Narayanan et al. 2021 (arXiv 2104.04473): bubble / ideal time = (p - 1) / (v m)."""
    assert bubble_fraction(1, 8) == 0
    assert bubble_fraction(4, 12) == pytest.approx(3 / 15)
    assert bubble_fraction(2, 1) == pytest.approx(0.5)  # one micro-batch: each stage idles half the time
    for p, m, v in ((4, 12, 1), (8, 16, 2), (4, 8, 4)):
        b = bubble_fraction(p, m, v)
        assert b / (1 - b) == pytest.approx((p - 1) / (v * m))
    # 1F1B: rank r holds p - r micro-batches of its L / p layers (m permitting); GPipe all m.
    assert layers_in_flight("1f1b", 4, 0, 16, 1, 15) == 4 * 15
    assert layers_in_flight("1f1b", 4, 3, 16, 1, 15) == 15
    assert layers_in_flight("1f1b", 4, 0, 2, 1, 15) == 2 * 15
    assert layers_in_flight("gpipe", 4, 0, 16, 1, 15) == 16 * 15
    # Interleaved, first rank: Korthikanti et al. (arXiv 2205.05198) L (1 + (p - 1) / (p v)).
    assert layers_in_flight("interleaved-1f1b", 4, 0, 16, 2, 15) == pytest.approx(60 * (1 + 3 / 8))


def test_stage_flops_add_up_and_the_head_paces_the_last_stage():
    cfg = preset("moe-67b", 128_000)
    p = param_breakdown(cfg)
    for pp in (1, 4, 60):
        total = sum(stage_flops_per_token(cfg, p, s, 4096) for s in pipeline_stages(cfg, pp))
        assert total == pytest.approx(model_flops_per_token(cfg, 4096))
    first, *_, last = pipeline_stages(cfg, 4)
    head = 6 * (128_000 * 7168)  # the output projection; the input table is a lookup
    assert stage_flops_per_token(cfg, p, last, 4096) - stage_flops_per_token(cfg, p, first, 4096) == \
        pytest.approx(head)
    small = preset("small", 32_000)  # first layer dense: it lands on stage 0
    assert [(s.dense_layers, s.moe_layers) for s in pipeline_stages(small, 2)] == [(1, 3), (0, 4)]


def test_memory_split_by_tp_and_pp_by_hand():
    """moe-67b on 512 H100s as TP 2 x PP 4 x DP 64, EP 8: stage 0 holds layers 0-14 + the table."""
    cfg = preset("moe-67b", 128_000)
    spec = PlanSpec(gpus=512, gpu="h100", tokens=1e11, tp=2, pp=4, ep=8, activation_checkpointing=False)
    plan = make_plan(cfg, spec)
    p, lay = plan.params, plan.layout
    assert (lay.tp, lay.pp, lay.dp, lay.fsdp, lay.ep, lay.efsdp) == (2, 4, 64, 64, 8, 16)
    assert plan.accumulation == 1024 // 64 and plan.global_batch_tokens == 4 * 1024 * 1024
    assert plan.memory_stage[False] == 0  # 4 micro-batches in flight outweigh the last stage's logits
    items = plan.memory[False].items
    dense = 15 * p.moe_layer_shared + 128_000 * 7168  # + the embedding table
    routed = 15 * p.moe_layer_routed
    shard = dense / (2 * 64) + routed / (8 * 16)  # dense: tp x fsdp; experts: ep x efsdp
    assert items["parameters (fp32 master, sharded)"] == pytest.approx(4 * shard)
    assert items["AdamW m + v (fp32, sharded)"] == pytest.approx(8 * shard)
    # Under PP the whole stage stays gathered (bf16), and its gradients accumulate unsharded.
    assert items["gathered bf16 parameters (FSDP units)"] == pytest.approx(2 * (dense / 2 + routed / 8))
    assert items["unsharded bf16 gradients"] == pytest.approx(2 * (dense / 2 + routed / 8))
    # 1F1B: stage 0 holds 4 micro-batches of 15 layers; sequence parallel splits them over tp.
    act = activation_bytes_per_token(cfg)
    assert items["activations"] == pytest.approx(4096 * 4 * 15 * act["moe_layer"] / 2)
    assert items["logits + loss"] == 0
    # The same GPUs without TP/PP: every GPU keeps all 60 layers of its one micro-batch in flight.
    flat = make_plan(cfg, spec.model_copy(update={"tp": 1, "pp": 1}))
    assert flat.memory[False].items["activations"] == pytest.approx(4096 * 60 * act["moe_layer"])
    # TP all-reduce by hand: 4 per layer (2 forward, 2 backward) of a bf16 token, ring 2 (t - 1) / t.
    t = plan.timing[False]
    tokens_per_pipeline = 4 * 1024 * 1024 / 64
    assert t.tp_bytes == pytest.approx(4 * 15 * tokens_per_pipeline * 7168 * 2 * 2 * (2 - 1) / 2)
    assert t.tp_s == pytest.approx(t.tp_bytes / (900 / 2 * GB * 0.8))
    assert tp_allreduce_bytes_per_token(cfg, 1) == 0
    assert t.bubble == pytest.approx(3 / (16 + 3))
    assert t.hsdp_bytes == 0  # fsdp = dp: no replicas
    assert t.step_s == pytest.approx((t.compute_s + t.tp_s + t.a2a_s) / (1 - t.bubble) + max(0, t.fsdp_s - t.compute_s))


def test_article_layout_keeps_the_4m_batch_and_fits_80_gb():
    """The article: 2,048 A100s, 4M-token batches of 4,096-token sequences (1,024 per step)."""
    out = io.StringIO()
    plan = plan_command("moe-67b", 2048, "a100-80g", "2T", console=Console(file=out, width=200))
    lay = plan.layout
    assert plan.global_batch_tokens == 4_194_304 == plan.micro_batch_tokens * plan.accumulation * lay.dp
    assert lay.tp * lay.pp * lay.dp == 2048 and lay.tp * lay.pp >= 2
    assert plan.memory[True].total < 80 * GB and not plan.notes
    # The fastest of those that fit, by the same step-time model the table prints.
    assert all(plan.chosen.modelled_step_s <= x.chosen.modelled_step_s for x in plan.alternatives if x.fits)
    assert plan.layouts_considered > 10
    assert "global batch 4,194,304 -> 8,388,608" not in out.getvalue()


def test_forced_layouts_and_infeasible_ones():
    cfg = preset("moe-67b", 128_000)
    spec = PlanSpec(gpus=2048, gpu="a100-80g", tokens=2e12, tp=8, pp=4, ep=8)
    plan = make_plan(cfg, spec)
    assert (plan.tp, plan.pp, plan.layout.dp, plan.ep) == (8, 4, 64, 8) and plan.alternatives == []
    interleaved = make_plan(cfg, spec.model_copy(update={"pp_schedule": "interleaved-1f1b", "pp_virtual_stages": 3}))
    assert interleaved.chosen.bubble == pytest.approx(bubble_fraction(4, 16, 3))
    assert interleaved.chosen.bubble < plan.chosen.bubble
    with pytest.raises(PlanError, match="pp=4 x 2 chunks per rank must divide the 60 layers"):
        make_plan(cfg, spec.model_copy(update={"pp_schedule": "interleaved-1f1b"}))
    with pytest.raises(PlanError, match="tp=3 must divide the 56 heads"):
        make_plan(cfg, spec.model_copy(update={"tp": 3}))
    with pytest.raises(PlanError, match="tp=16 .* inside a node of 8"):
        make_plan(cfg, spec.model_copy(update={"tp": 16}))
    with pytest.raises(PlanError, match="pp=7 .* 60 layers"):
        make_plan(cfg, spec.model_copy(update={"pp": 7}))
    with pytest.raises(PlanError, match="no layout of 7 GPUs keeps the global batch of 1,024"):
        make_plan(cfg, PlanSpec(gpus=7, gpu="h100", tokens=1e9))
    with pytest.raises(PlanError, match="no layout of 8 x A100-SXM-80GB fits .* the leanest"):
        make_plan(cfg, PlanSpec(gpus=8, gpu="a100-80g", tokens=1e9))
    # A forced layout that does not fit is still planned, with the reason in its notes.
    tight = make_plan(cfg, PlanSpec(gpus=8, gpu="a100-80g", tokens=1e9, tp=8, pp=1))
    assert not tight.fits and "does not fit" in tight.notes[-1]


def test_plan_cli_forces_tp_and_pp():
    from typer.testing import CliRunner

    from flywheel.cli import app

    ok = CliRunner().invoke(app, ["plan", "moe-67b", "--gpus", "2048", "--gpu", "a100-80g", "--tp", "8", "--pp", "4"],
                            terminal_width=200)
    assert ok.exit_code == 0, ok.output
    assert "TP 8 x PP 4 x DP 64" in ok.output and "4,194,304 tokens" in ok.output
    bad = CliRunner().invoke(app, ["plan", "moe-67b", "--gpus", "2048", "--pp", "7"])
    assert bad.exit_code != 0 and "pp=7" in bad.output


def test_hsdp_replicas_all_reduce_the_dense_gradient_shard():
    """fsdp=16 of dp=64: 4 replicas all-reduce their fp32 dense gradient shards over IB; experts
    stay FSDP-sharded over all dp x tp / ep = 16 ranks of a stage, replicas included."""
    cfg = preset("moe-67b", 128_000)
    spec = PlanSpec(gpus=512, gpu="h100", tokens=1e11, tp=2, pp=4, ep=8, fsdp=16)
    plan = make_plan(cfg, spec)
    assert (plan.layout.replicas, plan.layout.efsdp) == (4, 16)
    p = plan.params
    dense_first = 15 * p.moe_layer_shared + 128_000 * 7168
    dense_last = 15 * p.moe_layer_shared + p.head - p.embedding_lookup
    t = plan.chosen
    assert t.hsdp_bytes == pytest.approx(4 * max(dense_first, dense_last) / (2 * 16) * 2 * 3 / 4)
    assert t.hsdp_s == pytest.approx(t.hsdp_bytes / (400 / 8 * GB * 0.8))
    assert make_plan(cfg, spec.model_copy(update={"fsdp": None})).chosen.hsdp_bytes == 0
