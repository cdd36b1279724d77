"""Preference pairs for the reward model and DPO: reading, encoding, batching, sampling.

    pairs = read_preference_pairs("pairs.jsonl")             # TRL's {"prompt", "chosen", "rejected"}
    pairs = read_preference_pairs("curated/", split="eval")  # or a curated post-training manifest's
    encoder = PairEncoder(tokenizer, eos_id, max_len=256)
    encoded = encoder.encode_all(pairs)                      # prompt ids + each answer's ids (EOS ended)
    batch = collate_pairs(encoded[:8], pad_id)               # PairBatch: 16 rows, chosen rows first
    sampler = PairSampler(len(encoded), seed=0, rank=r, world=w)
    mine = sampler.next_indices(global_pairs=16)             # this rank's share of the next step

A line's prompt is a string or a chat `messages` list; chosen and rejected are strings (or TRL's
conversational form, a list holding one assistant message). Encoding: prompt ids, then the
answer's ids and EOS, the answer tokens being what DPO scores and the last one (EOS) where the
reward head reads. A `messages` prompt is rendered with the chat template
(`training.chat_format.encode_prompt`: the turns, then the assistant marker), so a pair is encoded
exactly as SFT encodes the same conversation with the answer as its assistant turn; a string
prompt is the single user turn of a chat (prompt_format "chat", for a policy fine-tuned on chats,
the runs' default) or plain text ("plain"). Prompt and answer are tokenised separately and joined.

Rows are right-padded: attention is causal, so padding after a sequence changes none of its
positions (and the MoE has no capacity limit, so padding tokens crowd out no real token).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.jsonl import numbered_records, read_text
from contract.posttrain import is_posttrain_manifest, iter_records, read_posttrain_manifest
from training.chat_format import encode_prompt

Prompt = str | list[dict[str, Any]]  # plain text, or chat messages [{"role", "content"}...]
PROMPT_FORMATS = ("plain", "chat")  # how a string prompt is encoded (a messages list is always a chat)


@dataclass(frozen=True)
class PreferencePair:
    prompt: Prompt
    chosen: str
    rejected: str
    category: str | None = None  # the record's optional `category` (contract.posttrain): eval reports per category


def _answer_text(value: Any, where: str, field: str) -> str:
    """A string, or TRL's conversational answer: a list of one assistant message."""
    if isinstance(value, str):
        return value
    if (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
            and value[0].get("role") == "assistant" and isinstance(value[0].get("content"), str)):  # fmt: skip
        return value[0]["content"]
    raise ValueError(f"{where}: `{field}` must be a string or [{{'role': 'assistant', 'content': str}}]")


def _prompt(value: Any, where: str) -> Prompt:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        return value
    raise ValueError(f"{where}: `prompt` must be a string or a list of {{'role', 'content'}} messages")


def parse_pair(record: Any, where: str) -> PreferencePair:
    if not isinstance(record, dict) or not {"prompt", "chosen", "rejected"} <= record.keys():
        raise ValueError(f"{where}: a preference line is an object with `prompt`, `chosen` and `rejected`")
    category = record.get("category")
    if category is not None and not isinstance(category, str):
        raise ValueError(f"{where}: `category` must be a string")
    return PreferencePair(_prompt(record["prompt"], where), _answer_text(record["chosen"], where, "chosen"),
                          _answer_text(record["rejected"], where, "rejected"), category)  # fmt: skip


def read_preference_pairs(source: str | Path, split: str = "train") -> list[PreferencePair]:
    """Every pair of a JSONL file (a local path or a store URI), or the preference records of a
    post-training manifest's `split` (each file's sha256 checked). A ValueError names the file
    and line of a malformed pair."""
    source = str(source)
    if is_posttrain_manifest(source):
        records = iter_records(read_posttrain_manifest(source), "preference", split)
        pairs = [PreferencePair(r.prompt, r.chosen, r.rejected, r.category) for r in records]
    else:
        try:
            text = read_text(source)
        except (FileNotFoundError, IsADirectoryError):
            raise FileNotFoundError(f"{source}: no such preference file") from None
        pairs = [parse_pair(record, f"{source}:{number}")
                 for number, record in numbered_records(text.splitlines(), source)]  # fmt: skip
    if not pairs:
        raise ValueError(f"{source}: no preference pairs" + (f" in its {split} split" if is_posttrain_manifest(source)
                                                              else ""))  # fmt: skip
    return pairs


