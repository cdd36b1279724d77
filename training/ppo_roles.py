"""PPO's four roles, each owning its model: actor, critic, reference, reward (OpenRLHF's split).

    roles = start_roles(cfg, use_ray=True)             # four Ray actors (or four local objects)
    pending = roles.actor.submit("generate", prompts, seed)
    responses, reasons = pending.get()

    actor      the policy: samples rollouts (training.generate, KV cache), teacher-forced log-probs,
               the clipped policy update; its checkpoints are OUT/checkpoints (a plain policy)
    critic     RewardModel layout (backbone + scalar head on every position): values, the clipped
               value update; OUT/critic/checkpoints
    reference  the init policy, frozen: log-probs for the KL penalty
    reward     the reward model (frozen, read at the last token) or a rule (training.ppo_config)

The driver (training.ppo) only moves token ids and response-aligned tensors between them; all
weights stay inside their role, so under Ray every role is its own process (CPU here, a GPU
quarter each when the device is cuda) and actor and critic train concurrently on each mini-batch.

A handle's `submit(method, *args)` is the whole interface. A role that is an FSDP group of
several workers would be another handle: split the batch rows over its workers, each a rank of
one process group (as Ray Train's TorchTrainer builds), then concatenate their outputs and average
their statistics. Not implemented: every role is one worker here (a tiny model on 2 CPUs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from contract.layout import TrainingRun, join
from training.checkpoint import CheckpointManager, TrainingState, read_meta
from training.export_hf import resolve_checkpoint
from training.generate import SamplingConfig, generate
from training.moe import register_router_bias_hook
from training.optim import RecipeScheduler, build_optimizer
from training.parallel import clip_grad_norm_
from training.ppo_config import CRITIC_DIR, CRITIC_KIND, KIND, PPOConfig, parse_rule_reward
from training.ppo_math import (
    Experience,
    clipped_policy_loss,
    clipped_value_loss,
    masked_mean,
    response_logprobs,
    response_values,
)
from training.preference_trainer import frozen_copy, load_init_model, tokenizer_for
from training.recipe import OptimizerConfig, ScheduleConfig
from training.reward_model import RewardModel
from training.trainer import resolve_device


def _config(cfg: PPOConfig | str) -> PPOConfig:
    """Roles are built from the config's JSON under Ray (plain data crosses the process boundary)."""
    return cfg if isinstance(cfg, PPOConfig) else PPOConfig.model_validate_json(cfg)


def constant_lr(lr: float, max_grad_norm: float) -> OptimizerConfig:
    """AdamW at a constant LR, no weight decay (PPO fine-tunes: OpenRLHF's and TRL's defaults)."""
    return OptimizerConfig(lr=lr, router_lr=lr, weight_decay=0.0, max_grad_norm=max_grad_norm,
                           schedule=ScheduleConfig(total_steps=1, warmup_steps=0, min_lr_ratio=1.0))  # fmt: skip


class Role:
    def ready(self) -> bool:
        """A cheap call: a Ray actor answers it once its constructor has run."""
        return True


class TrainableRole(Role):
    """A model with its optimiser and checkpoints. The driver's state (step, KL coefficient,
    prompt cursor) travels in the checkpoint's trainer state, handed in by `save`."""

    def __init__(self, model: torch.nn.Module, cfg: PPOConfig, lr: float, root: str, meta: dict[str, Any]):
        self.model, self.cfg, self.meta = model, cfg, meta
        opt_cfg = constant_lr(lr, cfg.max_grad_norm)
        self.optimizer = build_optimizer(model, opt_cfg)
        self.scheduler = RecipeScheduler(self.optimizer, opt_cfg)
        register_router_bias_hook(self.optimizer, model)
        self.checkpoints = CheckpointManager(root, cfg.checkpoint_interval_s, cfg.checkpoint_every_steps,
                                             keep=cfg.keep_checkpoints)  # fmt: skip
        self.trainer_state: dict[str, Any] = {}
        self.state = TrainingState(model, self.optimizer, self.scheduler, lambda: self.trainer_state,
                                   self._set_trainer_state)  # fmt: skip

    def _set_trainer_state(self, state: dict[str, Any]) -> None:
        self.trainer_state = dict(state)

    def _update(self, loss: torch.Tensor) -> float:
        loss.backward()
        norm = clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return float(norm)

    def save(self, step: int, trainer_state: dict[str, Any]) -> str:
        self.trainer_state = dict(trainer_state)
        return self.checkpoints.save(step, self.state, {**self.meta, "step": step})

    def complete(self) -> list[str]:
        return self.checkpoints.complete()

    def load(self, location: str, trainer_template: dict[str, Any]) -> dict[str, Any]:
        """Load a checkpoint; returns its trainer state. DCP fills the keys of the state it is given
        and reads no others, so the driver hands in its own state as the template."""
        self.trainer_state = dict(trainer_template)
        self.checkpoints.load(location, self.state)
        return self.trainer_state


