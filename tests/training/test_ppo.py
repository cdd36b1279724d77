"""PPO: GAE, the clipped objectives, the KL penalty and its controller by hand; teacher-forced
log-probs against the sampler's; a few steps on the toy reward "rule:shorter" that raise the
reward with the KL bounded, then resume to the same numbers; Ray roles against one process.

The toy: the tiny MoE from random weights (tests/training/test_reward_model.py's checkpoint and
character tokenizer), prompts "q: xyz a:" of random letters, 8 new tokens at most. A random
policy stops (samples EOS among 32 tokens) in about a quarter of its responses; "shorter"
(-response tokens) rewards stopping early, which PPO learns in ten steps of 16 responses.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from contract.layout import TrainingRun
from contract.manifest import Provenance
from contract.posttrain import (
    PosttrainFile,
    PosttrainManifest,
    PosttrainRun,
    posttrain_totals,
    write_posttrain_manifest,
)
from tests.training.test_reward_model import LETTERS, char_tokenizer, write_init_checkpoint
from training.checkpoint import CheckpointManager, TrainingState, read_meta
from training.commands import commands
from training.generate import generate
from training.metrics_log import read_metrics
from training.optim import RecipeScheduler, build_optimizer
from training.ppo import PPOTrainer, run_ppo
from training.ppo_config import CRITIC_DIR, KIND, PPOConfig, RuleReward, parse_rule_reward, read_ppo_prompts
from training.ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    distinct_n,
    gae,
    kl_penalized_rewards,
    masked_whiten,
    pack,
    response_logprobs,
)
from training.ppo_roles import start_roles
from training.preference_trainer import load_init_model
from training.recipe import OptimizerConfig
from training.reward_model import RewardModel
from training.sampling_config import SamplingConfig

# ---------------------------------------------------------------------------------------------
# The arithmetic, by hand
# ---------------------------------------------------------------------------------------------


def close(got: torch.Tensor, want: list, atol: float = 1e-6) -> None:
    torch.testing.assert_close(got, torch.tensor(want, dtype=got.dtype), atol=atol, rtol=0)


def test_gae_matches_hand_computation():
    """Row 0: three tokens; row 1: two tokens and a padding column that must change nothing."""
    rewards = torch.tensor([[0.1, -0.2, 1.0], [0.5, 2.0, 9.0]])
    values = torch.tensor([[0.5, 0.4, 0.3], [1.0, 0.2, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # Row 0: delta_2 = 1 - 0.3 = 0.7 (V after the last token is 0); delta_1 = -0.2 + 0.9*0.3 - 0.4 = -0.33;
    # delta_0 = 0.1 + 0.9*0.4 - 0.5 = -0.04. A_t = delta_t + 0.72 A_{t+1}.
    a2 = 0.7
    a1 = -0.33 + 0.72 * a2
    a0 = -0.04 + 0.72 * a1
    # Row 1: delta_1 = 2 - 0.2 = 1.8; delta_0 = 0.5 + 0.9*0.2 - 1 = -0.32.
    b1 = 1.8
    b0 = -0.32 + 0.72 * b1
    close(adv, [[a0, a1, a2], [b0, b1, 0.0]])
    close(ret, [[a0 + 0.5, a1 + 0.4, a2 + 0.3], [b0 + 1.0, b1 + 0.2, 0.0]])
    # gamma = lam = 1: the advantage is the reward-to-go minus the value.
    adv1, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert adv1[0].tolist() == pytest.approx([0.9 - 0.5, 0.8 - 0.4, 1.0 - 0.3], abs=1e-6)


def test_clipped_policy_loss_value_and_clip_fraction():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[0.5, 1.0, 1.5, 3.0]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, 5.0]])
    mask = torch.tensor([[True, True, True, False]])  # the ratio-3 token is padding
    loss, clip_frac = clipped_policy_loss(new, old, adv, mask, clip=0.2)
    # Per token max(-A r, -A clip(r, 0.8, 1.2)): r=0.5, A=1: max(-0.5, -0.8) = -0.5; r=1, A=-1: 1;
    # r=1.5, A=1: max(-1.5, -1.2) = -1.2. Ratios 0.5 and 1.5 lie outside [0.8, 1.2].
    assert float(loss) == pytest.approx((-0.5 + 1.0 - 1.2) / 3, abs=1e-6)
    assert float(clip_frac) == pytest.approx(2 / 3)
    # The gradient flows only where the unclipped term is the max (token 0 and 1), not through clipped token 2.
    new = new.clone().requires_grad_(True)
    clipped_policy_loss(new, old, adv, mask, clip=0.2)[0].backward()
    assert new.grad[0].tolist() == pytest.approx([-0.5 / 3, 1.0 / 3, 0.0, 0.0], abs=1e-6)


def test_clipped_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.5, 0.0]])
    returns = torch.tensor([[2.0, 1.0]])
    loss, clip_frac = clipped_value_loss(values, old, returns, torch.tensor([[True, True]]), clip=0.2)
    # Token 0: V moved 0.5 > 0.2, clipped V = 0.7: max((1-2)^2, (0.7-2)^2) = 1.69; token 1: (0-1)^2 = 1.
    assert float(loss) == pytest.approx(0.5 * (1.69 + 1.0) / 2, abs=1e-6)
    assert float(clip_frac) == pytest.approx(0.5)


def test_kl_penalty_on_every_response_token_and_score_on_the_last():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    rewards = kl_penalized_rewards(logp, ref, mask, torch.tensor([3.0, -1.0]), beta=0.1)
    # -0.1 (log pi - log ref): row 0: -0.05, +0.1, 0 (+3 on its last token); row 1: -0.1 - 1 on its only token.
    close(rewards, [[-0.05, 0.1, 3.0], [-1.1, 0.0, 0.0]])


def test_adaptive_kl_controller_follows_ziegler_et_al():
    kl = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    kl.update(12.0, n_responses=256)  # error clipped to +0.2: beta * (1 + 0.2 * 256 / 10000)
    assert kl.value == pytest.approx(0.2 * 1.00512)
    kl.update(5.4, n_responses=256)  # error 5.4 / 6 - 1 = -0.1
    assert kl.value == pytest.approx(0.2 * 1.00512 * (1 - 0.1 * 256 / 10_000))
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 256)
    assert fixed.value == 0.05


def test_whitening_and_distinct_ngrams():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    w = masked_whiten(x, mask)
    real = w[mask]
    assert float(real.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(real.pow(2).mean()) == pytest.approx(1.0, abs=1e-5)  # biased variance 1
    assert w[~mask].tolist() == [0.0, 0.0]
    # distinct-1: {1, 2, 3} of 5 unigrams; distinct-2: (1,2), (2,1), (3,3) of 4 bigrams, (1, 2) repeated.
    assert distinct_n([[1, 2, 1], [3, 3]], 1) == pytest.approx(3 / 5)
    assert distinct_n([[1, 2, 1, 2], [3, 3]], 2) == pytest.approx(3 / 4)
    assert distinct_n([[1]], 2) == 0.0


def test_rule_rewards_and_config_checks(tmp_path):
    assert parse_rule_reward("rule:shorter").score([5, 6, 1], "ab") == -3.0
    rule = parse_rule_reward("rule:contains:yes")
    assert rule == RuleReward("contains", "yes")
    assert (rule.score([1], "oh yes!"), rule.score([1], "no")) == (1.0, 0.0)
    for bad in ("shorter", "rule:longest", "rule:contains:"):
        with pytest.raises(ValueError):
            parse_rule_reward(bad)
    base = {"init_checkpoint": "x", "prompts": "p.jsonl"}
    with pytest.raises(ValueError, match="exactly one"):
        PPOConfig.model_validate(base)
    with pytest.raises(ValueError, match="divide"):
        PPOConfig.model_validate({**base, "reward": "rule:shorter", "rollout_batch": 6, "mini_batch": 4})
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "hi"}\n{"prompt": [{"role": "user", "content": "yo"}]}\n')
    assert read_ppo_prompts(path) == ["hi", [{"role": "user", "content": "yo"}]]


def test_prompts_from_a_post_training_manifest_train_split_only(tmp_path):
    """A curated set's prompt records of the train split (red-team prompts sit in eval: never trained on)."""
    (tmp_path / "data").mkdir()
    files = []
    for split, records in {"train": [{"prompt": "a"}, {"prompt": "b"}], "eval": [{"prompt": "c"}]}.items():
        raw = "".join(json.dumps(r) + "\n" for r in records).encode()
        (tmp_path / "data" / f"prompt-{split}.jsonl").write_bytes(raw)
        files.append(PosttrainFile(path=f"data/prompt-{split}.jsonl", kind="prompt", split=split, records=len(records),
                                   bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest(), words=1))  # fmt: skip
    provenance = Provenance(inputs=["test"], config={}, config_sha256="0" * 64, stages=[],
                            created_at=datetime.now(timezone.utc), flywheel_version="0")  # fmt: skip
    write_posttrain_manifest(str(tmp_path / PosttrainRun.MANIFEST), PosttrainManifest(
        version=1, format="posttrain", dataset_id="demo", files=files, totals=posttrain_totals(files),
        provenance=provenance))  # fmt: skip
    assert read_ppo_prompts(tmp_path) == ["a", "b"]


