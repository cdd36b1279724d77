"""Batched sampling from the trainer's `Transformer` with a KV cache: what `flywheel generate`,
PPO rollouts, red-teaming and synthetic code all call.

    sampling = SamplingConfig(max_new_tokens=64, temperature=0.8, top_p=0.95, seed=0)
    out = generate(model, [[5, 9, 2], [7]], sampling, eos_id=1)      # token ids in, tensors out
    out.tokens_BN, out.logprobs_BN, out.mask_BN, out.finish_reasons  # what a PPO rollout keeps
    gen = Generator.from_checkpoint("runs/train")                      # text in, text out
    gen.generate(["def add(a, b):"], sampling)                         # [Completion(...)]

Prompts are ragged lists of ids (`prompts_from_padded` turns a padded batch into them),
left-padded into one batch: each row gets its own positions (RoPE) and attention mask through
`training.model.KVCache`, so a row's tokens and logits do not depend on the rows beside it (up
to fp rounding: another batch may take another BLAS blocking).
The prompt is one forward (prefill); then one token per row per step. A row that samples a stop
token (or EOS) is finished: it is fed padding, masked out, and its outputs are `pad_id`.

The model runs in eval mode (restored after): no dropout, and MoE routers count no load (the
counter only runs in training mode), so the routing bias is not updated by generation. Under
`torch.no_grad`, not inference_mode: a rollout's tokens are fed to a training forward later.

The cache: MHA/GQA layers keep their RoPE'd keys and values (G heads, GQA's saving); MLA layers
keep DeepSeek-V2's compressed latent and shared RoPE key (L + R per token instead of
H (Dn + R + Dv): 40 floats against 160 in tiny-v3) and absorb W_kvb into the query and output
(`MLAttention.forward_cached`), as DeepSeek-V2 section 2.1.2 describes.

Log-probs are those of the sampled token under softmax(logits / T) (T = 0: softmax(logits)),
before top-k/top-p: the quantity a PPO actor recomputes with a teacher-forced forward at the
same temperature, so the old/new policy ratio compares like with like.

This is the CPU path, tested against a no-cache forward. On GPUs an optional vLLM backend could
serve the same prompts faster from `flywheel export-hf`'s folder (a transformers model vLLM
loads); it is not part of this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contract.jsonl import numbered_records
from contract.tokenizer import SpecialTokens
from training.checkpoint import read_meta
from training.evaluate import checkpoint_tokenizer
from training.export_hf import load_checkpoint_model, resolve_checkpoint
from training.model import KVCache
from training.sampling_config import SamplingConfig

# Why a row stopped (the OpenAI/vLLM names): it sampled a stop token, or max_new_tokens.
FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclass
class Generation:
    """The generated tokens of a batch, rows in the prompts' order, N steps (<= max_new_tokens)."""

    tokens_BN: torch.Tensor  # int64; pad_id after a row finished
    logprobs_BN: torch.Tensor  # float32 log p(token) under softmax(logits / T); 0 after a row finished
    mask_BN: torch.Tensor  # bool, True at generated tokens (a sampled stop token included)
    finish_reasons: list[str]  # FINISH_STOP or FINISH_LENGTH per row
    logits_BNV: torch.Tensor | None = None  # float32 raw next-token logits, under return_logits

    @property
    def lengths(self) -> list[int]:
        return self.mask_BN.sum(dim=1).tolist()

    def token_ids(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.tokens_BN, self.lengths)]

    def token_logprobs(self) -> list[list[float]]:
        return [row[:n].tolist() for row, n in zip(self.logprobs_BN, self.lengths)]


# ---------------------------------------------------------------------------------------------
# Sampling one token
# ---------------------------------------------------------------------------------------------


def filter_logits(logits_BV: torch.Tensor, top_k: int | None, top_p: float) -> torch.Tensor:
    """-inf outside the support: the top_k highest logits (ties with the k-th kept), then the
    smallest most-likely set whose probability reaches top_p (the most likely token always
    stays). The order HF's and vLLM's samplers use: top-k, then top-p on what is left."""
    if top_k is not None and top_k < logits_BV.shape[-1]:
        kth_B1 = logits_BV.topk(top_k, dim=-1).values[:, -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth_B1, float("-inf"))
    if top_p < 1.0:
        sorted_BV, order_BV = logits_BV.sort(dim=-1, descending=True)
        probs_BV = sorted_BV.softmax(dim=-1)
        # Drop a token when the more likely ones already hold top_p: mass before it >= top_p.
        drop_sorted_BV = probs_BV.cumsum(dim=-1) - probs_BV >= top_p
        drop_BV = torch.zeros_like(drop_sorted_BV).scatter(-1, order_BV, drop_sorted_BV)
        logits_BV = logits_BV.masked_fill(drop_BV, float("-inf"))
    return logits_BV


