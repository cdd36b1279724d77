"""The reward model: Bradley-Terry loss, last-token pooling, learning a preference rule, FSDP
parity, checkpoint + resume, and the `RewardModel.load` / `score` export.

The toy preference set (`toy_pairs`), the issue's "prefers shorter answers": prompts "q: xyz a:"
of random letters, two answers of random letters of different lengths (1 to 8), the shorter one
chosen. Letters are drawn alike for both answers, so no token gives the answer away: the reward
must read the length, which the tiny model learns from random weights in tens of steps. Held-out
pairs are new draws (another seed): accuracy there is generalisation, not memory. (A first
version, vowels chosen over consonants, was too easy: a random head already ranked 94% of it.)
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import BPE
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
from tests.training.helpers import spawn
from training.chat_format import encode_chat
from training.checkpoint import CheckpointManager, TrainingState, read_meta
from training.commands import commands
from training.config import preset
from training.metrics_log import read_metrics
from training.optim import RecipeScheduler, build_optimizer
from training.preference_config import RewardModelConfig
from training.preference_data import (
    PairEncoder,
    PairSampler,
    PreferencePair,
    collate_pairs,
    parse_pair,
    read_preference_pairs,
)
from training.preference_trainer import launch_ray, pair_summary, preference_accuracy, run_rank
from training.recipe import OptimizerConfig
from training.reward_model import (
    RewardModel,
    bradley_terry_loss,
    build_reward_objective,
    last_token_hidden,
)

SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>"]
CHARS = "abcdefghijklmnopqrstuvwxyz :"
LETTERS = CHARS[:26]


def char_tokenizer() -> Tokenizer:
    """One token per character (BPE without merges), <|bos|> <|eos|> <|pad|> = 0, 1, 2."""
    vocab = {t: i for i, t in enumerate(SPECIALS + ["<unk>"] + list(CHARS))}
    tok = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens(SPECIALS)
    return tok


def toy_pairs(n: int, seed: int) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)

    def draw(k: int) -> str:
        return "".join(rng.choice(list(LETTERS), size=k))

    pairs = []
    for _ in range(n):
        short, long = sorted(rng.choice(np.arange(1, 9), size=2, replace=False))
        pairs.append({"prompt": f"q: {draw(3)} a:", "chosen": draw(short), "rejected": draw(long),
                      "category": "close" if long - short == 1 else "apart"})  # fmt: skip
    return pairs


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def write_init_checkpoint(root: Path, tokenizer_path: str, seed: int = 0, balance_loss: bool = True) -> str:
    """A tiny model's step-0 checkpoint (random weights), as a pretraining run would leave it;
    dropout off, and the MoE balance loss too unless `balance_loss`."""
    cfg = preset("tiny", char_tokenizer().get_vocab_size()).model_copy(update={"attn_dropout": 0.0})
    if not balance_loss:
        cfg = cfg.model_copy(update={"moe": cfg.moe.model_copy(update={"balance_loss_coef": 0.0})})
    torch.manual_seed(seed)
    model = cfg.build()
    opt_cfg = OptimizerConfig(schedule={"total_steps": 1, "warmup_steps": 0})
    optimizer = build_optimizer(model, opt_cfg)
    state = TrainingState(model, optimizer, RecipeScheduler(optimizer, opt_cfg), lambda: {"step": 0}, lambda s: None)
    manager = CheckpointManager(root / "checkpoints")
    manager.save(0, state, {"model_config": cfg.model_dump(mode="json"), "tokenizer": tokenizer_path, "seq_len": 32})
    return manager.path_for(0)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("toy")
    tok_path = str(root / "tokenizer.json")
    char_tokenizer().save(tok_path)
    return {
        "init": write_init_checkpoint(root / "init", tok_path),
        "train": write_jsonl(root / "train.jsonl", toy_pairs(512, seed=0)),
        "heldout": write_jsonl(root / "heldout.jsonl", toy_pairs(128, seed=1)),
        "tokenizer": tok_path,
    }


def rm_config(toy: dict[str, str], out: Path, **overrides) -> RewardModelConfig:
    data = {"init_checkpoint": toy["init"], "data": toy["train"], "eval_files": [toy["heldout"]], "out_dir": str(out),
            "steps": 40, "global_batch_pairs": 16, "micro_pairs": 8, "max_len": 32, "seed": 0, "device": "cpu",
            "prompt_format": "plain",
            "optimizer": {"lr": 3e-3, "router_lr": 3e-3}, "checkpoint_interval_s": 3600}  # fmt: skip
    return RewardModelConfig.model_validate({**data, **overrides})


# ---------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------


def test_bradley_terry_loss_matches_hand_computation():
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    # -log sigmoid(m) = log(1 + e^-m) for margins 1, 0, -2.
    expected = [math.log(1 + math.exp(-1)), math.log(2), math.log(1 + math.exp(2))]
    assert bradley_terry_loss(chosen, rejected).tolist() == pytest.approx(expected, abs=1e-6)
    # Only the margin matters: rewards are defined up to a constant.
    assert torch.allclose(bradley_terry_loss(chosen + 5, rejected + 5), bradley_terry_loss(chosen, rejected))


def test_accuracy_counts_ties_half_and_summary_quantiles():
    margins = torch.tensor([1.0, -1.0, 0.0, 2.0])
    assert preference_accuracy(margins) == pytest.approx(0.625)  # (1 + 0 + 0.5 + 1) / 4
    summary = pair_summary(torch.zeros(4), torch.arange(1.0, 101.0)[:4], {})
    assert summary["margin"]["mean"] == pytest.approx(2.5)
    assert summary["margin"]["p50"] == pytest.approx(2.5)  # linear interpolation of 1, 2, 3, 4


def test_pair_encoding_and_batch_layout():
    tok = char_tokenizer()
    enc = PairEncoder(tok, eos_id=1, max_len=8)
    pair = enc.encode(parse_pair({"prompt": "ab", "chosen": "c", "rejected": "de"}, "x"))
    ids = {c: tok.token_to_id(c) for c in "abcde"}
    assert (pair.prompt, pair.chosen, pair.rejected) == ([ids["a"], ids["b"]], [ids["c"], 1], [ids["d"], ids["e"], 1])
    batch = collate_pairs([pair], pad_id=2)
    a, b, c, d, e = (ids[k] for k in "abcde")
    assert batch.tokens_BS.tolist() == [[a, b, c, 1, 2], [a, b, d, e, 1]]
    assert batch.last_index_B.tolist() == [3, 4]
    # Targets t+1 scored: the answer tokens (and EOS), never the prompt nor padding.
    assert batch.answer_target_mask().tolist() == [[False, True, True, False], [False, True, True, True]]
    # Too long: the prompt loses its start first.
    long = PairEncoder(tok, eos_id=1, max_len=4).encode(parse_pair({"prompt": "abc", "chosen": "d", "rejected": "e"},
                                                                   "x"))  # fmt: skip
    assert (long.prompt, long.truncated) == ([b, c], True)


def test_chat_prompt_is_encoded_as_sft_encodes_the_conversation():
    """A messages prompt + answer gives the ids (and the scored answer span) that SFT's
    `encode_chat` gives the conversation with the answer as its assistant turn."""
    tok = char_tokenizer()
    messages = [{"role": "user", "content": "q: abc"}]
    pair = PairEncoder(tok, eos_id=1, max_len=64).encode(parse_pair({"prompt": messages, "chosen": "ab",
                                                                     "rejected": "cde"}, "x"))  # fmt: skip
    for answer, ids in (("ab", pair.chosen), ("cde", pair.rejected)):
        sft_ids, sft_mask = encode_chat({"messages": messages + [{"role": "assistant", "content": answer}]}, tok, 1)
        assert pair.prompt + ids == sft_ids.tolist()
        assert sft_mask.tolist() == [False] * len(pair.prompt) + [True] * len(ids)
    # prompt_format "chat": a string prompt is the single user turn.
    as_chat = PairEncoder(tok, eos_id=1, max_len=64, prompt_format="chat").encode(
        parse_pair({"prompt": "q: abc", "chosen": "ab", "rejected": "cde"}, "x"))
    assert as_chat == pair


def test_pairs_from_a_post_training_manifest_by_split(tmp_path):
    """A curated set (`flywheel curate-posttrain`'s manifest) gives its preference records of the
    split asked for, as the JSONL would."""
    (tmp_path / "data").mkdir()
    files, by_split = [], {"train": toy_pairs(5, seed=2), "eval": toy_pairs(2, seed=3)}
    for split, records in by_split.items():
        raw = Path(write_jsonl(tmp_path / "data" / f"preference-{split}.jsonl", records)).read_bytes()
        files.append(PosttrainFile(path=f"data/preference-{split}.jsonl", kind="preference", split=split,
                                   records=len(records), bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest(),
                                   words=1))  # fmt: skip
    provenance = Provenance(inputs=["test"], config={}, config_sha256="0" * 64, stages=[],
                            created_at=datetime.now(timezone.utc), flywheel_version="0")  # fmt: skip
    write_posttrain_manifest(str(tmp_path / PosttrainRun.MANIFEST), PosttrainManifest(
        version=1, format="posttrain", dataset_id="demo", files=files, totals=posttrain_totals(files),
        provenance=provenance))  # fmt: skip
    for split, records in by_split.items():
        got = read_preference_pairs(str(tmp_path), split=split)
        assert got == [PreferencePair(r["prompt"], r["chosen"], r["rejected"], r["category"]) for r in records]
    assert read_preference_pairs(str(tmp_path / "data" / "preference-eval.jsonl")) == got


def test_sampler_shards_a_step_and_resumes_from_its_cursor():
    one = PairSampler(10, seed=3)
    steps = [one.next_indices(4) for _ in range(5)]  # 20 positions: two full epochs
    assert sorted(steps[0] + steps[1] + steps[2][:2]) == list(range(10))
    ranks = [PairSampler(10, seed=3, rank=r, world=2) for r in range(2)]
    assert [ranks[0].next_indices(4) + ranks[1].next_indices(4) for _ in range(5)] == steps
    resumed = PairSampler(10, seed=3)
    resumed.load_state_dict({"consumed": 8, "n_pairs": 10, "seed": 3})
    assert resumed.next_indices(4) == steps[2]


def test_last_token_pooling_ignores_padding():
    """The reward of a padded row equals the reward of the row alone, read at its last token."""
    torch.manual_seed(0)
    rm = RewardModel(preset("tiny", 32).model_copy(update={"attn_dropout": 0.0}).build()).eval()
    hidden = torch.arange(24.0).view(2, 3, 4)
    assert last_token_hidden(hidden, torch.tensor([2, 3])).tolist() == [hidden[0, 1].tolist(), hidden[1, 2].tolist()]
    short, long = [5, 6, 7], [8, 9, 10, 11, 12]
    batch = torch.tensor([short + [2, 2], long])
    with torch.no_grad():
        rewards, _ = rm(batch, torch.tensor([3, 5]))
        alone = [rm(torch.tensor([s]), torch.tensor([len(s)]))[0].item() for s in (short, long)]
        assert rewards.tolist() == pytest.approx(alone, abs=1e-5)
        # ...and differs from reading the padded end.
        padded_end, _ = rm(batch, torch.tensor([5, 5]))
    assert abs(padded_end[0].item() - alone[0]) > 1e-4


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def test_reward_model_learns_the_rule_and_exports(toy, tmp_path):
    """Seed 0, 40 steps of 16 pairs (640 reads of 512 pairs): held-out accuracy from chance (0.52
    measured at step 0) to >= 0.95 (0.99 measured; 0.95 at step 20), and the exported
    `RewardModel.load(...).score` reproduces the run's held-out numbers."""
    out = tmp_path / "rm"
    records = run_rank(rm_config(toy, out), build_reward_objective)
    evals = read_metrics(out, TrainingRun.EVAL)
    assert [e["step"] for e in evals] == [0, 40]
    first, last = evals
    assert last["pairs"] == 128
    assert 0.35 < first["accuracy"] < 0.65 and first["loss"] == pytest.approx(math.log(2), abs=0.01)
    assert last["accuracy"] >= 0.95, last
    assert last["margin"]["p05"] > 0 and last["loss"] < 0.3
    assert records[-1]["loss"] < records[0]["loss"]
    assert set(last["margin"]) == {"mean", "std", "min", "p05", "p25", "p50", "p75", "p95", "max"}
    # Per category (the records' `category`): lengths one token apart are the harder pairs.
    close, apart = last["categories"]["close"], last["categories"]["apart"]
    assert close["pairs"] + apart["pairs"] == 128
    right = close["accuracy"] * close["pairs"] + apart["accuracy"] * apart["pairs"]
    assert right == pytest.approx(128 * last["accuracy"])
    assert close["margin_mean"] < apart["margin_mean"]

    ckpt = CheckpointManager(out / "checkpoints").latest()
    meta = read_meta(ckpt)
    assert (meta["kind"], meta["step"], meta["max_len"]) == ("reward_model", 40, 32)
    rm = RewardModel.load(out)
    heldout = [json.loads(line) for line in Path(toy["heldout"]).read_text().splitlines()]
    chosen = rm.score([(p["prompt"], p["chosen"]) for p in heldout])
    rejected = rm.score([(p["prompt"], p["rejected"]) for p in heldout])
    margins = torch.tensor(chosen) - torch.tensor(rejected)
    # The exported model reproduces the run's held-out numbers.
    assert preference_accuracy(margins) == pytest.approx(last["accuracy"])
    assert float(margins.mean()) == pytest.approx(last["margin"]["mean"], abs=1e-4)


def test_reward_model_resume_matches_a_straight_run(toy, tmp_path):
    straight = tmp_path / "straight"
    run_rank(rm_config(toy, straight, steps=6, eval_files=[]), build_reward_objective)
    out = tmp_path / "resumed"
    # Stop after 3 of the same 6-step schedule, then resume from the checkpoint.
    run_rank(rm_config(toy, out, steps=3, eval_files=[], optimizer={"lr": 3e-3, "router_lr": 3e-3,
                                                                     "schedule": {"total_steps": 6}}),
             build_reward_objective)  # fmt: skip
    assert read_meta(CheckpointManager(out / "checkpoints").latest())["consumed_pairs"] == 48
    run_rank(rm_config(toy, out, steps=6, eval_files=[]), build_reward_objective)
    got, expected = read_metrics(out), read_metrics(straight)
    assert [r["step"] for r in got] == list(range(1, 7))
    assert [r["consumed"] for r in got] == [r["consumed"] for r in expected]
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in expected], abs=1e-5)


