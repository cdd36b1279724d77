"""KV-cache generation (`training.generate`): the cached logits are the no-cache forward's at
every generated position (MHA, GQA and MLA, ragged prompts), greedy decoding is argmax decoding,
stop tokens and max_new_tokens end rows, seeded sampling repeats, top-k/top-p keep the support
they promise, and `flywheel generate` completes prompts with a trained checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("tokenizers")

from typer.testing import CliRunner  # noqa: E402

from flywheel.cli import app  # noqa: E402
from tests.training.helpers import train_bpe_checkpoint  # noqa: E402
from training.config import ModelConfig, tiny, tiny_v3  # noqa: E402
from training.generate import (  # noqa: E402
    FINISH_LENGTH,
    FINISH_STOP,
    Generator,
    filter_logits,
    generate,
    prompts_from_padded,
    sample_next,
)
from training.moe import moe_layers  # noqa: E402
from training.sampling_config import SamplingConfig  # noqa: E402

VOCAB = 48
# fp32 on CPU: the cached and the full forward differ only in summation order (and, under MLA,
# in the absorbed W_kvb products); measured differences are ~5e-7 on logits of magnitude ~1.
LOGIT_ATOL = 1e-5
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [3], [20, 21, 22, 23], [40, 41]]  # ragged: left padding differs


def with_fields(cfg: ModelConfig, **fields) -> ModelConfig:
    return ModelConfig.model_validate({**cfg.model_dump(), "attn_dropout": 0.0, **fields})


CONFIGS = {
    "mha": with_fields(tiny(VOCAB)),
    "gqa": with_fields(tiny(VOCAB), n_kv_heads=2, qkv_bias=True),
    "mla": with_fields(tiny_v3(VOCAB)),  # query latent, dense first layer, routing bias
    "mla-full-rank-q": with_fields(tiny_v3(VOCAB), q_lora_rank=None),
}


def seeded_model(cfg: ModelConfig) -> torch.nn.Module:
    """Weights moved off their init, so attention, routing and the logits are far from uniform."""
    torch.manual_seed(0)
    model = cfg.build()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in moe_layers(model).values():
            if m.router_bias is not None:
                m.router_bias.copy_(0.01 * torch.randn_like(m.router_bias))
    return model.eval()


def full_logits(model: torch.nn.Module, tokens: list[int]) -> torch.Tensor:
    """logits_SV of one row alone, without a cache (the training forward)."""
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits_BSV[0]


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_cached_logits_equal_the_full_forward(kind):
    model = seeded_model(CONFIGS[kind])
    sampling = SamplingConfig(max_new_tokens=10, temperature=1.0, seed=3)
    # A stop token most rows meet within 10 tokens, so finished rows keep being fed padding.
    out = generate(model, PROMPTS, sampling, eos_id=4, pad_id=0, return_logits=True)

    assert out.tokens_BN.shape == out.logprobs_BN.shape == out.mask_BN.shape == (4, out.tokens_BN.shape[1])
    compared = 0
    for row, prompt in enumerate(PROMPTS):
        completion = out.token_ids()[row]
        sequence = prompt + completion
        ref_NV = full_logits(model, sequence)[len(prompt) - 1 : len(sequence) - 1]
        torch.testing.assert_close(out.logits_BNV[row, : len(completion)], ref_NV, atol=LOGIT_ATOL, rtol=0)
        # The log-prob is the sampled token's under softmax(logits / T), T = 1 here.
        ref_logprobs = ref_NV.log_softmax(-1).gather(1, torch.tensor(completion)[:, None]).squeeze(1)
        torch.testing.assert_close(out.logprobs_BN[row, : len(completion)], ref_logprobs, atol=LOGIT_ATOL, rtol=0)
        compared += len(completion)
    assert compared >= 20


@pytest.mark.parametrize("kind", ["mha", "mla"])
def test_greedy_is_argmax_decoding_without_cache_and_leaves_the_router_alone(kind):
    model = seeded_model(CONFIGS[kind]).train()  # generation switches to eval and back
    bias_before = {n: m.router_bias.clone() for n, m in moe_layers(model).items() if m.router_bias is not None}
    sampling = SamplingConfig(max_new_tokens=12, temperature=0.0)

    out = generate(model, PROMPTS, sampling)

    assert model.training
    assert all(m.tokens_per_expert.sum() == 0 for m in moe_layers(model).values())  # no load counted
    assert all(torch.equal(moe_layers(model)[n].router_bias, b) for n, b in bias_before.items())
    model.eval()
    for row, prompt in enumerate(PROMPTS):
        sequence = list(prompt)
        for _ in range(12):
            sequence.append(int(full_logits(model, sequence)[-1].argmax()))
        assert out.token_ids()[row] == sequence[len(prompt) :]
    assert out.finish_reasons == [FINISH_LENGTH] * 4
    again = generate(model, PROMPTS, sampling)
    assert torch.equal(again.tokens_BN, out.tokens_BN) and torch.equal(again.logprobs_BN, out.logprobs_BN)
    # A row's tokens do not depend on its batch: alone, the longest prompt decodes the same.
    assert generate(model, PROMPTS[:1], sampling).token_ids()[0] == out.token_ids()[0]
    # A batch the caller padded (left for some rows, right for others) gives the same prompts.
    tokens_BP = torch.full((4, 9), 7)
    valid_BP = torch.zeros(4, 9, dtype=torch.bool)
    for row, prompt in enumerate(PROMPTS):
        where = slice(9 - len(prompt), 9) if row % 2 else slice(0, len(prompt))
        tokens_BP[row, where], valid_BP[row, where] = torch.tensor(prompt), True
    assert prompts_from_padded(tokens_BP, valid_BP) == PROMPTS


def test_stop_tokens_and_max_new_tokens_end_rows():
    model = seeded_model(CONFIGS["mha"])
    greedy = SamplingConfig(max_new_tokens=8, temperature=0.0)
    free = generate(model, PROMPTS, greedy).token_ids()
    # Stop row 0 at its 3rd token: a token id no other row emits earlier than its 8th.
    stop = free[0][2]
    firsts = [row.index(stop) if stop in row else None for row in free]

    out = generate(model, PROMPTS, greedy.model_copy(update={"stop_token_ids": (stop,)}), pad_id=0)

    for row, first in enumerate(firsts):
        tokens, n = out.token_ids()[row], out.lengths[row]
        if first is None:
            assert out.finish_reasons[row] == FINISH_LENGTH and tokens == free[row] and n == 8
        else:  # the stop token is the last output; the rest is masked padding with log-prob 0
            assert out.finish_reasons[row] == FINISH_STOP and tokens == free[row][: first + 1]
            assert (out.tokens_BN[row, n:] == 0).all() and (out.logprobs_BN[row, n:] == 0).all()
            assert not out.mask_BN[row, n:].any() and out.mask_BN[row, :n].all()
    assert out.finish_reasons[0] == FINISH_STOP and out.lengths[0] == firsts[0] + 1 <= 3

    # EOS stops too unless ignored; when every row has stopped the loop ends early.
    every_first = {row[0] for row in free}
    out = generate(model, PROMPTS, greedy.model_copy(update={"stop_token_ids": tuple(every_first)}))
    assert out.tokens_BN.shape[1] == 1 and out.finish_reasons == [FINISH_STOP] * 4
    eos = free[1][0]
    assert generate(model, PROMPTS[1:2], greedy, eos_id=eos).finish_reasons == [FINISH_STOP]
    ignored = generate(model, PROMPTS[1:2], greedy.model_copy(update={"ignore_eos": True}), eos_id=eos)
    assert ignored.finish_reasons == [FINISH_LENGTH] and ignored.token_ids()[0] == free[1]


def test_seeded_sampling_repeats_and_seeds_differ():
    model = seeded_model(CONFIGS["gqa"])
    sampling = SamplingConfig(max_new_tokens=12, temperature=1.5, top_k=20, top_p=0.95, seed=7)

    first = generate(model, PROMPTS, sampling)
    second = generate(model, PROMPTS, sampling)
    explicit = generate(model, PROMPTS, sampling, generator=torch.Generator().manual_seed(7))
    other = generate(model, PROMPTS, sampling.model_copy(update={"seed": 8}))

    assert torch.equal(first.tokens_BN, second.tokens_BN) and torch.equal(first.tokens_BN, explicit.tokens_BN)
    assert not torch.equal(first.tokens_BN, other.tokens_BN)


def test_top_k_and_top_p_restrict_the_support():
    probs = torch.tensor([0.10, 0.50, 0.15, 0.25])  # sorted: 1 (0.5), 3 (0.25), 2 (0.15), 0 (0.10)
    logits_BV = probs.log()[None].repeat(2, 1)

    def support(top_k, top_p):
        kept = torch.isfinite(filter_logits(logits_BV, top_k, top_p))
        assert torch.equal(kept[0], kept[1])
        return set(kept[0].nonzero().flatten().tolist())

    assert support(None, 1.0) == {0, 1, 2, 3}
    assert support(2, 1.0) == {1, 3}
    assert support(1, 1.0) == {1}
    assert support(None, 0.4) == {1}  # 0.5 already reaches 0.4
    assert support(None, 0.7) == {1, 3}  # 0.5 < 0.7 <= 0.75
    assert support(None, 0.8) == {1, 3, 2}  # 0.75 < 0.8 <= 0.9
    assert support(3, 0.95) == {1, 3, 2}  # top-k first, then top-p over what is left
    tied = torch.tensor([[1.0, 2.0, 2.0, 0.0]])
    assert torch.isfinite(filter_logits(tied, 2, 1.0)).tolist() == [[False, True, True, False]]

    # Sampling follows the renormalised distribution on the support (4000 draws: sd ~0.008).
    draws = 4000
    sampling = SamplingConfig(temperature=1.0, top_p=0.8, seed=0)
    tokens_B, logprobs_B = sample_next(probs.log()[None].repeat(draws, 1), sampling, torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens_B, minlength=4).float() / draws
    assert counts[0] == 0
    torch.testing.assert_close(counts[1:], torch.tensor([0.50, 0.15, 0.25]) / 0.9, atol=0.03, rtol=0)
    # The log-prob is under softmax(logits / T), before the filter.
    torch.testing.assert_close(logprobs_B, probs.log()[tokens_B], atol=1e-6, rtol=0)
    hot = SamplingConfig(temperature=2.0, seed=0)
    tokens_B, logprobs_B = sample_next(probs.log()[None], hot, torch.Generator().manual_seed(0))
    torch.testing.assert_close(logprobs_B, (probs.log() / 2).log_softmax(-1)[tokens_B])


def test_refuses_what_it_cannot_generate():
    model = seeded_model(CONFIGS["mha"])
    for prompts, sampling, message in [
        ([[]], SamplingConfig(), "no tokens"),
        ([[VOCAB]], SamplingConfig(), "outside the model's vocabulary"),
        ([[3] * 200], SamplingConfig(max_new_tokens=57), "exceeds the model's max_seq_len 256"),
    ]:
        with pytest.raises(ValueError, match=message):
            generate(model, prompts, sampling)


# ---------------------------------------------------------------------------------------------
# A trained checkpoint and the command
# ---------------------------------------------------------------------------------------------



@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """2 steps of `flywheel train --local` on a synthetic manifest whose tokenizer is a real BPE."""
    return train_bpe_checkpoint(tmp_path_factory.mktemp("generate"))


def test_flywheel_generate_completes_prompts_from_a_checkpoint(trained, tmp_path):
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text(json.dumps({"prompt": "a lazy dog", "id": 1}) + "\n\n")
    out_json = tmp_path / "completions.jsonl"
    args = ["generate", str(trained), "--prompt", "the quick brown", "--prompt", "fox", "--prompts",
            str(prompts_file), "--max-new-tokens", "6", "--temperature", "0", "--json", str(out_json)]  # fmt: skip

    result = CliRunner().invoke(app, args, terminal_width=200)

    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out_json.read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["the quick brown", "fox", "a lazy dog"]
    # The same completions through the API, with the manifest's tokenizer.
    generator = Generator.from_checkpoint(trained)
    assert generator.meta["step"] == 2 and generator.eos_id == 1
    expected = generator.generate([r["prompt"] for r in records], SamplingConfig(max_new_tokens=6, temperature=0))
    for record, completion in zip(records, expected):
        assert record == completion.to_dict()
        assert record["finish_reason"] in (FINISH_STOP, FINISH_LENGTH) and 1 <= len(record["token_ids"]) <= 6
        assert record["prompt_tokens"] == len(generator.encode([record["prompt"]])[0])
        assert all(lp <= 0 for lp in record["logprobs"])
        # (the text of an untrained model is byte soup; the terminal shows it mangled)
        assert f"{record['prompt']!r} -> ({record['finish_reason']}, {len(record['token_ids'])} tokens)" in result.output
        # greedy is argmax decoding of the loaded model
        sequence = generator.encode([record["prompt"]])[0]
        for token in record["token_ids"]:
            assert token == int(full_logits(generator.model, sequence)[-1].argmax())
            sequence.append(token)

    sampled = CliRunner().invoke(app, ["generate", str(trained / "checkpoints"), "--prompt", "the", "--top-k", "5",
                                       "--top-p", "0.9", "--temperature", "0.8", "--seed", "1", "--max-new-tokens", "4",
                                       "--tokenizer", str(trained.parent / "data" / "tokenizer.json")])  # fmt: skip
    assert sampled.exit_code == 0, sampled.output
    for bad_args, message in [([str(trained)], "give --prompt"),
                              ([str(tmp_path), "--prompt", "x"], "no complete checkpoint"),
                              ([str(trained), "--prompts", str(tmp_path / "nope.jsonl")], "no such prompts file"),
                              ([str(trained), "--prompt", "x", "--max-new-tokens", "300"], "max_seq_len")]:  # fmt: skip
        failed = CliRunner().invoke(app, ["generate", *bad_args])
        assert failed.exit_code == 2 and message in failed.output, failed.output
