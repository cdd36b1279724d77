"""PPO for the MoE policy (`flywheel ppo`): the article's choice over DPO, for control over generation.

    flywheel ppo --init runs/sft --reward-model runs/rm --prompts prompts.jsonl --out runs/ppo
    flywheel ppo --init runs/sft --reward rule:shorter --prompts prompts.jsonl --out runs/ppo --local
    summary = ppo_command(init_checkpoint=..., reward="rule:shorter", prompts=..., out_dir=..., local=True)

One step (Ouyang et al. 2022 section 3.5; Ziegler et al. 2019; Huang et al. 2022):
 1. rollout  the actor samples one response per prompt of the batch (training.generate, stop at
             EOS or max_new_tokens);
 2. score    in parallel: the actor's teacher-forced log-probs (the ratio's pi_old, see
             ActorRole.logprobs), the reference's, the critic's values, the reward's score;
 3. advantage per-token reward -beta (log pi - log ref), the score (minus missing_eos_penalty for a
             response that never stopped) on the last token; GAE; advantages whitened over the batch;
 4. learn    ppo_epochs passes over seeded permutations of the batch in mini-batches: actor and
             critic each take one optimiser step per mini-batch (concurrently under Ray);
 5. adapt    beta by the proportional controller toward target_kl (if set); log; checkpoint.

Roles (training.ppo_roles) are Ray actors by default, local objects with `local`: the same
methods on the same data, so the two modes compute the same numbers (tested). Logged per step
in OUT/metrics.jsonl: reward_mean (the score), kl (per sequence, mean), kl_coef, policy_loss,
value_loss, clip_frac, entropy, response_length, stop_fraction, distinct_1/2 and more. The actor's
checkpoints (OUT/checkpoints) are a plain policy for generate/evaluate/export-hf/red-teaming; the
critic's are OUT/critic/checkpoints. A resume continues from the latest step both hold.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from contract.jsonl import read_text
from contract.layout import TrainingRun
from contract.locations import local_path
from training.checkpoint import CheckpointManager, read_meta
from training.export_hf import resolve_checkpoint
from training.metrics_log import MetricsLog, read_metrics
from training.ppo_config import PPOConfig, read_ppo_prompts
from training.ppo_math import (
    AdaptiveKLController,
    Experience,
    FixedKLController,
    distinct_n,
    gae,
    kl_penalized_rewards,
    masked_whiten,
    pack,
    sequence_kl,
)
from training.ppo_roles import Roles, start_roles
from training.preference_data import PairEncoder, PairSampler, Prompt
from training.preference_trainer import tokenizer_for
from training.trainer import resolve_device


def prompts_fingerprint(prompts: list[Prompt]) -> str:
    return hashlib.sha256(repr(prompts).encode()).hexdigest()[:16]


def step_of(location: str) -> int:
    """The step of a checkpoint folder (step_00000012 -> 12)."""
    return int(location.rstrip("/").rsplit("_", 1)[-1])


class PPOTrainer:
    """The driver: prompts, the KL controller, the loop and the logs; the models live in `roles`."""

    def __init__(self, cfg: PPOConfig, roles: Roles):
        self.cfg, self.roles = cfg, roles
        meta = read_meta(resolve_checkpoint(cfg.init_checkpoint))
        tok, eos_id, self.pad_id, _ = tokenizer_for(meta, cfg.tokenizer)
        # Prompts encoded as the reward model encodes them (chat user turn, or plain text).
        encoder = PairEncoder(tok, eos_id, max_len=cfg.max_prompt_len + 1, prompt_format=cfg.prompt_format)
        self.prompts = read_ppo_prompts(cfg.prompts)
        self.prompt_ids = [encoder.prompt_ids(p)[-cfg.max_prompt_len :] for p in self.prompts]
        self.fingerprint = prompts_fingerprint(self.prompts)
        self.sampler = PairSampler(len(self.prompts), cfg.seed)  # epochs of seeded permutations, a cursor
        self.kl = (AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon) if cfg.target_kl is not None
                   else FixedKLController(cfg.kl_coef))  # fmt: skip
        self.step = 0
        self.metrics = MetricsLog(cfg.out_dir, enabled=True)
        # Only for `due` (when to save): the roles write their own checkpoints.
        self.schedule = CheckpointManager(TrainingRun(cfg.out_dir).checkpoints, cfg.checkpoint_interval_s,
                                          cfg.checkpoint_every_steps)  # fmt: skip

    # -- state --------------------------------------------------------------------------------

    def driver_state(self) -> dict[str, Any]:
        return {"step": self.step, "kl_coef": self.kl.value, "data": self.sampler.state_dict(),
                "prompts_fingerprint": self.fingerprint, "rollout_batch": self.cfg.rollout_batch}  # fmt: skip

    def save(self) -> None:
        state = self.driver_state()
        pending = [self.roles.actor.submit("save", self.step, state), self.roles.critic.submit("save", self.step, state)]
        for p in pending:
            p.get()

    def resume(self) -> int | None:
        """Load the latest step that actor and critic both saved (a crash between their saves leaves
        one ahead); None when there is none. metrics.jsonl is cut back to that step."""
        actor = {step_of(p): p for p in self.roles.actor.submit("complete").get()}
        critic = {step_of(p): p for p in self.roles.critic.submit("complete").get()}
        common = sorted(actor.keys() & critic.keys())
        if not common:
            return None
        step = common[-1]
        template = self.driver_state()
        state = self.roles.actor.submit("load", actor[step], template).get()
        self.roles.critic.submit("load", critic[step], template).get()
        if state["prompts_fingerprint"] != self.fingerprint:
            raise ValueError("the checkpoint was trained on other prompts")
        if state["rollout_batch"] != self.cfg.rollout_batch:
            raise ValueError("the checkpoint used another rollout batch; the prompt cursor would not line up")
        self.step, self.kl.value = int(state["step"]), float(state["kl_coef"])
        self.sampler.load_state_dict(state["data"])
        self.metrics.rollback_after(self.step)
        return self.step

    # -- one step -----------------------------------------------------------------------------

    def seed_for(self, *parts: int) -> int:
        return (self.cfg.seed * 1_000_003 + self.step) * 4099 + sum(p * 7919**i for i, p in enumerate(parts))

    def rollout(self) -> tuple[Experience, dict[str, float]]:
        """Sample, score and compute the advantages of one rollout batch (steps 1-3)."""
        cfg, roles = self.cfg, self.roles
        prompts = [self.prompt_ids[i] for i in self.sampler.next_indices(cfg.rollout_batch)]
        responses, reasons = roles.actor.submit("generate", prompts, self.seed_for()).get()
        tokens_BS, prompt_lengths_B, mask_BN = pack(prompts, responses, self.pad_id)
        n = mask_BN.shape[1]
        pending = [roles.actor.submit("logprobs", tokens_BS, prompt_lengths_B, n),
                   roles.reference.submit("logprobs", tokens_BS, prompt_lengths_B, n),
                   roles.critic.submit("values", tokens_BS, prompt_lengths_B, n),
                   roles.reward.submit("score", prompts, responses)]  # fmt: skip
        logp_BN, ref_logp_BN, values_BN, scores_B = (p.get() for p in pending)
        stopped_B = torch.tensor([r == "stop" for r in reasons])
        penalised_B = scores_B.clone()
        if cfg.missing_eos_penalty is not None:
            penalised_B = torch.where(stopped_B, scores_B, scores_B - cfg.missing_eos_penalty)
        beta = self.kl.value
        rewards_BN = kl_penalized_rewards(logp_BN, ref_logp_BN, mask_BN, penalised_B, beta)
        advantages_BN, returns_BN = gae(rewards_BN, values_BN, mask_BN, cfg.gamma, cfg.lam)
        exp = Experience(tokens_BS, prompt_lengths_B, mask_BN, logp_BN, values_BN * mask_BN,
                         masked_whiten(advantages_BN, mask_BN), returns_BN)  # fmt: skip
        kl_B = sequence_kl(logp_BN, ref_logp_BN, mask_BN)
        lengths = mask_BN.sum(1).double()
        stats = {
            "reward_mean": float(scores_B.double().mean()), "reward_std": float(scores_B.double().std(unbiased=False)),
            "score_with_penalty_mean": float(penalised_B.double().mean()),
            "kl": float(kl_B.double().mean()), "kl_coef": beta, "non_score_reward": float(-beta * kl_B.double().mean()),
            "response_length": float(lengths.mean()), "stop_fraction": float(stopped_B.double().mean()),
            "distinct_1": distinct_n(responses, 1), "distinct_2": distinct_n(responses, 2),
            "value_mean": float((values_BN * mask_BN).sum() / mask_BN.sum()),
            "return_mean": float(returns_BN.sum() / mask_BN.sum()),
        }  # fmt: skip
        return exp, stats

    def learn(self, exp: Experience) -> dict[str, float]:
        """ppo_epochs passes of mini-batches; the actor's and critic's statistics averaged over them."""
        cfg, rows = self.cfg, exp.tokens_BS.shape[0]
        sums: dict[str, float] = {}
        updates = 0
        for epoch in range(cfg.ppo_epochs):
            order = torch.randperm(rows, generator=torch.Generator().manual_seed(self.seed_for(1, epoch)))
            for start in range(0, rows, cfg.mini_batch):
                batch = exp.rows(order[start : start + cfg.mini_batch])
                pending = [self.roles.actor.submit("train_step", batch), self.roles.critic.submit("train_step", batch)]
                for p in pending:
                    for k, v in p.get().items():
                        sums[k] = sums.get(k, 0.0) + v
                updates += 1
        return {k: v / updates for k, v in sums.items()}

    def train_step(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        exp, stats = self.rollout()
        stats.update(self.learn(exp))
        self.kl.update(stats["kl"], self.cfg.rollout_batch)
        self.step += 1
        return {"step": self.step, **{k: round(v, 6) for k, v in stats.items()}, "kl_coef_next": self.kl.value,
                "prompts": self.sampler.consumed, "step_s": round(time.perf_counter() - t0, 3),
                "time": round(time.time(), 3)}  # fmt: skip

    def fit(self) -> list[dict[str, Any]]:
        """Steps from self.step to cfg.steps; returns this run's records."""
        if self.step == 0:
            self.metrics.truncate()
        records = []
        while self.step < self.cfg.steps:
            record = self.train_step()
            self.metrics.write(record)
            records.append(record)
            if self.schedule.due(self.step, final=self.step >= self.cfg.steps):
                self.save()
                self.schedule.last_save = time.monotonic()
        return records


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def absolute_locations(cfg: PPOConfig) -> PPOConfig:
    """Local paths made absolute: Ray roles run in other directories (store URIs stay)."""

    def absolute(location: str | None) -> str | None:
        path = local_path(location) if location is not None else None
        return str(path.resolve()) if path is not None else location

    keys = ("init_checkpoint", "reward_model", "prompts", "out_dir", "tokenizer")
    return cfg.model_copy(update={k: absolute(getattr(cfg, k)) for k in keys})