# ---------------------------------------------------------------------------------------------
# The model side
# ---------------------------------------------------------------------------------------------


def write_toy(root: Path, prompts: int, balance_loss: bool = True) -> dict[str, str]:
    """A char tokenizer, a step-0 tiny policy and `prompts` random "q: xyz a:" prompts under `root`."""
    tok_path = str(root / "tokenizer.json")
    char_tokenizer().save(tok_path)
    rng = np.random.default_rng(0)
    records = [{"prompt": "q: " + "".join(rng.choice(list(LETTERS), size=3)) + " a:"} for _ in range(prompts)]
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in records))
    return {"init": write_init_checkpoint(root / "init", tok_path, balance_loss=balance_loss),
            "prompts": str(root / "prompts.jsonl"), "tokenizer": tok_path}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, str]:
    return write_toy(tmp_path_factory.mktemp("ppo_toy"), prompts=64)


def ppo_config(toy: dict[str, str], out: Path, **overrides) -> PPOConfig:
    data = {"init_checkpoint": toy["init"], "reward": "rule:shorter", "prompts": toy["prompts"], "out_dir": str(out),
            "prompt_format": "plain", "steps": 10, "rollout_batch": 16, "mini_batch": 8, "ppo_epochs": 2,
            "max_new_tokens": 8, "lr": 3e-3, "kl_coef": 0.05, "seed": 0, "device": "cpu",
            "checkpoint_interval_s": 3600, "checkpoint_every_steps": 5, "resume": True}  # fmt: skip
    return PPOConfig.model_validate({**data, **overrides})