def sample_next(
    logits_BV: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | Sequence[torch.Generator] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens_B, logprobs_B): the next token of every row and its log-prob (module docstring).
    generator: one RNG for the batch, or one per row (a row's draw then ignores the rows beside it)."""
    logits_BV = logits_BV.float()
    if sampling.temperature == 0:
        tokens_B = logits_BV.argmax(dim=-1)
        logprobs_BV = logits_BV.log_softmax(dim=-1)
    else:
        scaled_BV = logits_BV / sampling.temperature
        logprobs_BV = scaled_BV.log_softmax(dim=-1)
        probs_BV = filter_logits(scaled_BV, sampling.top_k, sampling.top_p).softmax(dim=-1)
        if isinstance(generator, Sequence):
            tokens_B = torch.cat([torch.multinomial(probs_BV[i : i + 1], 1, generator=g)[0]
                                  for i, g in enumerate(generator)])  # fmt: skip
        else:
            tokens_B = torch.multinomial(probs_BV, 1, generator=generator).squeeze(1)
    return tokens_B, logprobs_BV.gather(1, tokens_B[:, None]).squeeze(1)


# ---------------------------------------------------------------------------------------------
# Generating a batch
# ---------------------------------------------------------------------------------------------


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens_BP and valid_BP of the prompts right-aligned to the longest, P = its length."""
    longest = max(len(p) for p in prompts)
    tokens_BP = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    valid_BP = torch.zeros(len(prompts), longest, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        tokens_BP[row, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        valid_BP[row, longest - len(prompt) :] = True
    return tokens_BP.to(device), valid_BP.to(device)


def prompts_from_padded(tokens_BP: torch.Tensor, valid_BP: torch.Tensor) -> list[list[int]]:
    """A padded batch (left, right or mixed; valid_BP True at real tokens) as `generate`'s
    ragged prompts: padding is dropped, so it never reaches positions or attention."""
    return [row[keep].tolist() for row, keep in zip(tokens_BP, valid_BP.bool())]


def check_prompts(prompts: list[list[int]], sampling: SamplingConfig, vocab_size: int, max_seq_len: int) -> None:
    if not prompts:
        raise ValueError("no prompts to generate from")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("a prompt has no tokens: nothing to condition the first token on")
    top = max(max(p) for p in prompts)
    if top >= vocab_size or min(min(p) for p in prompts) < 0:
        raise ValueError(f"prompt token id {top} is outside the model's vocabulary ({vocab_size})")
    longest = max(len(p) for p in prompts)
    if longest + sampling.max_new_tokens > max_seq_len:
        raise ValueError(f"the longest prompt ({longest} tokens) + max_new_tokens ({sampling.max_new_tokens}) "
                         f"exceeds the model's max_seq_len {max_seq_len}")


@torch.no_grad()
def generate(
    model: nn.Module,
    prompts: list[list[int]],
    sampling: SamplingConfig,
    *,
    eos_id: int | None = None,
    pad_id: int = 0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    return_logits: bool = False,
    all_done: Callable[[bool], bool] | None = None,
) -> Generation:
    """Sample up to sampling.max_new_tokens after each prompt (a `training.model.Transformer`,
    or a wrapper whose forward takes `cache=`: FSDP2's fully_shard, torch.compile).

    A row stops at EOS (eos_id, unless sampling.ignore_eos) or any of sampling.stop_token_ids;
    the stop token is part of its output. generator: the sampling RNG (default: one seeded with
    sampling.seed on the model's device; a sequence: one per row, so a row samples the same
    tokens in any batch). return_logits keeps every step's raw logits (B x N x V floats: for
    tests and analysis). all_done(this batch is done) -> every rank's is: an FSDP-sharded model
    all-gathers in each forward, so its ranks decode until the last one finishes (PPO's roles).
    """
    device = next(model.parameters()).device
    cfg = model.cfg
    check_prompts(prompts, sampling, cfg.vocab_size, cfg.max_seq_len)
    if generator is None and sampling.temperature > 0:
        generator = torch.Generator(device=device).manual_seed(sampling.seed)
    stop_ids = set(sampling.stop_token_ids) | ({eos_id} if eos_id is not None and not sampling.ignore_eos else set())
    stop_S = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)

    tokens_BP, valid_BP = left_pad(prompts, pad_id, device)
    batch = len(prompts)
    cache = KVCache(batch, tokens_BP.shape[1] + sampling.max_new_tokens, device)
    finished_B = torch.zeros(batch, dtype=torch.bool, device=device)
    stopped_B = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens, logprobs, live, logits = [], [], [], []
    was_training = model.training
    model.eval()
    try:
        cache.append_slots(valid_BP)
        logits_BV = model(tokens_BP, cache=cache).logits_BSV[:, -1]  # every row's last slot is real
        for step in range(sampling.max_new_tokens):
            next_B, logprob_B = sample_next(logits_BV, sampling, generator)
            live_B = ~finished_B
            next_B = torch.where(live_B, next_B, pad_id)
            tokens.append(next_B)
            logprobs.append(torch.where(live_B, logprob_B, 0.0))
            live.append(live_B)
            if return_logits:
                logits.append(logits_BV.float())
            hit_B = live_B & torch.isin(next_B, stop_S)
            stopped_B |= hit_B
            finished_B |= hit_B
            done = bool(finished_B.all())
            if step == sampling.max_new_tokens - 1 or (done if all_done is None else all_done(done)):
                break
            cache.append_slots(~finished_B[:, None])  # a finished row's filler is not a real token
            logits_BV = model(next_B[:, None], cache=cache).logits_BSV[:, -1]
    finally:
        model.train(was_training)
    reasons = [FINISH_STOP if stopped else FINISH_LENGTH for stopped in stopped_B.tolist()]
    return Generation(
        tokens_BN=torch.stack(tokens, dim=1), logprobs_BN=torch.stack(logprobs, dim=1).float(),
        mask_BN=torch.stack(live, dim=1), finish_reasons=reasons,
        logits_BNV=torch.stack(logits, dim=1) if return_logits else None,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Text in, text out
# ---------------------------------------------------------------------------------------------


@dataclass
class Completion:
    prompt: str
    text: str  # decoded without the stop token and special tokens
    token_ids: list[int]  # the stop token included
    logprobs: list[float]
    finish_reason: str
    prompt_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "completion": self.text, "finish_reason": self.finish_reason,
                "prompt_tokens": self.prompt_tokens, "token_ids": self.token_ids,
                "logprobs": self.logprobs}  # fmt: skip


@dataclass
class Generator:
    """A model and its tokenizer: text prompts in, `Completion`s out (one `generate` per batch).

    Prompts are encoded without special tokens, as curation tokenizes documents (no BOS by
    default: a document starts after the previous one's EOS and attends to nothing before)."""

    model: nn.Module
    tokenizer: Any  # a tokenizers.Tokenizer
    eos_id: int | None
    pad_id: int = 0
    meta: dict[str, Any] = field(default_factory=dict)  # the checkpoint's meta.json, when loaded from one

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | Path, tokenizer: str | Path | None = None, device: str | torch.device = "cpu"
    ) -> Generator:
        """A checkpoint (step folder, checkpoints/ or a run's out folder) as one float32 model on
        `device`; the tokenizer is `tokenizer` (a tokenizer.json) or the training manifest's."""
        step_dir = resolve_checkpoint(checkpoint)
        tok, eos_id = checkpoint_tokenizer(read_meta(step_dir), tokenizer)  # before the weights: fail fast
        model, meta = load_checkpoint_model(step_dir)
        pad_id = tok.token_to_id(SpecialTokens().pad)
        return cls(model.to(device), tok, eos_id, pad_id if pad_id is not None else 0, meta)

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def generate(self, prompts: list[str], sampling: SamplingConfig, batch_size: int = 8) -> list[Completion]:
        """Completions in the prompts' order; batches of batch_size share one seeded RNG stream."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        ids = self.encode(prompts)
        rng = None
        if sampling.temperature > 0:
            rng = torch.Generator(device=next(self.model.parameters()).device).manual_seed(sampling.seed)
        completions = []
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            out = generate(self.model, chunk, sampling, eos_id=self.eos_id, pad_id=self.pad_id, generator=rng)
            for i, (tokens, logprobs) in enumerate(zip(out.token_ids(), out.token_logprobs())):
                reason = out.finish_reasons[i]
                shown = tokens[:-1] if reason == FINISH_STOP else tokens
                text = self.tokenizer.decode(shown, skip_special_tokens=True)
                completions.append(Completion(prompts[start + i], text, tokens, logprobs, reason, len(chunk[i])))
        return completions


def read_prompts(path: str | Path) -> list[str]:
    """The `prompt` of every line of a prompt JSONL ({"prompt": str, ...} per line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such prompts file")
    prompts = []
    with path.open(encoding="utf-8") as f:
        for number, record in numbered_records(f, str(path)):
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise ValueError(f"{path}:{number}: a prompt line is an object with a string `prompt`")
            prompts.append(record["prompt"])
    return prompts


def generate_command(
    checkpoint: str | Path,
    prompts: list[str],
    prompts_file: str | Path | None,
    sampling: SamplingConfig,
    tokenizer: str | Path | None = None,
    batch_size: int = 8,
) -> list[Completion]:
    """`flywheel generate`: the prompts given, then those of prompts_file, completed on CPU."""
    prompts = list(prompts) + (read_prompts(prompts_file) if prompts_file is not None else [])
    if not prompts:
        raise ValueError("give --prompt TEXT or --prompts FILE.jsonl")
    return Generator.from_checkpoint(checkpoint, tokenizer).generate(prompts, sampling, batch_size)
