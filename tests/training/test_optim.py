"""The optimiser recipe: schedule shapes, parameter groups, clipping and GC control."""

from __future__ import annotations

import gc
import math

import pytest

from training.config import tiny
from training.optim import GCController, RecipeScheduler, build_optimizer, param_groups
from training.recipe import OptimizerConfig, ScheduleConfig, lr_at, wd_at

SCHED = ScheduleConfig(total_steps=1000, warmup_steps=100, final_fraction=0.1, min_lr_ratio=0.1)
PEAK = 1e-4


def test_seed_defaults():
    cfg = OptimizerConfig(schedule=ScheduleConfig(total_steps=100_000))
    assert (cfg.lr, cfg.router_lr, cfg.betas, cfg.max_grad_norm) == (1e-4, 2e-4, (0.9, 0.95), 1.0)
    assert cfg.schedule.warmup_steps == 3000 and cfg.schedule.final_fraction == 0.1


def test_lr_warmup_is_linear_up_to_the_peak():
    warm = [lr_at(s, SCHED, PEAK) for s in range(100)]
    assert warm[0] == pytest.approx(PEAK / 100)
    assert all(b - a == pytest.approx(PEAK / 100) for a, b in zip(warm, warm[1:]))
    assert warm[-1] == pytest.approx(PEAK)


def test_lr_cosine_then_constant_floor():
    assert lr_at(100, SCHED, PEAK) == pytest.approx(PEAK)
    decay = [lr_at(s, SCHED, PEAK) for s in range(100, 900)]
    assert all(b < a for a, b in zip(decay, decay[1:]))
    # Halfway through the cosine the LR is halfway between peak and floor.
    assert lr_at(500, SCHED, PEAK) == pytest.approx((PEAK + 0.1 * PEAK) / 2)
    assert lr_at(300, SCHED, PEAK) == pytest.approx(0.1 * PEAK + 0.9 * PEAK * 0.5 * (1 + math.cos(math.pi / 4)))
    assert SCHED.decay_end == 900
    assert [lr_at(s, SCHED, PEAK) for s in range(900, 1000)] == pytest.approx([0.1 * PEAK] * 100)
    # continuous at the phase boundary
    assert lr_at(899, SCHED, PEAK) == pytest.approx(0.1 * PEAK, rel=1e-3)


def test_weight_decay_rises_over_the_final_tenth():
    assert {wd_at(s, SCHED, 0.1, 3.0) for s in range(900)} == {0.1}
    final = [wd_at(s, SCHED, 0.1, 3.0) for s in range(900, 1000)]
    assert final[0] == pytest.approx(0.1)
    assert all(b > a for a, b in zip(final, final[1:]))
    assert final[-1] == pytest.approx(0.3)


def test_schedule_rejects_warmup_past_the_decay_phase():
    with pytest.raises(ValueError, match="warmup_steps"):
        ScheduleConfig(total_steps=1000, warmup_steps=3000)


def groups_by_name(model, **overrides):
    cfg = OptimizerConfig(schedule=SCHED, **overrides)
    return {g["name"]: g for g in param_groups(model, cfg)}


def names_in(model, group):
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_weight_decay_groups():
    model = tiny(64).model_copy(update={"qkv_bias": True}).build()
    groups = groups_by_name(model)
    no_decay, decay, router = (names_in(model, groups[k]) for k in ("no_decay", "decay", "router"))
    # every parameter exactly once
    assert len(no_decay) + len(decay) + len(router) == len(list(model.parameters()))
    assert not (no_decay & decay) and not (router & (decay | no_decay))

    assert all(n.endswith(("norm.weight", ".bias")) or n == "tok_embeddings.weight" for n in no_decay)
    assert "layers.0.attn_norm.weight" in no_decay and "layers.0.attn.q_proj.bias" in no_decay
    assert "tok_embeddings.weight" in no_decay and "output.weight" in decay
    assert "layers.0.ffn.experts.gate_proj" in decay
    assert router == {"layers.0.ffn.router.gate.weight", "layers.1.ffn.router.gate.weight"}
    assert groups["no_decay"]["weight_decay"] == 0.0
    assert (groups["decay"]["lr"], groups["decay"]["weight_decay"]) == (1e-4, 0.1)
    assert (groups["router"]["lr"], groups["router"]["weight_decay"]) == (2e-4, 0.1)

    assert "tok_embeddings.weight" in names_in(model, groups_by_name(model, decay_embeddings=True)["decay"])


def test_tied_embedding_is_grouped_once():
    model = tiny(64).model_copy(update={"tie_embeddings": True}).build()
    groups = groups_by_name(model)
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))
    assert "tok_embeddings.weight" in names_in(model, groups["no_decay"])


def test_scheduler_drives_every_group_and_resumes_from_its_step():
    model = tiny(64).build()
    cfg = OptimizerConfig(schedule=SCHED, wd_final_multiplier=2.0)
    opt = build_optimizer(model, cfg)
    sched = RecipeScheduler(opt, cfg)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"decay": pytest.approx(1e-6), "no_decay": pytest.approx(1e-6), "router": pytest.approx(2e-6)}
    for _ in range(950):
        sched.step()
    router_group = next(g for g in opt.param_groups if g["name"] == "router")
    assert router_group["lr"] == pytest.approx(lr_at(950, SCHED, 2e-4))
    assert router_group["weight_decay"] == pytest.approx(wd_at(950, SCHED, 0.1, 2.0))

    fresh = build_optimizer(model, cfg)
    resumed = RecipeScheduler(fresh, cfg)
    resumed.load_state_dict(sched.state_dict())
    assert [g["lr"] for g in fresh.param_groups] == [g["lr"] for g in opt.param_groups]
    assert [g["weight_decay"] for g in fresh.param_groups] == [g["weight_decay"] for g in opt.param_groups]


def test_gc_controller_disables_gc_and_collects_on_schedule():
    seen = []

    def on_gc(phase, info):
        if phase == "start":
            seen.append(info["generation"])

    was_enabled = gc.isenabled()
    gc.callbacks.append(on_gc)
    try:
        with GCController(every_n_steps=3) as ctl:
            assert not gc.isenabled()
            seen.clear()
            for step in range(1, 10):
                ctl.step(step)
            assert seen == [1, 1, 1]  # steps 3, 6, 9
            assert ctl.collections == 3
        assert gc.isenabled() == was_enabled
    finally:
        gc.callbacks.remove(on_gc)
        if was_enabled:
            gc.enable()