def test_teacher_forced_logprobs_equal_the_samplers(toy):
    """The ratio's old log-probs (a teacher-forced forward, eval mode) match what the KV-cached
    sampler reported for the same tokens, and the train-mode forward (dropout off) gives the same."""
    model, _ = load_init_model(toy["init"], disable_dropout=True)
    prompts = [[5, 6, 7], [8, 9], [10]]
    out = generate(model, prompts, SamplingConfig(max_new_tokens=6, temperature=0.7, seed=3), eos_id=1, pad_id=2)
    tokens_BS, prompt_lengths_B, mask_BN = pack(prompts, out.token_ids(), pad_id=2)
    with torch.no_grad():
        model.eval()
        eval_BN, entropy_BN, _ = response_logprobs(model, tokens_BS, prompt_lengths_B, mask_BN.shape[1], 0.7)
        model.train()
        train_BN, _, _ = response_logprobs(model, tokens_BS, prompt_lengths_B, mask_BN.shape[1], 0.7)
    sampled_BN = out.logprobs_BN[:, : mask_BN.shape[1]]
    assert torch.allclose(eval_BN[mask_BN], sampled_BN[mask_BN], atol=1e-5)
    assert torch.equal(eval_BN, train_BN)
    assert bool((entropy_BN[mask_BN] > 0).all()) and bool((entropy_BN <= math.log(model.cfg.vocab_size) + 1e-4).all())