def _rank_run(rank: int, world: int, cfg_json: str) -> None:
    run_rank(RewardModelConfig.model_validate_json(cfg_json), build_reward_objective)


def test_two_rank_fsdp_matches_one_process(toy, tmp_path):
    """FSDP over 2 forked gloo ranks (8 pairs each per step) trains like one process given all 16,
    and so does expert parallelism over them (about 5 s)."""
    single, double = tmp_path / "one", tmp_path / "two"
    run_rank(rm_config(toy, single, steps=4), build_reward_objective)
    spawn(2, _rank_run, rm_config(toy, double, steps=4, workers=2).model_dump_json())
    one, two = read_metrics(single), read_metrics(double)
    assert [r["world"] for r in two] == [2] * 4
    for key in ("loss", "accuracy", "margin", "reward_chosen", "grad_norm"):
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], abs=2e-5), key
    e1, e2 = read_metrics(single, TrainingRun.EVAL)[-1], read_metrics(double, TrainingRun.EVAL)[-1]
    assert e2["accuracy"] == e1["accuracy"] and e2["margin"]["mean"] == pytest.approx(e1["margin"]["mean"], abs=1e-4)
    # Experts split over the 2 ranks (ep 2, all-to-all dispatch): the same run within rounding that
    # top-2 routing amplifies (2e-4 on the loss at step 4 measured, hence 1e-3).
    spawn(2, _rank_run, rm_config(toy, tmp_path / "ep", steps=4, workers=2, ep=2).model_dump_json())
    ep = read_metrics(tmp_path / "ep")
    assert [r["ep"] for r in ep] == [2] * 4
    assert [r["loss"] for r in ep] == pytest.approx([r["loss"] for r in one], abs=1e-3)


