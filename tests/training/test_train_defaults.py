"""Per-preset optimiser defaults (training.train_config.PRESET_OPTIMIZER): the article's numbers
for moe-67b, larger LRs for the small presets, and explicit values always winning."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.recipe import ROUTER_LR_RATIO
from training.train_config import PRESET_OPTIMIZER, TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def _config(**data) -> TrainConfig:
    return TrainConfig.model_validate({"manifest": "m.json", "out_dir": "out", **data})


def test_moe_67b_keeps_the_articles_lr_and_warmup():
    opt = _config(preset="moe-67b", steps=100_000).optimizer
    assert (opt.lr, opt.router_lr, opt.schedule.warmup_steps) == (1e-4, 2e-4, 3000)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_small_presets_take_their_own_peak_lr(preset):
    opt = _config(preset=preset, steps=50_000).optimizer
    assert opt.lr == PRESET_OPTIMIZER[preset]["lr"] > 1e-4
    assert opt.router_lr == pytest.approx(ROUTER_LR_RATIO * opt.lr)
    assert opt.schedule.warmup_steps == PRESET_OPTIMIZER[preset]["warmup_steps"]
    assert opt.schedule.total_steps == 50_000


def test_warmup_is_capped_at_a_tenth_of_a_short_run():
    opt = _config(preset="tiny", steps=60).optimizer
    assert opt.schedule.warmup_steps == 6 and opt.schedule.total_steps == 60


def test_explicit_values_win():
    opt = _config(preset="tiny", steps=100, optimizer={"lr": 5e-4}).optimizer
    assert (opt.lr, opt.router_lr) == (5e-4, pytest.approx(1e-3))  # the ratio follows the given lr
    opt = _config(preset="tiny", steps=100, optimizer={"lr": 5e-4, "router_lr": 5e-4,
                                                       "schedule": {"warmup_steps": 3}}).optimizer
    assert (opt.router_lr, opt.schedule.warmup_steps) == (5e-4, 3)


def test_shipped_configs_need_no_lr_override():
    ablation = yaml.safe_load((ROOT / "curation/configs/ablation-demo.yaml").read_text())
    assert "optimizer" not in ablation["train"]
    from flywheel.demo import DEMO_TRAINING

    assert "optimizer" not in DEMO_TRAINING


def test_the_old_preset_name_still_works_with_a_warning():
    """`seed-67b` (the article's 67B MoE, before it was named for what it is) maps to `moe-67b`."""
    with pytest.warns(FutureWarning, match="'seed-67b' is deprecated: use 'moe-67b'"):
        cfg = _config(preset="seed-67b", steps=100_000)
    assert cfg.preset == "moe-67b" and cfg.optimizer.lr == _config(preset="moe-67b", steps=100_000).optimizer.lr