@pytest.fixture(scope="module")
def trained(toy, tmp_path_factory) -> tuple[Path, list[dict]]:
    """Ten PPO steps in one process (seed 0), checkpoints at steps 5 and 10."""
    out = tmp_path_factory.mktemp("ppo_run")
    records = run_ppo(ppo_config(toy, out), use_ray=False)
    return out, records


def test_ppo_raises_the_shorter_reward_with_kl_bounded(trained):
    out, records = trained
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 11))
    first, last = records[0], records[-1]
    assert first["kl"] == pytest.approx(0.0, abs=1e-5)  # step 1 samples the reference itself
    early = np.mean([r["reward_mean"] for r in records[:3]])
    late = np.mean([r["reward_mean"] for r in records[-3:]])
    # Measured (seed 0, per-row sampling seeds): -7.48 over steps 1-3, -2.94 over 8-10 (responses
    # stop sooner); KL at most 2.0.
    assert late > early + 1.5, (early, late)
    assert records[-1]["stop_fraction"] > records[0]["stop_fraction"]
    assert all(0 <= r["kl"] < 6.0 for r in records), [r["kl"] for r in records]  # nats per response
    for key in ("clip_frac", "value_loss", "policy_loss", "entropy", "response_length", "distinct_1", "distinct_2",
                "kl_coef", "approx_kl", "value_clip_frac"):
        assert all(math.isfinite(r[key]) for r in records), key
    assert all(0 <= r["clip_frac"] <= 1 for r in records)
    assert last["value_loss"] < first["value_loss"]  # the critic learns the (shrinking) returns
    # The actor's checkpoint is a plain policy; the critic's sits beside it.
    actor = CheckpointManager(TrainingRun(str(out)).checkpoints).latest()
    assert read_meta(actor)["kind"] == KIND and actor.endswith("step_00000010")
    assert CheckpointManager(out / CRITIC_DIR / "checkpoints").latest().endswith("step_00000010")


def test_resume_repeats_the_uninterrupted_steps(toy, trained, tmp_path):
    """Steps 6-10 rerun from the step-5 checkpoints (model, optimiser, critic, KL coefficient,
    prompt cursor) give the same records as the run that never stopped."""
    out, records = trained
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    for root in (copy / "checkpoints", copy / CRITIC_DIR / "checkpoints"):
        shutil.rmtree(root / "step_00000010")
    again = run_ppo(ppo_config(toy, copy), use_ray=False)
    assert [r["step"] for r in again] == [6, 7, 8, 9, 10]
    keys = ("reward_mean", "kl", "kl_coef", "clip_frac", "value_loss", "policy_loss", "entropy", "response_length")
    for a, b in zip(again, records[5:]):
        assert {k: a[k] for k in keys} == pytest.approx({k: b[k] for k in keys}, rel=1e-4, abs=1e-6)
    assert [r["step"] for r in read_metrics(copy)] == list(range(1, 11))