def test_flywheel_reward_model_command(toy, tmp_path):
    """The CLI maps its options onto RewardModelConfig and prints the run's summary."""
    out = tmp_path / "cli"
    result = CliRunner().invoke(commands, ["reward-model", "--init", toy["init"], "--data", toy["train"], "--eval",
                                           toy["heldout"], "--out", str(out), "--steps", "2", "--batch-pairs", "8",
                                           "--micro-pairs", "4", "--lr", "1e-3", "--max-len", "32", "--prompt-format",
                                           "plain", "--local"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [r["accum"] for r in read_metrics(out)] == [2, 2]
    assert read_metrics(out)[-1]["lr"] <= 1e-3
    assert json.loads(result.output[result.output.index("{"):])["eval_last"]["step"] == 2


@pytest.mark.slow  # starts Ray and two Ray Train workers: about a minute on the shared 2-core box
def test_reward_model_on_ray_train(toy, tmp_path, ray_local):
    """The Ray Train launch (`flywheel reward-model` without --local): 2 workers, the same steps
    as one local process."""
    launch_ray(rm_config(toy, tmp_path / "ray", steps=2, workers=2, eval_files=[]), build_reward_objective)
    run_rank(rm_config(toy, tmp_path / "one", steps=2, eval_files=[]), build_reward_objective)
    ray_run, one = read_metrics(tmp_path / "ray"), read_metrics(tmp_path / "one")
    assert [r["world"] for r in ray_run] == [2, 2]
    assert [r["loss"] for r in ray_run] == pytest.approx([r["loss"] for r in one], abs=2e-5)
    assert read_meta(CheckpointManager(tmp_path / "ray" / "checkpoints").latest())["step"] == 2
