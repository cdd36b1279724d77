"""What a PPO run is: its config (one field per knob), its prompts and its reward.

    cfg = PPOConfig(init_checkpoint="runs/sft", reward="rule:shorter", prompts="prompts.jsonl", out_dir="runs/ppo")
    prompts = read_ppo_prompts(cfg.prompts)          # a prompt JSONL, or a post-training manifest's prompts
    rule = parse_rule_reward("rule:contains:yes")    # rule.score(response_ids, response_text) -> float

The reward is the reward model (`reward_model`, a `flywheel reward-model` checkpoint) or a named
rule (`reward`), so a toy run can prove the optimiser without trained data:
    rule:shorter          -(response tokens, the stop token included): prefers answers that stop
    rule:contains:TEXT    1 when the decoded response contains TEXT, else 0
No torch here: the service (api/posttrain_jobs.py) validates a PPO job's config in its web process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from contract.jsonl import numbered_records, read_text
from contract.posttrain import is_posttrain_manifest, iter_records, read_posttrain_manifest
from training.train_config import CheckpointPolicy

KIND = "ppo"  # the actor checkpoint's meta.json `kind` (a plain policy: generate/evaluate/export read it)
CRITIC_KIND = "ppo_critic"  # the critic's (RewardModel layout: backbone.* + head.*)
CRITIC_DIR = "critic"  # OUT/critic/checkpoints: the critic's own checkpoints beside the actor's OUT/checkpoints
RULE_PREFIX = "rule:"

# training.preference_data.Prompt, spelled again: that module imports torch, this one must not.
Prompt = str | list[dict[str, Any]]  # plain text, or chat messages [{"role", "content"}...]


class PPOConfig(CheckpointPolicy):
    """A PPO run (Ouyang et al. 2022 section 3.5; the defaults follow Huang et al. 2022, "The N
    Implementation Details of RLHF with PPO", and OpenRLHF where those are silent)."""

    model_config = ConfigDict(extra="forbid")

    init_checkpoint: str = Field(description="the policy to start from (SFT or pretraining); also the reference")
    reward_model: str | None = Field(default=None, description="a reward-model checkpoint (flywheel reward-model)")
    reward: str | None = Field(default=None, description="a rule reward instead: rule:shorter | rule:contains:TEXT")
    critic_init: Literal["auto", "reward_model", "policy"] = Field(
        default="auto", description="the value model's backbone + head: the RM's (auto, when given) or the policy "
                                    "with a new head")  # fmt: skip
    prompts: str = Field(description="prompt JSONL ({prompt: str | messages}) or a post-training manifest")
    out_dir: str = "runs/ppo"
    tokenizer: str | None = Field(default=None, description="tokenizer.json (default: the init checkpoint's)")
    prompt_format: Literal["chat", "plain"] = "chat"
    max_prompt_len: int = Field(default=128, ge=1, description="prompts lose their start beyond this")

    steps: int = Field(default=20, ge=1, description="PPO steps: one rollout batch each")
    rollout_batch: int = Field(default=16, ge=1, description="prompts (one response each) per step")
    mini_batch: int = Field(default=8, ge=1, description="responses per optimiser step; divides rollout_batch")
    ppo_epochs: int = Field(default=2, ge=1, description="passes over each rollout batch")
    max_new_tokens: int = Field(default=32, ge=1)
    temperature: float = Field(default=1.0, gt=0, description="sampling and training both use softmax(logits/T)")

    kl_coef: float = Field(default=0.05, ge=0, description="beta: per-token KL penalty (initial value if adaptive)")
    target_kl: float | None = Field(default=None, gt=0, description="adaptive beta toward this KL per sequence "
                                                                    "(Ziegler et al. 2019); None: fixed")  # fmt: skip
    kl_horizon: int = Field(default=10_000, ge=1, description="the adaptive controller's horizon, in responses")
    gamma: float = Field(default=1.0, ge=0, le=1)
    lam: float = Field(default=0.95, ge=0, le=1, description="GAE lambda")
    clip: float = Field(default=0.2, gt=0, description="policy ratio clip epsilon")
    value_clip: float = Field(default=0.2, gt=0, description="value clip around the rollout's values")
    entropy_coef: float = Field(default=0.0, ge=0, description="entropy bonus (0: logged only)")
    missing_eos_penalty: float | None = Field(default=None, ge=0, description="subtracted from the score of a "
                                                                              "response that never stopped")  # fmt: skip
    lr: float = Field(default=1e-5, gt=0, description="actor LR (constant)")
    critic_lr: float | None = Field(default=None, gt=0, description="critic LR (default: lr)")
    max_grad_norm: float = Field(default=1.0, gt=0)
    seed: int = 0

    device: Literal["auto", "cpu", "cuda"] = "auto"
    role_cpus: float = Field(default=0.5, gt=0, description="CPUs each Ray role (each worker of a group) reserves")
    actor_workers: int = Field(default=1, ge=1, description="Ray workers the actor FSDP-shards over (>1: Ray only; "
                                                            "a whole GPU each on cuda); divides mini_batch")  # fmt: skip
    critic_workers: int = Field(default=1, ge=1, description="the same for the critic")

    @model_validator(mode="before")
    @classmethod
    def _paths(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _check(self) -> PPOConfig:
        if (self.reward_model is None) == (self.reward is None):
            raise ValueError("give exactly one of reward_model (a checkpoint) and reward (rule:...)")
        if self.reward is not None:
            parse_rule_reward(self.reward)
        if self.critic_init == "reward_model" and self.reward_model is None:
            raise ValueError("critic_init reward_model needs a reward_model")
        if self.rollout_batch % self.mini_batch:
            raise ValueError(f"mini_batch {self.mini_batch} must divide rollout_batch {self.rollout_batch}")
        for name in ("actor_workers", "critic_workers"):
            # Equal rows per rank: the per-rank MoE z-loss means then average to the batch's.
            if self.mini_batch % getattr(self, name):
                raise ValueError(f"{name} {getattr(self, name)} must divide mini_batch {self.mini_batch}")
        return self

    @property
    def critic_from_reward_model(self) -> bool:
        return self.critic_init == "reward_model" or (self.critic_init == "auto" and self.reward_model is not None)


@dataclass(frozen=True)
class RuleReward:
    """A named reward computed from the response alone (no model)."""

    name: str
    arg: str | None = None

    def score(self, response_ids: list[int], response_text: str) -> float:
        if self.name == "shorter":
            return -float(len(response_ids))
        assert self.name == "contains" and self.arg is not None
        return float(self.arg in response_text)


def parse_rule_reward(spec: str) -> RuleReward:
    """`rule:shorter` or `rule:contains:TEXT` as a RuleReward; ValueError for anything else."""
    if not spec.startswith(RULE_PREFIX):
        raise ValueError(f"a rule reward is written rule:NAME, got {spec!r}")
    name, _, arg = spec[len(RULE_PREFIX) :].partition(":")
    if name == "shorter" and not arg:
        return RuleReward("shorter")
    if name == "contains" and arg:
        return RuleReward("contains", arg)
    raise ValueError(f"unknown rule reward {spec!r}: rule:shorter | rule:contains:TEXT")


def _prompt(value: Any, where: str) -> Prompt:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        return value
    raise ValueError(f"{where}: `prompt` must be a non-empty string or a list of {{'role', 'content'}} messages")


def read_ppo_prompts(source: str | Path, split: str = "train") -> list[Prompt]:
    """The prompts of a JSONL file ({"prompt": ...} per line: curation/demo_instructions' prompts.jsonl),
    or the prompt records of a post-training manifest's `split`."""
    source = str(source)
    if is_posttrain_manifest(source):
        prompts: list[Prompt] = [r.prompt for r in iter_records(read_posttrain_manifest(source), "prompt", split)]
    else:
        try:
            text = read_text(source)
        except (FileNotFoundError, IsADirectoryError):
            raise FileNotFoundError(f"{source}: no such prompts file") from None
        prompts = []
        for number, record in numbered_records(text.splitlines(), source):
            if not isinstance(record, dict) or "prompt" not in record:
                raise ValueError(f"{source}:{number}: a prompt line is an object with `prompt`")
            prompts.append(_prompt(record["prompt"], f"{source}:{number}"))
    if not prompts:
        raise ValueError(f"{source}: no prompts")
    return prompts