class ActorRole(TrainableRole):
    """The policy, initialised from cfg.init_checkpoint with dropout off."""

    def __init__(self, cfg: PPOConfig | str):
        cfg = _config(cfg)
        self.device = resolve_device(cfg.device)
        model, init_meta = load_init_model(cfg.init_checkpoint, disable_dropout=True)
        _, self.eos_id, self.pad_id, tokenizer_location = tokenizer_for(init_meta, cfg.tokenizer)
        inherited = {k: init_meta[k] for k in ("manifest", "seq_len", "document_mask") if k in init_meta}
        meta = {**inherited, "kind": KIND, "model_config": model.cfg.model_dump(mode="json"),
                "init_checkpoint": init_meta["step_dir"], "tokenizer": tokenizer_location,
                "prompt_format": cfg.prompt_format}  # fmt: skip
        super().__init__(model.to(self.device), cfg, cfg.lr, TrainingRun(cfg.out_dir).checkpoints, meta)

    def generate(self, prompts: list[list[int]], seed: int) -> tuple[list[list[int]], list[str]]:
        """One sampled response per prompt (the stop token included), and why each ended."""
        sampling = SamplingConfig(max_new_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature, seed=seed)
        out = generate(self.model, prompts, sampling, eos_id=self.eos_id, pad_id=self.pad_id)
        return out.token_ids(), out.finish_reasons

    @torch.no_grad()
    def logprobs(self, tokens_BS: torch.Tensor, prompt_lengths_B: torch.Tensor, n: int) -> torch.Tensor:
        """The old log-probs of the ratio: a teacher-forced forward, not the sampler's numbers (a KV-cached
        batch differs in fp rounding, and a routing near-tie can flip an expert). Eval mode equals train mode
        here: dropout is off and the MoE's mode only decides whether expert load is counted."""
        was_training = self.model.training
        self.model.eval()
        try:
            logp_BN, _, _ = response_logprobs(self.model, tokens_BS.to(self.device), prompt_lengths_B.to(self.device),
                                              n, self.cfg.temperature)  # fmt: skip
        finally:
            self.model.train(was_training)
        return logp_BN.cpu()

    def train_step(self, exp: Experience) -> dict[str, float]:
        """One optimiser step of the clipped surrogate (minus the entropy bonus) on a mini-batch."""
        self.model.train()
        exp = exp.to(self.device)
        logp_BN, entropy_BN, aux = response_logprobs(self.model, exp.tokens_BS, exp.prompt_lengths_B,
                                                     exp.mask_BN.shape[1], self.cfg.temperature)  # fmt: skip
        loss, clip_frac = clipped_policy_loss(logp_BN, exp.old_logp_BN, exp.advantages_BN, exp.mask_BN, self.cfg.clip)
        entropy = masked_mean(entropy_BN, exp.mask_BN)
        grad_norm = self._update(loss - self.cfg.entropy_coef * entropy + aux)
        log_ratio_BN = (logp_BN - exp.old_logp_BN).detach()
        return {"policy_loss": float(loss.detach()), "clip_frac": float(clip_frac), "entropy": float(entropy.detach()),
                "approx_kl": float(masked_mean(0.5 * log_ratio_BN**2, exp.mask_BN)),  # Huang et al.'s approxkl
                "actor_grad_norm": grad_norm}  # fmt: skip


class CriticRole(TrainableRole):
    """The value model: the reward model's backbone and head (OpenRLHF's default), or the policy
    with a new head (seeded by cfg.seed)."""

    def __init__(self, cfg: PPOConfig | str):
        cfg = _config(cfg)
        self.device = resolve_device(cfg.device)
        if cfg.critic_from_reward_model:
            critic = RewardModel.load(cfg.reward_model).train()
        else:
            backbone, _ = load_init_model(cfg.init_checkpoint, disable_dropout=True)
            torch.manual_seed(cfg.seed)
            critic = RewardModel(backbone)
        meta = {"kind": CRITIC_KIND, "model_config": critic.cfg.model_dump(mode="json")}
        super().__init__(critic.to(self.device), cfg, cfg.critic_lr or cfg.lr,
                         join(cfg.out_dir, CRITIC_DIR, TrainingRun.CHECKPOINTS), meta)  # fmt: skip

    @torch.no_grad()
    def values(self, tokens_BS: torch.Tensor, prompt_lengths_B: torch.Tensor, n: int) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            values_BN, _ = response_values(self.model, tokens_BS.to(self.device), prompt_lengths_B.to(self.device), n)
        finally:
            self.model.train(was_training)
        return values_BN.cpu()

    def train_step(self, exp: Experience) -> dict[str, float]:
        """One optimiser step of the clipped value loss on a mini-batch."""
        self.model.train()
        exp = exp.to(self.device)
        values_BN, aux = response_values(self.model, exp.tokens_BS, exp.prompt_lengths_B, exp.mask_BN.shape[1])
        loss, clip_frac = clipped_value_loss(values_BN, exp.old_values_BN, exp.returns_BN, exp.mask_BN,
                                             self.cfg.value_clip)  # fmt: skip
        grad_norm = self._update(loss + aux)
        return {"value_loss": float(loss.detach()), "value_clip_frac": float(clip_frac), "critic_grad_norm": grad_norm}


