"""PPO's four roles, each owning its model: actor, critic, reference, reward (OpenRLHF's split).

    roles = start_roles(cfg, use_ray=True)             # Ray actors (or four local objects)
    pending = roles.actor.submit("generate", prompts, seed)
    responses, reasons = pending.get()

    actor      the policy: samples rollouts (training.generate, KV cache), teacher-forced log-probs,
               the clipped policy update; its checkpoints are OUT/checkpoints (a plain policy)
    critic     RewardModel layout (backbone + scalar head on every position): values, the clipped
               value update; OUT/critic/checkpoints
    reference  the init policy, frozen: log-probs for the KL penalty
    reward     the reward model (frozen, read at the last token) or a rule (training.ppo_config)

The driver (training.ppo) only moves token ids and response-aligned tensors between them; all
weights stay inside their role, so under Ray every role is its own process or processes (CPU here,
a GPU quarter each when the device is cuda) and actor and critic train concurrently on each
mini-batch.

A handle's `submit(method, *args)` is the whole interface, whatever runs the role:
    LocalHandle        the role object in this process (tests, `--local`)
    RayHandle          one Ray actor
    WorkerGroupHandle  cfg.actor_workers (critic_workers) Ray actors: ranks 0..W-1 of a torch.distributed
                       group of their own (gloo on CPU, NCCL on cuda with a whole GPU per rank; rendezvous
                       at rank 0's node and a free port there), the model FSDP2-sharded over them
                       (training.parallel with a dp-only mesh: no EP or TP inside a role). A batch method
                       (BATCH_METHODS) gets contiguous row chunks, one per rank; outputs are concatenated
                       in rank order and statistics combined (token-weighted means; grad norms are
                       global on every rank). Other methods (save, load, complete: DCP collectives) run
                       on every rank with the same arguments and answer with rank 0's result.
The designs read: veRL's worker groups (a DP_COMPUTE dispatch splits a batch over the ranks and
concatenates the outputs) and OpenRLHF's actor groups (rank 0's actor hands out the master address
and port, then every rank joins the process group).

A group computes what one worker computes, up to fp rounding (tests/training/test_ppo_sharded.py):
every row samples from its own seeded generator (`row_seeds`), so a response does not depend on the
rows beside it; sharded ranks decode until every rank is done (FSDP all-gathers in each forward);
losses are normalised by the mini-batch's global token count (`TrainableRole.token_share`).
Not equal: the MoE balance loss (a product of batch means) is each rank's own, as on pretraining's
data-parallel ranks. Checkpoints are DCP's, written by every rank of a group and resharded on load
(a 2-worker run resumes on 1 worker or 4). The reference and reward roles stay single workers
(frozen, forward only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.fsdp import register_fsdp_forward_method

from contract.layout import TrainingRun, join
from training.checkpoint import CheckpointManager, TrainingState, read_meta
from training.export_hf import resolve_checkpoint
from training.generate import generate
from training.launch import free_port
from training.layout import Layout
from training.moe import register_router_bias_hook
from training.optim import RecipeScheduler, build_optimizer
from training.parallel import Meshes, build_meshes, clip_grad_norm_
from training.ppo_config import CRITIC_DIR, CRITIC_KIND, KIND, PPOConfig, parse_rule_reward
from training.ppo_math import (
    Experience,
    clipped_policy_loss,
    clipped_value_loss,
    masked_mean,
    response_logprobs,
    response_values,
)
from training.preference_trainer import frozen_copy, load_init_model, shard, tokenizer_for
from training.recipe import OptimizerConfig, ScheduleConfig
from training.reward_model import RewardModel
from training.sampling_config import SamplingConfig
from training.trainer import resolve_device


def _config(cfg: PPOConfig | str) -> PPOConfig:
    """Roles are built from the config's JSON under Ray (plain data crosses the process boundary)."""
    return cfg if isinstance(cfg, PPOConfig) else PPOConfig.model_validate_json(cfg)