def init_ray() -> None:
    """A local Ray (small object store: rollouts are a few MB) unless one runs or RAY_ADDRESS names one."""
    import ray  # Ray mode only

    if not ray.is_initialized():
        ray.init(**({} if os.environ.get("RAY_ADDRESS") else {"include_dashboard": False,
                                                               "object_store_memory": 256 * 1024**2}))  # fmt: skip


def run_ppo(cfg: PPOConfig, use_ray: bool) -> list[dict[str, Any]]:
    """Start the roles (Ray actors, or here), resume if asked and possible, train to cfg.steps."""
    cfg = absolute_locations(cfg)
    if not cfg.resume and CheckpointManager(TrainingRun(cfg.out_dir).checkpoints).latest() is not None:
        raise ValueError(f"{cfg.out_dir} holds another run's checkpoints: resume it or use another out_dir")
    role_gpus = 0.0
    if use_ray:
        init_ray()
        # Four roles on the GPUs there are: a quarter GPU each on one GPU (tiny models), one each on four.
        role_gpus = 0.25 if resolve_device(cfg.device).type == "cuda" else 0.0
    roles = start_roles(cfg, use_ray, role_gpus)
    try:
        trainer = PPOTrainer(cfg, roles)
        trainer.resume()
        print(f"[flywheel ppo] {len(trainer.prompts)} prompts; {'Ray actors' if use_ray else 'one process'}; "
              f"steps {trainer.step} -> {cfg.steps}", flush=True)  # fmt: skip
        return trainer.fit()
    finally:
        roles.close()