def write_reward_checkpoint(root: Path, init: str, tokenizer_path: str) -> str:
    """A reward-model checkpoint as `flywheel reward-model` leaves one: the init backbone and a
    seeded head (untrained: PPO's plumbing is under test here, not the reward)."""
    backbone, _ = load_init_model(init, disable_dropout=True)
    torch.manual_seed(1)
    rm = RewardModel(backbone, head_std=1.0)
    opt_cfg = OptimizerConfig(schedule={"total_steps": 1, "warmup_steps": 0})
    optimizer = build_optimizer(rm, opt_cfg)
    state = TrainingState(rm, optimizer, RecipeScheduler(optimizer, opt_cfg), lambda: {"step": 0}, lambda s: None)
    manager = CheckpointManager(root / "checkpoints")
    manager.save(0, state, {"kind": "reward_model", "model_config": rm.cfg.model_dump(mode="json"),
                            "tokenizer": tokenizer_path, "max_len": 32, "prompt_format": "plain"})  # fmt: skip
    return manager.path_for(0)


def test_reward_model_scores_and_initialises_the_critic(toy, tmp_path):
    """With --reward-model: the reward role scores prompt + response with the RM at the last token,
    the critic starts as the RM (backbone and head), and a response that never stopped loses
    missing_eos_penalty from its score."""
    rm_path = write_reward_checkpoint(tmp_path / "rm", toy["init"], toy["tokenizer"])
    cfg = ppo_config(toy, tmp_path / "out", reward=None, reward_model=rm_path, steps=1, missing_eos_penalty=2.0,
                     target_kl=1.0, kl_horizon=100)
    roles = start_roles(cfg, use_ray=False)
    rm = RewardModel.load(rm_path)
    critic = roles.critic.role.model
    assert all(torch.equal(a, b) for a, b in zip(critic.state_dict().values(), rm.state_dict().values()))
    sequences = ([5, 6, 7], [8, 9, 1])
    scores = roles.reward.submit("score", [s[:2] for s in sequences], [s[2:] for s in sequences]).get()
    torch.testing.assert_close(scores, rm.score_tokens(list(sequences)))
    (record,) = PPOTrainer(cfg, roles).fit()
    assert record["kl"] == pytest.approx(0.0, abs=1e-5)
    assert record["score_with_penalty_mean"] == pytest.approx(
        record["reward_mean"] - 2.0 * (1 - record["stop_fraction"]), abs=1e-5)
    assert math.isfinite(record["value_loss"]) and math.isfinite(record["policy_loss"])
    # The adaptive controller after a KL of 0 against a target of 1: error -0.2, 16 responses, horizon 100.
    assert (record["kl_coef"], record["kl_coef_next"]) == pytest.approx((0.05, 0.05 * (1 - 0.2 * 16 / 100)))


@pytest.mark.slow  # four Ray actor processes, each importing torch and loading a model: ~30-60 s on 2 CPUs
@pytest.mark.timeout(600)
def test_ray_roles_via_the_cli_match_one_process(toy, trained, tmp_path):
    """`flywheel ppo` with the roles as Ray actors: its first step has the statistics of the
    single-process run's first step (same seeds; fp rounding may differ across processes)."""
    import ray

    ray.init(num_cpus=2, object_store_memory=100 * 1024**2, include_dashboard=False, ignore_reinit_error=True)
    try:
        out = tmp_path / "ray"
        result = CliRunner().invoke(commands, [
            "ppo", "--init", toy["init"], "--reward", "rule:shorter", "--prompts", toy["prompts"], "--out", str(out),
            "--steps", "1", "--rollout-batch", "16", "--mini-batch", "8", "--ppo-epochs", "2", "--max-new-tokens", "8",
            "--lr", "3e-3", "--kl-coef", "0.05", "--prompt-format", "plain", "--seed", "0"])  # fmt: skip
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    (got,) = read_metrics(out)
    want = trained[1][0]
    for key in ("reward_mean", "kl", "response_length", "stop_fraction", "distinct_2"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    for key in ("policy_loss", "value_loss", "clip_frac", "entropy", "approx_kl", "value_mean"):
        assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-5), key
    assert json.loads(result.output[result.output.index("{"):])["steps"] == 1
