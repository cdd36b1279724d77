"""PPO's actor and critic FSDP-sharded over Ray worker groups (training.ppo_roles.WorkerGroupHandle)
against one worker per role, on the same seed and prompts: the same rollouts, the same losses and
the same weights after two PPO steps; a resume of the sharded run repeats its second step.

The toy is test_ppo's (the tiny MoE from random weights, a character tokenizer, "rule:shorter"),
with the MoE balance loss off: it is a product of batch means (f_i P_i), which each rank takes over
its own rows, so with it on a group's update is not the single worker's (the z-loss is a mean per
position and agrees: every rank's rows are as wide as the mini-batch's).
Tolerance: fp32 on gloo, 1e-5 relative (the sharded ranks run smaller batches and FSDP sums the
gradients in another order: rounding only); weights also 1e-5 absolute (WEIGHT_ATOL).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.training.test_ppo import write_toy
from training.checkpoint import CheckpointManager
from training.generate import generate
from training.ppo import PPOTrainer
from training.ppo_config import CRITIC_DIR, PPOConfig
from training.ppo_math import Experience, pack
from training.ppo_roles import (
    ActorRole,
    CriticRole,
    chunk_bounds,
    join_outputs,
    row_seeds,
    start_roles,
    take_rows,
)
from training.preference_trainer import load_init_model
from training.sampling_config import SamplingConfig

RTOL, ATOL = 1e-5, 1e-6
# Weights after Adam steps: an update is about lr g / (|g| + eps) whatever g's size, so a weight whose
# gradient is near zero turns rounding into up to lr / 1000 here (measured: 2 of 16k expert weights
# moved 3e-6 apart, lr 3e-3; every other weight within 1e-5 relative).
WEIGHT_ATOL = 1e-5

# ---------------------------------------------------------------------------------------------
# Splitting and joining, by hand
# ---------------------------------------------------------------------------------------------


def test_rows_split_contiguously_and_outputs_join_in_rank_order():
    assert chunk_bounds(8, 2) == [(0, 4), (4, 8)]
    assert chunk_bounds(5, 3) == [(0, 2), (2, 4), (4, 5)]
    exp = Experience(*(torch.arange(12.0).view(4, 3) for _ in range(7)))
    part = take_rows(exp, 2, 4)
    assert part.tokens_BS.tolist() == [[6.0, 7.0, 8.0], [9.0, 10.0, 11.0]]  # full width: no re-trimming
    assert (take_rows([1, 2, 3, 4], 1, 3), take_rows(7, 1, 3)) == ([2, 3], 7)
    # generate's (responses, reasons): lists concatenated element by element, rank 0's rows first.
    assert join_outputs([([[1], [2]], ["stop", "length"]), ([[3]], ["stop"])], [2, 1]) == (
        [[1], [2], [3]], ["stop", "length", "stop"])  # fmt: skip
    assert join_outputs([torch.ones(1, 2), torch.zeros(2, 2)], [1, 2]).tolist() == [[1, 1], [0, 0], [0, 0]]
    # Statistics: token means weighted by each rank's tokens (3 and 1); grad norms are global on every rank.
    stats = join_outputs([{"policy_loss": 1.0, "actor_grad_norm": 5.0}, {"policy_loss": 3.0, "actor_grad_norm": 5.0}],
                         [3.0, 1.0])  # fmt: skip
    assert stats == {"policy_loss": pytest.approx((3 * 1.0 + 1 * 3.0) / 4), "actor_grad_norm": 5.0}


def test_workers_are_validated():
    base = {"init_checkpoint": "x", "prompts": "p.jsonl", "reward": "rule:shorter", "rollout_batch": 8}
    with pytest.raises(ValueError, match="actor_workers 3 must divide mini_batch 4"):
        PPOConfig.model_validate({**base, "mini_batch": 4, "actor_workers": 3})
    with pytest.raises(ValueError, match="critic_workers"):
        PPOConfig.model_validate({**base, "mini_batch": 2, "critic_workers": 4})
    with pytest.raises(ValueError, match="Ray"):
        start_roles(PPOConfig.model_validate({**base, "mini_batch": 4, "actor_workers": 2}), use_ray=False)


# ---------------------------------------------------------------------------------------------
# Two workers against one
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, str]:
    # The balance loss off: it is each rank's own under sharding (training.ppo_roles), not the batch's.
    return write_toy(tmp_path_factory.mktemp("ppo_sharded_toy"), prompts=32, balance_loss=False)


def sharded_config(toy: dict[str, str], out: Path, workers: int) -> PPOConfig:
    return PPOConfig.model_validate({
        "init_checkpoint": toy["init"], "reward": "rule:shorter", "prompts": toy["prompts"], "out_dir": str(out),
        "prompt_format": "plain", "steps": 2, "rollout_batch": 8, "mini_batch": 4, "ppo_epochs": 2,
        "max_new_tokens": 8, "lr": 3e-3, "kl_coef": 0.05, "seed": 0, "device": "cpu", "checkpoint_interval_s": 3600,
        "checkpoint_every_steps": 1, "resume": True, "actor_workers": workers, "critic_workers": workers,
        "role_cpus": 0.25})  # fmt: skip


def test_a_rows_response_ignores_the_rows_beside_it(toy, tmp_path):
    """Each row samples from its own seed: a batch's responses are its halves' (what two ranks
    sample), and a reversed batch gives them reversed."""
    actor = ActorRole(sharded_config(toy, tmp_path, 1))
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14], [15, 16], [17, 18, 19], [20], [21, 22]]
    responses, reasons = actor.generate(prompts, 11)
    seeds = row_seeds(11, len(prompts))
    first, second = actor.generate(prompts[:4], seeds[:4]), actor.generate(prompts[4:], seeds[4:])
    assert (first[0] + second[0], first[1] + second[1]) == (responses, reasons)
    assert actor.generate(prompts[::-1], seeds[::-1]) == (responses[::-1], reasons[::-1])
    assert len({tuple(r) for r in responses}) > 1 and len({len(r) for r in responses}) > 1  # sampled, ragged


def test_a_finished_rank_decodes_padding_until_every_rank_is_done(toy):
    """generate's all_done hook: with another rank still decoding (the hook says no), a batch whose
    rows all stopped keeps running forwards (FSDP's all-gathers must match across ranks), its rows
    emitting masked padding; the responses are those of the batch alone."""
    model, _ = load_init_model(toy["init"], disable_dropout=True)
    prompts = [[5, 6, 7], [8, 9]]
    greedy = SamplingConfig(max_new_tokens=6, temperature=0)
    first = generate(model, prompts, greedy, eos_id=None, pad_id=2).tokens_BN[:, 0].tolist()
    stops = SamplingConfig(max_new_tokens=6, temperature=0, stop_token_ids=tuple(first))  # both stop at once
    forwards = []
    hook = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        alone = generate(model, prompts, stops, pad_id=2)
        calls_alone = len(forwards)
        waiting = generate(model, prompts, stops, pad_id=2, all_done=lambda done: False)
    finally:
        hook.remove()
    assert (calls_alone, len(forwards) - calls_alone) == (1, 6)  # the prefill; then 5 more steps
    assert waiting.token_ids() == alone.token_ids() == [[t] for t in first]
    assert waiting.finish_reasons == alone.finish_reasons == ["stop", "stop"]
    assert waiting.mask_BN[:, 1:].sum() == 0 and bool((waiting.tokens_BN[:, 1:] == 2).all())


def trained_weights(cfg: PPOConfig, step: int) -> dict[str, torch.Tensor]:
    """Actor and critic weights of a run's checkpoints at `step`, loaded into one-process roles
    (DCP reshards a group's checkpoint to one rank)."""
    state = {"step": 0, "kl_coef": 0.0, "data": {}, "prompts_fingerprint": "", "rollout_batch": 0}
    weights = {}
    for prefix, role, root in (("actor.", ActorRole(cfg), Path(cfg.out_dir) / "checkpoints"),
                               ("critic.", CriticRole(cfg), Path(cfg.out_dir) / CRITIC_DIR / "checkpoints")):  # fmt: skip
        role.load(CheckpointManager(root).path_for(step), dict(state))
        weights.update({prefix + k: v.detach().clone() for k, v in role.model.state_dict().items()})
    return weights


def close_records(got: dict, want: dict) -> None:
    keys = ("reward_mean", "kl", "response_length", "stop_fraction", "distinct_2", "policy_loss", "value_loss",
            "clip_frac", "entropy", "approx_kl", "value_mean", "actor_grad_norm", "critic_grad_norm")
    # abs 2e-6: the records are rounded to 6 decimals (training.ppo), a boundary may fall between two runs.
    assert {k: got[k] for k in keys} == pytest.approx({k: want[k] for k in keys}, rel=RTOL, abs=2e-6)


# Six Ray actor processes (2 + 2 sharded, reference, reward), each importing torch: measured 80-110 s on the
# shared 2-core box (load 35-55), about 70 s of it starting the processes; the PPO steps take ~15 s.
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_workers_per_role_match_one_and_resume(toy, tmp_path, ray_local):
    one_cfg, two_cfg = sharded_config(toy, tmp_path / "one", 1), sharded_config(toy, tmp_path / "two", 2)
    one = start_roles(one_cfg, use_ray=False)
    two = start_roles(two_cfg, use_ray=True)
    try:
        # Rollouts: the same tokens row for row (each row samples from its own seed), then the same
        # old log-probs and values from the rows split over the ranks.
        trainer = PPOTrainer(one_cfg, one)
        prompts = trainer.prompt_ids[:8]
        responses, reasons = one.actor.submit("generate", prompts, 11).get()
        assert two.actor.submit("generate", prompts, 11).get() == (responses, reasons)
        assert len({len(r) for r in responses}) > 1  # ragged: some rows finish before others
        tokens_BS, lengths_B, mask_BN = pack(prompts, responses, trainer.pad_id)
        for role, method in (("actor", "logprobs"), ("critic", "values")):
            want = getattr(one, role).submit(method, tokens_BS, lengths_B, mask_BN.shape[1]).get()
            got = getattr(two, role).submit(method, tokens_BS, lengths_B, mask_BN.shape[1]).get()
            torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)

        # Two PPO steps (2 epochs x 2 mini-batches each): same statistics, same weights.
        want_records = PPOTrainer(one_cfg, one).fit()
        got_records = PPOTrainer(two_cfg, two).fit()
        assert [r["step"] for r in got_records] == [1, 2]
        for got, want in zip(got_records, want_records):
            close_records(got, want)
        want_weights = trained_weights(one_cfg, 2)
        got_weights = trained_weights(two_cfg, 2)
        assert got_weights.keys() == want_weights.keys()
        initial = trained_weights(one_cfg, 1)
        assert any(not torch.equal(initial[k], want_weights[k]) for k in want_weights)  # step 2 moved them
        torch.testing.assert_close(got_weights, want_weights, rtol=RTOL, atol=WEIGHT_ATOL)

        # Resume the sharded run from step 1 on the same workers: step 2 again, the same numbers.
        for root in (tmp_path / "two" / "checkpoints", tmp_path / "two" / CRITIC_DIR / "checkpoints"):
            shutil.rmtree(root / "step_00000002")
        again = PPOTrainer(two_cfg, two)
        assert again.resume() == 1
        (record,) = again.fit()
        assert record["step"] == 2
        close_records(record, got_records[1])
        torch.testing.assert_close(trained_weights(two_cfg, 2), got_weights, rtol=RTOL, atol=WEIGHT_ATOL)
    finally:
        two.close()
        one.close()
