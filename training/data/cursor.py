"""The global data cursor that pretraining and SFT datasets share.

A dataset is a stream of `sequences_per_epoch` windows in a seeded order per epoch
(`order.SequenceOrder`). `consumed` counts global positions handed out over all ranks, so a run
resumed at any world size (or TP/PP/DP split) continues with the first unseen window; rank r of W
reads positions start + r, start + r + W, ... of each global batch (`order.batch_positions`).
Subclasses say what a window is (`read_batch`) and what identifies their data (`manifest`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class GlobalCursor(ABC):
    """Cursor state and checkpointing; subclasses set `seq_len`, `seed`, `sequences_per_epoch`,
    `manifest` (with a `fingerprint`) and implement `read_batch(start, batch_size)`."""

    seq_len: int
    seed: int
    sequences_per_epoch: int

    def _init_cursor(self, rank: int, world_size: int, consumed: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
        if consumed < 0:
            raise ValueError(f"consumed must be >= 0, got {consumed}")
        self.rank, self.world_size, self.consumed = rank, world_size, int(consumed)

    @property
    def epoch(self) -> int:
        return self.consumed // self.sequences_per_epoch

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "epoch": self.epoch, "seed": self.seed, "seq_len": self.seq_len,
                "manifest_fingerprint": self.manifest.fingerprint}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at `state["consumed"]`; refuses a cursor made for other data or another order."""
        mine = {"seed": self.seed, "seq_len": self.seq_len, "manifest_fingerprint": self.manifest.fingerprint}
        for key, value in mine.items():
            if key in state and state[key] != value:
                raise ValueError(f"data state was saved with {key}={state[key]!r}, this dataset has {value!r}")
        self.consumed = int(state["consumed"])

    def advance(self, batch_size: int, steps: int = 1) -> None:
        """Move the global cursor past `steps` global batches of `batch_size` per rank."""
        self.consumed += self.world_size * batch_size * steps

    @abstractmethod
    def read_batch(self, start: int, batch_size: int):
        """This rank's `batch_size` sequences of the global batch that starts at sequence `start`."""

    def next_batch(self, batch_size: int):
        """This rank's share of the next global batch; advances `consumed` by world_size * batch_size."""
        batch = self.read_batch(self.consumed, batch_size)
        self.advance(batch_size)
        return batch
