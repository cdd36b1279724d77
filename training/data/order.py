"""Which sequence comes next: a pure function of (seed, epoch, global position).

The token stream (all shards, in manifest order) is cut into `num_sequences` overlapping
windows: sequence i = tokens [i * seq_len, i * seq_len + seq_len + 1). Epoch e visits them in
the order `numpy.random.default_rng([seed, e]).permutation(num_sequences)`. Global position p
(counting from the start of training, over all ranks) is sequence `perm_{p // S}[p % S]`.

The only state is `consumed`, the number of global positions handed out. Rank r of W takes
positions consumed + r, consumed + r + W, ...; a step of per-rank batch B advances consumed by
W * B. A job resumed from `consumed` at any world size therefore continues with exactly the
positions not yet handed out: none skipped, none repeated.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


def num_sequences(total_tokens: int, seq_len: int) -> int:
    """Windows of seq_len + 1 tokens, stepping by seq_len, that fit in the stream."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    return max(0, (total_tokens - 1) // seq_len)


def batch_positions(consumed: int, batch_size: int, rank: int, world_size: int) -> np.ndarray:
    """Global positions of rank `rank`'s share of the global batch that starts at `consumed`."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} not in [0, {world_size})")
    return consumed + rank + world_size * np.arange(batch_size, dtype=np.int64)


class SequenceOrder:
    """Maps global positions to (epoch, sequence index) for a fixed (num_sequences, seed).

    NOTE: a permutation costs 8 bytes per sequence (1e8 sequences: 800 MB), so only the
    `cached_epochs` most recently used epochs are kept; a batch spans at most two.
    """

    def __init__(self, num_sequences: int, seed: int, cached_epochs: int = 2) -> None:
        if num_sequences < 1:
            raise ValueError("no sequences to order")
        self.num_sequences = num_sequences
        self.seed = seed
        self._cached_epochs = cached_epochs
        self._perms: OrderedDict[int, np.ndarray] = OrderedDict()

    def permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_sequences)
            self._perms[epoch] = perm
            while len(self._perms) > self._cached_epochs:
                self._perms.popitem(last=False)
        else:
            self._perms.move_to_end(epoch)
        return perm

    def lookup(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(epochs, sequence indices) of global `positions`."""
        positions = np.asarray(positions, dtype=np.int64)
        epochs, offsets = np.divmod(positions, self.num_sequences)
        sequences = np.empty_like(positions)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            sequences[here] = self.permutation(int(epoch))[offsets[here]]
        return epochs, sequences
