"""What a reward-model or DPO run is: its config, one field per knob. No torch here: the service
(api/posttrain_jobs.py) validates a reward_model or dpo job's config in its web process.

    RewardModelConfig(init_checkpoint="runs/sft", data="pairs.jsonl")       # training.reward_model trains it
    DPOConfig(init_checkpoint="runs/sft", data="pairs.jsonl", beta=0.1)     # training.dpo
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from training.recipe import ROUTER_LR_RATIO, OptimizerConfig
from training.train_config import CheckpointPolicy


class PreferenceConfig(CheckpointPolicy):
    """A reward-model or DPO run. One field per knob; the optimiser is the pretraining recipe's
    (`training.recipe.OptimizerConfig`) with fine-tuning defaults filled in by `_defaults`."""

    model_config = ConfigDict(extra="forbid")

    init_checkpoint: str = Field(description="checkpoint to start from: a step_* folder, checkpoints/ or a run folder")
    data: str = Field(description="training pairs: JSONL {prompt, chosen, rejected}, or a post-training manifest")
    eval_files: list[str] = Field(default_factory=list, description="held-out pairs (a manifest: its eval split)")
    out_dir: str = "runs/preference"
    tokenizer: str | None = Field(default=None, description="tokenizer.json (default: the init checkpoint's)")
    # A string prompt as the user turn of a chat (training.chat_format: what SFT trains on and PPO
    # generates from; curated preference records have string prompts), or as plain text ("plain":
    # a pretrained model, no chat template).
    prompt_format: Literal["chat", "plain"] = "chat"
    max_len: int = Field(default=256, ge=2, description="most tokens of prompt + answer")

    steps: int = Field(default=100, ge=1)
    global_batch_pairs: int = Field(default=16, ge=1, description="pairs per optimiser step, all ranks")
    micro_pairs: int = Field(default=8, ge=1, description="most pairs per rank per forward (2x rows)")
    seed: int = 0
    optimizer: OptimizerConfig
    # Dropout off (TRL's default for preference tuning): DPO's policy must equal its reference at
    # step 0, and a reward should not be noisier than its data.
    disable_dropout: bool = True

    workers: int = Field(default=1, ge=1, description="data-parallel ranks (Ray Train workers or local processes)")
    max_failures: int = Field(default=3, ge=0, description="worker-group restarts Ray Train allows")
    ep: int = Field(default=1, ge=1, description="largest expert-parallel degree to use")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    param_dtype: Literal["auto", "float32", "bfloat16"] = "auto"

    eval_every_steps: int | None = Field(default=None, ge=1, description="None: at step 0 and the end only")
    eval_batch_pairs: int = Field(default=16, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        """Fine-tuning's optimiser unless given: lr 1e-4 (a small model's; large ones use ~1e-5 for
        a reward model and ~5e-7 for DPO), no weight decay (TRL's default), warmup a tenth of the run."""
        if not isinstance(data, dict):
            return data
        steps = int(data.get("steps", cls.model_fields["steps"].default))
        optimizer = dict(data.get("optimizer") or {})
        optimizer.setdefault("lr", 1e-4)
        optimizer.setdefault("router_lr", ROUTER_LR_RATIO * float(optimizer["lr"]))
        optimizer.setdefault("weight_decay", 0.0)
        schedule = dict(optimizer.get("schedule") or {})
        schedule.setdefault("total_steps", steps)
        schedule.setdefault("warmup_steps", int(schedule["total_steps"]) // 10)
        optimizer["schedule"] = schedule
        for key in ("init_checkpoint", "data", "out_dir", "tokenizer"):
            if isinstance(data.get(key), os.PathLike):
                data[key] = os.fspath(data[key])
        data["eval_files"] = [os.fspath(p) for p in data.get("eval_files") or []]
        return {**data, "optimizer": optimizer}


class RewardModelConfig(PreferenceConfig):
    out_dir: str = "runs/reward_model"
    head_std: float | None = None  # the head's init std (None: the backbone's init_std)


class DPOConfig(PreferenceConfig):
    out_dir: str = "runs/dpo"
    beta: float = Field(default=0.1, gt=0, description="strength of the pull towards the reference")
