"""Chat conversations packed into training windows with a loss mask, for supervised fine-tuning.

    conversations = encode_conversations(read_chat_jsonl("chat.jsonl"), tok, eos_id)
    ds = SFTDataset(conversations, seq_len=256, seed=0, rank=r, world_size=w,
                    tokenizer=manifest.tokenizer, location=manifest_url)
    batch = ds.next_batch(8)      # a MaskedBatch: tokens, positions, loss_mask (8, 257)
    ds.stats                      # PackingStats: kept, truncated, dropped, windows, padding
    ckpt["data"] = ds.state_dict()

Packing: the conversations, in a seeded permutation, fill windows of seq_len + 1 tokens next-fit
(a conversation goes into the current window if it fits, else opens the next one); the rest of a
window is padding. Whole conversations only, so an answer is never trained without its prompt
(stream packing as in pretraining would cut one across windows). Positions restart at 0 at every
conversation, so `Batch.segment_ids` keeps conversations apart under document-masked attention;
each padding token is a segment of its own and never a target. A conversation longer than
seq_len + 1 keeps its first seq_len + 1 tokens, counted in `stats.truncated`; one left without
any assistant token (by truncation, or none to start with) is dropped and counted, never
silently, so every window has at least one target and no micro-batch's loss is 0 / 0 (the
trainer's global token mean weighs each micro-batch's mean by its count: `training.token_mean`).

Order and cursor are pretraining's (`order.py`): the windows are the sequences, epoch e visits
them in `default_rng([seed, e]).permutation`, rank r of W reads global positions consumed + r,
consumed + r + W, ...; `consumed` is the whole state, so a resume at any world size continues
with the first window not yet seen. The Trainer reads what it reads from a ManifestDataset:
next_batch, read_batch, consumed, sequences_per_epoch, state_dict / load_state_dict, rank,
world_size, location (the pretraining manifest: its tokenizer) and `manifest` (the identity a
checkpoint records: dataset_id, fingerprint of the encoded conversations, tokenizer).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.jsonl import numbered_records
from contract.manifest import TokenizerInfo
from training.chat_format import ChatFormatError, encode_chat
from training.data.cursor import GlobalCursor
from training.data.dataset import Batch
from training.data.order import SequenceOrder, batch_positions

Conversation = tuple[np.ndarray, np.ndarray]  # (ids int64, loss_mask bool), as encode_chat returns


@dataclass(frozen=True)
class MaskedBatch(Batch):
    """A Batch whose targets are only some tokens.

    loss_mask  (B, seq_len + 1) bool   True where the token is a training target (assistant
                                       content and EOS); the trainer's `micro_batch_of` turns
                                       the others into IGNORE_INDEX targets
    """

    loss_mask: np.ndarray


@dataclass(frozen=True)
class ChatDataIdentity:
    """What a checkpoint records of the data (the Trainer reads it as `dataset.manifest`)."""

    dataset_id: str
    fingerprint: str
    tokenizer: TokenizerInfo


@dataclass
class PackingStats:
    """Every conversation accounted for: conversations == kept + dropped_no_assistant_tokens."""

    conversations: int = 0
    kept: int = 0
    truncated: int = 0  # kept, cut to seq_len + 1 tokens
    truncated_tokens: int = 0  # tokens cut from them
    dropped_no_assistant_tokens: int = 0
    tokens: int = 0  # kept, after truncation
    loss_tokens: int = 0
    windows: int = 0
    padding_tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Reading and encoding
# ---------------------------------------------------------------------------------------------


def read_chat_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a chat JSONL file; a ValueError naming file and line for a bad one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such chat file")
    records = []
    with path.open(encoding="utf-8") as f:
        for number, record in numbered_records(f, str(path)):
            if not isinstance(record, dict) or "messages" not in record:
                raise ValueError(f'{path}:{number}: a chat line is an object with "messages"')
            records.append(record)
    return records


def encode_conversations(records: list[dict[str, Any]], tokenizer: Any, eos_id: int | None,
                         where: str = "chat") -> list[Conversation]:  # fmt: skip
    """encode_chat of each record; a ValueError naming the record for a malformed one."""
    conversations = []
    for i, record in enumerate(records):
        try:
            conversations.append(encode_chat(record, tokenizer, eos_id))
        except ChatFormatError as e:
            raise ValueError(f"{where} record {i}: {e}") from None
    return conversations


def fit_conversations(conversations: list[Conversation], width: int) -> tuple[list[Conversation], PackingStats]:
    """Each conversation cut to `width` tokens; those left with no loss token dropped (counted)."""
    stats = PackingStats(conversations=len(conversations))
    kept = []
    for ids, mask in conversations:
        if len(ids) > width:
            stats.truncated += 1
            stats.truncated_tokens += len(ids) - width
            ids, mask = ids[:width], mask[:width]
        if not mask[1:].any():  # the first token is never a target
            stats.dropped_no_assistant_tokens += 1
            continue
        kept.append((ids, mask))
        stats.tokens += len(ids)
        stats.loss_tokens += int(mask[1:].sum())
    stats.kept = len(kept)
    return kept, stats


def next_fit(lengths: np.ndarray, width: int) -> np.ndarray:
    """Window boundaries for items of `lengths` (each <= width) in order: bounds[w] is the first
    item of window w, bounds[-1] == len(lengths)."""
    bounds, used = [0], 0
    for i, length in enumerate(lengths.tolist()):
        if used + length > width:
            bounds.append(i)
            used = 0
        used += length
    bounds.append(len(lengths))
    return np.asarray(bounds if len(lengths) else [0], dtype=np.int64)


def data_fingerprint(conversations: list[Conversation]) -> str:
    """sha256 of the encoded conversations (ids and masks, in order): what a data cursor means."""
    h = hashlib.sha256()
    for ids, mask in conversations:
        h.update(np.int64(len(ids)).tobytes())
        h.update(ids.astype(np.int64).tobytes())
        h.update(np.packbits(mask).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------


class PackedChats:
    """Conversations packed into windows of seq_len + 1 tokens (the module docstring's rule).

    The packed stream is the kept conversations in a seeded permutation, concatenated; window w
    holds stream [window_starts[w], window_starts[w + 1]), whole conversations, then padding.
    """

    def __init__(self, conversations: list[Conversation], seq_len: int, seed: int, pad_id: int) -> None:
        self.seq_len, self.pad_id = int(seq_len), int(pad_id)
        width = self.seq_len + 1
        kept, self.stats = fit_conversations(conversations, width)
        if not kept:
            raise ValueError(f"no conversation with an assistant token among {len(conversations)}")
        order = np.random.default_rng([seed, 0x5F7]).permutation(len(kept))  # 0x5F7: not the epoch orders' keys
        lengths = np.asarray([len(kept[i][0]) for i in order], dtype=np.int64)
        self._tokens = np.concatenate([kept[i][0] for i in order])
        self._mask = np.concatenate([kept[i][1] for i in order])
        starts = np.concatenate(([0], np.cumsum(lengths)))
        self._positions = (np.arange(starts[-1], dtype=np.int64) - np.repeat(starts[:-1], lengths)).astype(np.int32)
        self._window_starts = starts[next_fit(lengths, width)]
        self.windows = len(self._window_starts) - 1
        self.stats.windows = self.windows
        self.stats.padding_tokens = self.windows * width - int(starts[-1])

    def window(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, positions, loss_mask) of window `index`, seq_len + 1 each."""
        width = self.seq_len + 1
        a, b = int(self._window_starts[index]), int(self._window_starts[index + 1])
        tokens = np.full(width, self.pad_id, dtype=np.int64)
        positions = np.zeros(width, dtype=np.int32)  # padding: each token a segment of its own
        mask = np.zeros(width, dtype=bool)
        tokens[: b - a], positions[: b - a], mask[: b - a] = self._tokens[a:b], self._positions[a:b], self._mask[a:b]
        return tokens, positions, mask

    def batch(self, windows: np.ndarray, epochs: np.ndarray | None = None) -> MaskedBatch:
        """The windows `windows` as one MaskedBatch (epochs: 0 unless given)."""
        windows = np.asarray(windows, dtype=np.int64)
        rows = [self.window(int(w)) for w in windows]
        return MaskedBatch(tokens=np.stack([r[0] for r in rows]), positions=np.stack([r[1] for r in rows]),
                           sequences=windows, epochs=np.zeros_like(windows) if epochs is None else epochs,
                           loss_mask=np.stack([r[2] for r in rows]))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


def pad_id_of(tokenizer: TokenizerInfo) -> int:
    """What fills a window's tail: PAD, else EOS (never a target either way)."""
    special = tokenizer.special_ids
    return special.pad if special.pad is not None else special.eos


class SFTDataset(GlobalCursor):
    """Rank `rank` of `world_size`'s view of packed chat windows (see the module docstring).

    conversations  (ids, loss_mask) pairs, as `encode_chat` gives them
    seq_len        tokens a model sees per window; each holds seq_len + 1
    seed           decides the packing permutation and, with the epoch, the window order
    tokenizer      the pretraining manifest's TokenizerInfo (vocab size, special ids)
    location       the pretraining manifest's location (where the tokenizer is found)
    """

    def __init__(
        self,
        conversations: list[Conversation],
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        consumed: int = 0,
        *,
        tokenizer: TokenizerInfo,
        location: str,
        dataset_id: str = "sft",
    ) -> None:
        self._init_cursor(rank, world_size, consumed)
        self.seq_len, self.seed = int(seq_len), int(seed)
        self.location = location
        self.packed = PackedChats(conversations, self.seq_len, self.seed, pad_id_of(tokenizer))
        self.stats = self.packed.stats
        self.manifest = ChatDataIdentity(dataset_id, data_fingerprint(conversations), tokenizer)
        self.sequences_per_epoch = self.packed.windows
        self._order = SequenceOrder(self.sequences_per_epoch, self.seed)

    # -- reading --------------------------------------------------------------------------------

    def read_batch(self, start: int, batch_size: int) -> MaskedBatch:
        """This rank's share of the global batch at global position `start` (no state change)."""
        epochs, sequences = self._order.lookup(batch_positions(start, batch_size, self.rank, self.world_size))
        return self.packed.batch(sequences, epochs)

