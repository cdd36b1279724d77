"""DPO: eq. 7 by hand, answer-only sequence log-probs, log 2 at step 0, and a few steps that raise
the held-out implicit-reward accuracy on the toy "prefers shorter answers" set
(tests/training/test_reward_model.py)."""

from __future__ import annotations

import math

import pytest
import torch

from contract.layout import TrainingRun
from tests.training.helpers import spawn
from tests.training.test_reward_model import char_tokenizer, toy  # noqa: F401  (toy: a module fixture)
from training.checkpoint import CheckpointManager, read_meta
from training.config import preset
from training.dpo import DPOObjective, build_dpo_objective, dpo_loss, sequence_logprobs
from training.export_hf import load_checkpoint_model
from training.metrics_log import read_metrics
from training.preference_config import DPOConfig
from training.preference_data import EncodedPair, collate_pairs
from training.preference_trainer import frozen_copy, run_rank


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return preset("tiny", char_tokenizer().get_vocab_size()).model_copy(update={"attn_dropout": 0.0}).build()


def test_dpo_loss_matches_hand_computation():
    # beta 0.5; chosen: log pi - log ref = -1 - (-2) = 1, rejected: -3 - (-2) = -1.
    loss, chosen, rejected = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]),
                                      torch.tensor([-2.0]), beta=0.5)  # fmt: skip
    assert (chosen.item(), rejected.item()) == (0.5, -0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.0)), abs=1e-6)  # -log sigmoid(0.5 - (-0.5))


def test_sequence_logprobs_score_only_the_answer():
    """Hand check: log p(c | a b) + log p(EOS | a b c) from a forward of the row alone, while the
    batch pads it and holds a longer rejected row."""
    model = tiny_model().eval()
    a, b, c, d, e, eos = 4, 5, 6, 7, 8, 1
    batch = collate_pairs([EncodedPair([a, b], [c, eos], [d, e, c, eos])], pad_id=2)
    with torch.no_grad():
        logp_B, n_B, _ = sequence_logprobs(model, batch)
        lp = torch.log_softmax(model(torch.tensor([[a, b, c]])).logits_BSV.float(), -1)[0]
        lp_rej = torch.log_softmax(model(torch.tensor([[a, b, d, e, c]])).logits_BSV.float(), -1)[0]
    assert n_B.tolist() == [2, 4]
    assert logp_B[0].item() == pytest.approx((lp[1, c] + lp[2, eos]).item(), abs=1e-5)
    expected_rej = lp_rej[1, d] + lp_rej[2, e] + lp_rej[3, c] + lp_rej[4, eos]
    assert logp_B[1].item() == pytest.approx(expected_rej.item(), abs=1e-5)


def test_loss_is_log_2_when_policy_is_the_reference():
    model = tiny_model()
    objective = DPOObjective(model, frozen_copy(model), beta=0.1)
    pairs = [EncodedPair([4, 5, 6], [7, 1], [8, 9, 10, 1]), EncodedPair([11], [12, 13, 1], [14, 1])]
    scores = objective.score(collate_pairs(pairs, pad_id=2))
    assert scores.loss_P.tolist() == pytest.approx([math.log(2)] * 2, abs=1e-7)
    assert scores.margin_P.tolist() == [0.0, 0.0]
    scores.loss_P.mean().backward()  # the policy gets a gradient, the reference none
    assert model.output.weight.grad is not None and model.output.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in objective.reference.parameters())


def test_dpo_steps_raise_heldout_preference_accuracy(toy, tmp_path):  # noqa: F811
    """Seed 0, beta 0.1, lr 3e-3, 20 steps of 16 pairs from the random-weight tiny model: held-out
    implicit-reward accuracy 0.5 (every margin 0) -> >= 0.75 (0.85 measured; 0.83 at step 10)."""
    out = tmp_path / "dpo"
    cfg = DPOConfig.model_validate({
        "init_checkpoint": toy["init"], "data": toy["train"], "eval_files": [toy["heldout"]], "out_dir": str(out),
        "steps": 20, "global_batch_pairs": 16, "micro_pairs": 8, "max_len": 32, "device": "cpu", "beta": 0.1, "seed": 0,
        "prompt_format": "plain",
        "optimizer": {"lr": 3e-3, "router_lr": 3e-3}, "checkpoint_interval_s": 3600,
    })  # fmt: skip
    records = run_rank(cfg, build_dpo_objective)
    first, last = read_metrics(out, TrainingRun.EVAL)
    assert (first["step"], first["accuracy"], first["margin"]["max"]) == (0, 0.5, 0.0)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # step 1 trains from pi == ref
    assert last["step"] == 20 and last["accuracy"] >= 0.75, last
    assert last["loss"] < first["loss"] - 0.05 and last["reward_chosen"] > last["reward_rejected"]
    assert {"logp_chosen", "logp_rejected", "drift_chosen", "drift_rejected", "logp_accuracy"} <= set(last)

    # The output is a plain policy checkpoint: the loader every other command uses reads it.
    ckpt = CheckpointManager(out / "checkpoints").latest()
    assert read_meta(ckpt)["kind"] == "dpo"
    policy, _ = load_checkpoint_model(ckpt)
    assert policy.cfg.vocab_size == char_tokenizer().get_vocab_size()


def _rank_run(rank: int, world: int, cfg_json: str) -> None:
    run_rank(DPOConfig.model_validate_json(cfg_json), build_dpo_objective)


def test_two_rank_fsdp_dpo_matches_one_process(toy, tmp_path):  # noqa: F811
    """Policy and reference both FSDP-sharded over 2 forked gloo ranks: the same steps as one
    process (about 3 s)."""
    def config(out, workers):
        return DPOConfig.model_validate({
            "init_checkpoint": toy["init"], "data": toy["train"], "eval_files": [toy["heldout"]], "out_dir": str(out),
            "steps": 3, "global_batch_pairs": 16, "micro_pairs": 8, "max_len": 32, "device": "cpu",
            "prompt_format": "plain",
            "optimizer": {"lr": 3e-3, "router_lr": 3e-3}, "checkpoint_interval_s": 3600, "workers": workers,
        })  # fmt: skip

    run_rank(config(tmp_path / "one", 1), build_dpo_objective)
    spawn(2, _rank_run, config(tmp_path / "two", 2).model_dump_json())
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["world"] for r in two] == [2] * 3
    for key in ("loss", "accuracy", "margin", "reward_chosen", "drift_rejected", "grad_norm"):
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], abs=2e-5), key