def pairs_fingerprint(pairs: list[PreferencePair]) -> str:
    """A digest of the pairs in order: a resumed run checks it reads the same data."""
    digest = hashlib.sha256()
    for p in pairs:
        digest.update(repr((p.prompt, p.chosen, p.rejected)).encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedPair:
    prompt: list[int]  # >= 1 token: the first answer token needs a position to be predicted from
    chosen: list[int]  # answer ids, EOS last (unless truncated)
    rejected: list[int]
    truncated: bool = False
    category: str | None = None


class PairEncoder:
    """Token ids of prompts and answers: prompt ids, then answer ids + EOS.

    max_len caps prompt + answer: the prompt loses its start first (its end leads into the
    answer), then answers lose their end. An empty prompt becomes [EOS], what precedes every
    document in the packed pretraining stream.
    """

    def __init__(self, tokenizer: Any, eos_id: int, max_len: int, prompt_format: str = "plain"):
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 (a prompt token and an answer token), got {max_len}")
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
        self.tokenizer, self.eos_id, self.max_len = tokenizer, eos_id, max_len
        self.prompt_format = prompt_format

    def ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str) and self.prompt_format == "chat":
            prompt = [{"role": "user", "content": prompt}]
        if not isinstance(prompt, str):
            return encode_prompt(prompt, self.tokenizer, self.eos_id)
        return self.ids(prompt) or [self.eos_id]

    def answer_ids(self, answer: str) -> list[int]:
        return self.ids(answer) + [self.eos_id]

    def fit(self, prompt: list[int], answers: list[list[int]]) -> tuple[list[int], list[list[int]], bool]:
        longest = max(len(a) for a in answers)
        if len(prompt) + longest <= self.max_len:
            return prompt, answers, False
        prompt = prompt[-max(1, self.max_len - longest):]
        return prompt, [a[: self.max_len - len(prompt)] for a in answers], True

    def encode(self, pair: PreferencePair) -> EncodedPair:
        prompt, (chosen, rejected), truncated = self.fit(
            self.prompt_ids(pair.prompt), [self.answer_ids(pair.chosen), self.answer_ids(pair.rejected)]
        )
        return EncodedPair(prompt, chosen, rejected, truncated, pair.category)

    def encode_all(self, pairs: list[PreferencePair]) -> list[EncodedPair]:
        return [self.encode(p) for p in pairs]

    def sequence(self, prompt: Prompt, answer: str) -> list[int]:
        """One scored sequence (prompt + answer + EOS), fitted to max_len as in training."""
        p, (a,), _ = self.fit(self.prompt_ids(prompt), [self.answer_ids(answer)])
        return p + a


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


@dataclass
class PairBatch:
    """P pairs as 2P right-padded rows: rows [0, P) the chosen answers, [P, 2P) the rejected.

    tokens_BS        int64 ids (B = 2P), padding after each row's `lengths_B` tokens
    lengths_B        tokens of prompt + answer in each row
    prompt_lengths_B tokens of the prompt (the same for both rows of a pair)
    """

    tokens_BS: torch.Tensor
    lengths_B: torch.Tensor
    prompt_lengths_B: torch.Tensor

    @property
    def pairs(self) -> int:
        return self.tokens_BS.shape[0] // 2

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(*(t.to(device, non_blocking=True) for t in (self.tokens_BS, self.lengths_B,
                                                                     self.prompt_lengths_B)))  # fmt: skip

    @property
    def last_index_B(self) -> torch.Tensor:
        """Position of each row's last real token (EOS), where the reward head reads."""
        return self.lengths_B - 1

    def answer_target_mask(self) -> torch.Tensor:
        """mask_BS1 (S - 1 columns), True where the target tokens_BS[:, t + 1] is an answer token:
        prompt_length - 1 <= t < length - 1. The log-prob of an answer given its prompt sums
        the next-token log-probs there (the prompt's own tokens are not scored)."""
        t_S = torch.arange(self.tokens_BS.shape[1] - 1, device=self.tokens_BS.device)
        return (t_S >= self.prompt_lengths_B[:, None] - 1) & (t_S < self.lengths_B[:, None] - 1)


def collate_pairs(encoded: list[EncodedPair], pad_id: int) -> PairBatch:
    """The PairBatch of `encoded`, padded to its longest row."""
    rows = [e.prompt + e.chosen for e in encoded] + [e.prompt + e.rejected for e in encoded]
    prompts = [len(e.prompt) for e in encoded] * 2
    tokens = np.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=np.int64)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    return PairBatch(torch.from_numpy(tokens), torch.tensor([len(r) for r in rows], dtype=torch.int64),
                     torch.tensor(prompts, dtype=torch.int64))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


class PairSampler:
    """Which pairs each step reads: epochs of seeded permutations, and a global cursor.

    Global position p is pair permutation_{p // n}[p % n], the permutation of epoch e drawn from
    (seed, e). A step takes the next `global_pairs` positions; data rank r of w takes its r-th
    contiguous share. The state is the cursor alone, so a resume at any world size continues
    with the first pair not yet seen.
    """

    def __init__(self, n_pairs: int, seed: int, rank: int = 0, world: int = 1):
        if n_pairs < 1:
            raise ValueError("no pairs to sample")
        self.n, self.seed, self.rank, self.world = n_pairs, seed, rank, world
        self.consumed = 0
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def indices_at(self, positions: range) -> list[int]:
        return [int(self.permutation(p // self.n)[p % self.n]) for p in positions]

    def next_indices(self, global_pairs: int) -> list[int]:
        if global_pairs % self.world:
            raise ValueError(f"{global_pairs} pairs per step do not split over {self.world} data ranks")
        share = global_pairs // self.world
        start = self.consumed + self.rank * share
        self.consumed += global_pairs
        return self.indices_at(range(start, start + share))

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self.consumed, "n_pairs": self.n, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state["n_pairs"], state["seed"]) != (self.n, self.seed):
            raise ValueError(f"checkpoint sampled {state['n_pairs']} pairs with seed {state['seed']}, "
                             f"this run has {self.n} with seed {self.seed}")  # fmt: skip
        self.consumed = int(state["consumed"])