def summarize(out_dir: str) -> dict[str, Any]:
    """First and last step's reward, KL and the rest (OUT/metrics.jsonl has every step)."""
    records = read_metrics(out_dir)
    keys = ("step", "reward_mean", "kl", "kl_coef", "response_length", "clip_frac", "entropy", "distinct_2")

    def pick(r: dict[str, Any]) -> dict[str, Any]:
        return {k: r.get(k) for k in keys}

    return {"steps": records[-1]["step"] if records else 0, "first": pick(records[0]) if records else None,
            "last": pick(records[-1]) if records else None, "metrics": TrainingRun(out_dir).metrics,
            "checkpoints": TrainingRun(out_dir).checkpoints}  # fmt: skip


def load_ppo_config(path: str | Path | None = None, **overrides: Any) -> PPOConfig:
    """A config from a YAML or JSON file (or none), then the options given (None: unset)."""
    data: dict[str, Any] = {}
    if path is not None:
        text = read_text(path)
        data = json.loads(text) if str(path).endswith(".json") else (yaml.safe_load(text) or {})
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a PPO config is a mapping")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return PPOConfig.model_validate(data)


def ppo_command(config: str | Path | None = None, local: bool = False, **options: Any) -> dict[str, Any]:
    """`flywheel ppo`: train (or resume) with the roles as Ray actors, or in this process (`local`)."""
    cfg = load_ppo_config(config, **options)
    run_ppo(cfg, use_ray=not local)
    return summarize(cfg.out_dir)