class ReferenceRole(Role):
    """The init policy, frozen (eval mode, no gradients): log ref(y|x) for the KL penalty."""

    def __init__(self, cfg: PPOConfig | str):
        self.cfg = _config(cfg)
        self.device = resolve_device(self.cfg.device)
        model, _ = load_init_model(self.cfg.init_checkpoint, disable_dropout=True)
        self.model = frozen_copy(model).to(self.device)

    @torch.no_grad()
    def logprobs(self, tokens_BS: torch.Tensor, prompt_lengths_B: torch.Tensor, n: int) -> torch.Tensor:
        logp_BN, _, _ = response_logprobs(self.model, tokens_BS.to(self.device), prompt_lengths_B.to(self.device), n,
                                          self.cfg.temperature)  # fmt: skip
        return logp_BN.cpu()


class RewardRole(Role):
    """Scores of whole responses: the reward model at the last token, or a rule on the decoded text."""

    def __init__(self, cfg: PPOConfig | str):
        self.cfg = _config(cfg)
        self.device = resolve_device(self.cfg.device)
        self.model = RewardModel.load(self.cfg.reward_model).to(self.device) if self.cfg.reward_model else None
        if self.model is None:
            self.rule = parse_rule_reward(self.cfg.reward or "")
            init_model_meta = load_init_model_meta(self.cfg.init_checkpoint)
            self.tokenizer = tokenizer_for(init_model_meta, self.cfg.tokenizer)[0]

    def score(self, prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
        if self.model is not None:
            return self.model.score_tokens([p + r for p, r in zip(prompts, responses)]).float()
        return torch.tensor([self.rule.score(r, self.tokenizer.decode(r, skip_special_tokens=True))
                             for r in responses], dtype=torch.float32)  # fmt: skip


def load_init_model_meta(init: str) -> dict[str, Any]:
    """meta.json of the init checkpoint (the tokenizer's location), without loading its weights."""
    return read_meta(resolve_checkpoint(init))


# ---------------------------------------------------------------------------------------------
# Handles: one interface for a local object and a Ray actor
# ---------------------------------------------------------------------------------------------


class Done:
    """A result already computed (local roles run on call)."""

    def __init__(self, value: Any):
        self.value = value

    def get(self) -> Any:
        return self.value


class LocalHandle:
    def __init__(self, role: Any):
        self.role = role

    def submit(self, method: str, *args: Any) -> Done:
        return Done(getattr(self.role, method)(*args))

    def close(self) -> None:
        pass


class RayPending:
    def __init__(self, ref: Any):
        self.ref = ref

    def get(self) -> Any:
        import ray  # only Ray handles make these

        return ray.get(self.ref)


class RayHandle:
    """One Ray actor running a role; calls return at once, `get` waits (roles overlap)."""

    def __init__(self, actor: Any):
        self.actor = actor

    def submit(self, method: str, *args: Any) -> RayPending:
        return RayPending(getattr(self.actor, method).remote(*args))

    def close(self) -> None:
        import ray  # only Ray handles exist when this runs

        ray.kill(self.actor)


@dataclass
class Roles:
    actor: LocalHandle | RayHandle
    critic: LocalHandle | RayHandle
    reference: LocalHandle | RayHandle
    reward: LocalHandle | RayHandle

    def close(self) -> None:
        for handle in (self.actor, self.critic, self.reference, self.reward):
            handle.close()


ROLE_CLASSES = {"actor": ActorRole, "critic": CriticRole, "reference": ReferenceRole, "reward": RewardRole}


def start_roles(cfg: PPOConfig, use_ray: bool, role_gpus: float = 0.0) -> Roles:
    """The four roles as local objects, or as Ray actors (cfg.role_cpus CPUs and role_gpus GPUs each;
    Ray must be initialised). Under Ray each builds its model in its own process, in parallel."""
    if not use_ray:
        return Roles(**{name: LocalHandle(cls(cfg)) for name, cls in ROLE_CLASSES.items()})
    import ray  # Ray mode only

    payload = cfg.model_dump_json()
    handles = {name: RayHandle(ray.remote(cls).options(num_cpus=cfg.role_cpus, num_gpus=role_gpus).remote(payload))
               for name, cls in ROLE_CLASSES.items()}  # fmt: skip
    # A cheap call per actor: construction errors surface here, not at the first real call.
    ray.get([h.actor.ready.remote() for h in handles.values()])
    return Roles(**handles)