def constant_lr(lr: float, max_grad_norm: float) -> OptimizerConfig:
    """AdamW at a constant LR, no weight decay (PPO fine-tunes: OpenRLHF's and TRL's defaults)."""
    return OptimizerConfig(lr=lr, router_lr=lr, weight_decay=0.0, max_grad_norm=max_grad_norm,
                           schedule=ScheduleConfig(total_steps=1, warmup_steps=0, min_lr_ratio=1.0))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# A role's ranks: this process alone, or one rank of its worker group's process group
# ---------------------------------------------------------------------------------------------


def world_size() -> int:
    """The ranks of this role's worker group (RoleWorker.join made it this process's default group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def group_meshes(device: torch.device) -> Meshes | None:
    """A dp-only FSDP mesh over this role's worker group; None alone."""
    world = world_size()
    return build_meshes(Layout(world=world), device.type) if world > 1 else None


def all_ranks_done(device: torch.device) -> Callable[[bool], bool] | None:
    """generate's all_done hook for a sharded model (None alone): every rank runs the same number
    of forwards, since each forward all-gathers the shards; finished rows keep emitting padding."""
    if world_size() == 1:
        return None

    def done(local: bool) -> bool:
        unfinished = torch.tensor([0.0 if local else 1.0], device=device)
        dist.all_reduce(unfinished)
        return float(unfinished) == 0.0

    return done


def row_seeds(seed: int, rows: int) -> list[int]:
    """One sampling seed per row of a rollout batch: a row's response is the same whichever worker
    samples it, beside whichever rows."""
    return [(seed * 1_000_003 + row) % 2**63 for row in range(rows)]


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

    def token_share(self, mask_BN: torch.Tensor) -> torch.Tensor:
        """W n_r / n: what this rank's token means are scaled by before backward (1 alone).

        The invariant: the policy and value losses are token means over the whole mini-batch of n
        tokens, mean = sum_r (n_r / n) mean_r over the W ranks' rows. FSDP's reduce-scatter averages
        the ranks' gradients, (1/W) sum_r, so the factor W gives the single worker's update:
        (1/W) sum_r grad(W (n_r / n) mean_r) = grad(mean). n is an all-reduce of the mask sums."""
        world = world_size()
        if world == 1:
            return torch.ones((), device=mask_BN.device)
        local = mask_BN.sum().to(torch.float32)
        total = local.clone()
        dist.all_reduce(total)
        return world * local / total

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
        # Every rank reads the same init weights and keeps its shards (fp32 compute: a group
        # computes what one worker does).
        model = shard(model, group_meshes(self.device), self.device, param_dtype=None)
        super().__init__(model, cfg, cfg.lr, TrainingRun(cfg.out_dir).checkpoints, meta)

    def generate(self, prompts: list[list[int]], seed: int | list[int]) -> tuple[list[list[int]], list[str]]:
        """One sampled response per prompt (the stop token included), and why each ended. seed: the
        batch's (row i samples from row_seeds(seed)[i]) or one per row (a worker group's chunk)."""
        seeds = row_seeds(seed, len(prompts)) if isinstance(seed, int) else seed
        sampling = SamplingConfig(max_new_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature)
        generators = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]
        out = generate(self.model, prompts, sampling, eos_id=self.eos_id, pad_id=self.pad_id, generator=generators,
                       all_done=all_ranks_done(self.device))  # fmt: skip
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
        # This rank's token means, weighted to the mini-batch's (token_share); the MoE aux losses are
        # per rank, averaged over the ranks by FSDP.
        share = self.token_share(exp.mask_BN)
        grad_norm = self._update(share * (loss - self.cfg.entropy_coef * entropy) + aux)
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
        meshes = group_meshes(self.device)
        critic = shard(critic, meshes, self.device, param_dtype=None, backbone=critic.backbone)
        if meshes is not None:
            # `values` is not `forward`: the root unit (the head) must be gathered around it too.
            register_fsdp_forward_method(critic, "values")
        super().__init__(critic, cfg, cfg.critic_lr or cfg.lr, join(cfg.out_dir, CRITIC_DIR, TrainingRun.CHECKPOINTS),
                         meta)  # fmt: skip

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
        grad_norm = self._update(self.token_share(exp.mask_BN) * loss + aux)  # as in ActorRole.train_step
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


# ---------------------------------------------------------------------------------------------
# Worker groups: a role FSDP-sharded over several Ray actors
# ---------------------------------------------------------------------------------------------

# The methods whose arguments are a batch: rows split over a group's ranks, outputs joined in order.
BATCH_METHODS = ("generate", "logprobs", "values", "train_step")
# train_step statistics that every rank computes whole (norms of the sharded gradients); the
# others are token means over the rank's rows.
GLOBAL_STATS = ("actor_grad_norm", "critic_grad_norm")


class RoleWorker:
    """One rank of a role's worker group (a Ray actor): it joins the group's process group, then
    builds the role, which shards its model over that group (`group_meshes`)."""

    def master_address(self) -> tuple[str, int]:
        """This node's address and a free port on it: rank 0's answer is the group's rendezvous."""
        import ray  # Ray actors only

        return ray.util.get_node_ip_address(), free_port()

    def join(self, role: str, cfg_json: str, rank: int, world: int, address: str, port: int) -> bool:
        """Collective over the group: every rank must be joining at once."""
        device = resolve_device(_config(cfg_json).device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://{address}:{port}",
                                rank=rank, world_size=world)  # fmt: skip
        self.role = ROLE_CLASSES[role](cfg_json)
        return True

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.role, method)(*args)


def chunk_bounds(rows: int, world: int) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) row ranges, one per rank, sizes differing by at most one (rank order)."""
    sizes = [rows // world + (rank < rows % world) for rank in range(world)]
    starts = [sum(sizes[:rank]) for rank in range(world)]
    return [(lo, lo + size) for lo, size in zip(starts, sizes)]


def batch_rows(arg: Any) -> int:
    return arg.tokens_BS.shape[0] if isinstance(arg, Experience) else len(arg)


def take_rows(arg: Any, lo: int, hi: int) -> Any:
    """Rows lo:hi of a batch argument (an Experience keeps its width: every rank's rows are then as
    wide as the mini-batch, so per-position means such as the MoE z-loss average exactly)."""
    if isinstance(arg, Experience):
        return Experience(**{f.name: getattr(arg, f.name)[lo:hi] for f in fields(arg)})
    if isinstance(arg, (list, tuple, torch.Tensor)):
        return arg[lo:hi]
    return arg  # a scalar: the same on every rank


def join_outputs(outputs: list[Any], weights: list[float]) -> Any:
    """The ranks' outputs as one: lists and tensors concatenated in rank order (tuples element by
    element), statistics dicts combined (weights: the ranks' response tokens)."""
    first = outputs[0]
    if isinstance(first, tuple):
        return tuple(join_outputs(list(parts), weights) for parts in zip(*outputs))
    if isinstance(first, list):
        return [item for out in outputs for item in out]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    if isinstance(first, dict):
        total = sum(weights)
        return {k: first[k] if k in GLOBAL_STATS else sum(w * out[k] for w, out in zip(weights, outputs)) / total
                for k in first}  # fmt: skip
    raise TypeError(f"no rule to join {type(first).__name__} outputs of a worker group")


class GroupPending:
    def __init__(self, refs: list[Any], join: Any):
        self.refs, self.join = refs, join

    def get(self) -> Any:
        import ray  # only Ray handles make these

        return self.join(ray.get(self.refs))


class WorkerGroupHandle:
    """W Ray actors (RoleWorker) running one role as an FSDP group; the same `submit` as RayHandle."""

    def __init__(self, workers: list[Any], joined: list[Any]):
        self.workers = workers
        self.joined = joined  # the join calls' refs: construction errors surface from them

    @property
    def world(self) -> int:
        return len(self.workers)

    def submit(self, method: str, *args: Any) -> GroupPending:
        if method not in BATCH_METHODS:  # every rank (collectives: save, load), rank 0's answer
            return GroupPending([w.call.remote(method, *args) for w in self.workers], lambda outs: outs[0])
        rows = batch_rows(args[0])
        if method == "generate":  # the batch's seed becomes the rows': each rank samples its rows' own
            args = (args[0], row_seeds(args[1], rows))
        bounds = chunk_bounds(rows, self.world)
        chunks = [[take_rows(a, lo, hi) for a in args] for lo, hi in bounds]
        weights = [float(c[0].mask_BN.sum()) if isinstance(c[0], Experience) else float(hi - lo)
                   for c, (lo, hi) in zip(chunks, bounds)]  # fmt: skip
        refs = [w.call.remote(method, *chunk) for w, chunk in zip(self.workers, chunks)]
        return GroupPending(refs, lambda outs: join_outputs(outs, weights))

    def close(self) -> None:
        import ray  # only Ray handles exist when this runs

        for worker in self.workers:
            ray.kill(worker)


def start_group(role: str, payload: str, world: int, num_cpus: float, num_gpus: float) -> WorkerGroupHandle:
    """W RoleWorker actors; rank 0's node is the rendezvous. Returns once every rank is joining
    (they load and shard the model concurrently: wait on `joined`)."""
    import ray  # Ray mode only

    remote = ray.remote(RoleWorker).options(num_cpus=num_cpus, num_gpus=num_gpus)
    workers = [remote.remote() for _ in range(world)]
    address, port = ray.get(workers[0].master_address.remote())
    joined = [w.join.remote(role, payload, rank, world, address, port) for rank, w in enumerate(workers)]
    return WorkerGroupHandle(workers, joined)


Handle = LocalHandle | RayHandle | WorkerGroupHandle


@dataclass
class Roles:
    actor: Handle
    critic: Handle
    reference: Handle
    reward: Handle

    def close(self) -> None:
        for handle in (self.actor, self.critic, self.reference, self.reward):
            handle.close()


ROLE_CLASSES = {"actor": ActorRole, "critic": CriticRole, "reference": ReferenceRole, "reward": RewardRole}


def start_roles(cfg: PPOConfig, use_ray: bool, role_gpus: float = 0.0) -> Roles:
    """The four roles as local objects, or as Ray actors (cfg.role_cpus CPUs and role_gpus GPUs each;
    Ray must be initialised). Under Ray each builds its model in its own process, in parallel.
    cfg.actor_workers / critic_workers > 1 make that role a worker group (Ray only), a whole GPU per
    rank on cuda: NCCL takes one device per rank."""
    workers = {"actor": cfg.actor_workers, "critic": cfg.critic_workers}
    if not use_ray:
        if max(workers.values()) > 1:
            raise ValueError("actor_workers and critic_workers > 1 shard a role over Ray workers: run without --local")
        return Roles(**{name: LocalHandle(cls(cfg)) for name, cls in ROLE_CLASSES.items()})
    import ray  # Ray mode only

    payload = cfg.model_dump_json()
    handles: dict[str, Handle] = {}
    waits = []
    for name, cls in ROLE_CLASSES.items():
        world = workers.get(name, 1)
        if world > 1:
            group = start_group(name, payload, world, cfg.role_cpus, 1.0 if role_gpus > 0 else 0.0)
            handles[name], waits = group, waits + group.joined
        else:
            actor = ray.remote(cls).options(num_cpus=cfg.role_cpus, num_gpus=role_gpus).remote(payload)
            # A cheap call per actor: construction errors surface here, not at the first real call.
            handles[name], waits = RayHandle(actor), waits + [actor.ready.remote()]
    ray.get(waits)
    return Roles(**handles)
