"""Fixed-length training sequences from a manifest, in a resumable, world-size-free order.

    ds = ManifestDataset("https://host/datasets/web/manifest.json", seq_len=4096, seed=0,
                         rank=rank, world_size=world, consumed=ckpt.get("consumed", 0))
    batch = ds.next_batch(8)           # this rank's 8 sequences; consumed += world * 8
    x, y = batch.inputs, batch.targets # (8, 4096) each
    ckpt["data"] = ds.state_dict()     # {"consumed", "epoch", ...}: all a restart needs

Every rank must call `next_batch` with the same batch size once per step (they advance the
shared global cursor in lockstep). Order and cursor: see `order.py`. A sequence is seq_len + 1
tokens packed across document boundaries; `positions` gives each token's offset inside its
document (0 where a document starts), enough for per-document attention masks and RoPE.

Shards are opened on first use: local ones are memory-mapped in place (size-checked; the full
sha256 check is `validate-manifest`'s job), remote ones are fetched into `cache_dir` and
verified (`fetch.ShardCache`). The order is a global permutation, so an epoch touches every
shard early: call `prefetch()` to download them all up front, in parallel.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.locations import local_path, resolve
from contract.manifest import Manifest, ShardEntry, parse_manifest
from contract.shards import INDEX_DTYPE, index_problem, open_index, open_tokens
from training.data.cursor import GlobalCursor
from training.data.fetch import Fetcher, ShardCache
from training.data.order import SequenceOrder, batch_positions, num_sequences


class ShardError(ValueError):
    """A shard on disk disagrees with its manifest entry."""


@dataclass(frozen=True)
class Batch:
    """One rank's share of a global batch.

    tokens     (B, seq_len + 1) int64   the packed token ids
    positions  (B, seq_len + 1) int32   offset of each token inside its document: 0 where one
                                        starts (a row's first token may be mid-document)
    sequences  (B,) int64               sequence index within its epoch (window number)
    epochs     (B,) int64
    """

    tokens: np.ndarray
    positions: np.ndarray
    sequences: np.ndarray
    epochs: np.ndarray

    @property
    def inputs(self) -> np.ndarray:
        return self.tokens[:, :-1]

    @property
    def targets(self) -> np.ndarray:
        return self.tokens[:, 1:]

    def segment_ids(self) -> np.ndarray:
        """(B, seq_len + 1) int32: tokens attend to each other iff their segment ids are equal."""
        return np.cumsum(self.positions == 0, axis=1, dtype=np.int32)


class ManifestDataset(GlobalCursor):
    """Rank `rank` of `world_size`'s view of the sequences of the manifest at `manifest`.

    manifest   local path, file://, http(s):// or s3:// (any pyarrow.fs URI) of a manifest.json
    seq_len    tokens a model sees per sequence; each sample holds seq_len + 1 (inputs + shift)
    seed       with the epoch, decides the order (see `order.py`)
    cache_dir  where remote shards are kept (default $FLYWHEEL_CACHE or ~/.cache/flywheel/shards)
    consumed   global positions already handed out (from `state_dict()["consumed"]`)
    """

    def __init__(
        self,
        manifest: str | os.PathLike,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        cache_dir: str | os.PathLike | None = None,
        consumed: int = 0,
    ) -> None:
        self._init_cursor(rank, world_size, consumed)
        self.location = os.fspath(manifest)
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self._fetcher = Fetcher()
        self.manifest: Manifest = parse_manifest(self._fetcher.read_bytes(self.location))
        self._cache = ShardCache(cache_dir, self._fetcher)
        self._offsets = np.cumsum([0] + [s.tokens for s in self.manifest.shards], dtype=np.int64)
        self.sequences_per_epoch = num_sequences(int(self._offsets[-1]), self.seq_len)
        if self.sequences_per_epoch == 0:
            raise ValueError(
                f"{self.location}: {int(self._offsets[-1])} tokens hold no sequence of seq_len + 1 = {self.seq_len + 1}"
            )
        self._order = SequenceOrder(self.sequences_per_epoch, self.seed)
        self._tokens: dict[int, np.ndarray] = {}
        self._indexes: dict[int, np.ndarray] = {}
        self._leads: dict[int, int] = {}

    # -- reading ------------------------------------------------------------------------------

    def read_batch(self, start: int, batch_size: int) -> Batch:
        """This rank's share of the global batch beginning at global position `start` (no state change)."""
        positions = batch_positions(start, batch_size, self.rank, self.world_size)
        epochs, sequences = self._order.lookup(positions)
        width = self.seq_len + 1
        tokens = np.empty((batch_size, width), dtype=np.int64)
        doc_positions = np.empty((batch_size, width), dtype=np.int32)
        for row, sequence in enumerate(sequences):
            self._fill_window(int(sequence) * self.seq_len, tokens[row], doc_positions[row])
        return Batch(tokens=tokens, positions=doc_positions, sequences=sequences, epochs=epochs)

    def __iter__(self) -> Iterator[Batch]:
        """Endless stream of this rank's sequences, one per item (a Batch of one); advances the cursor."""
        while True:
            yield self.next_batch(1)

    def window(self, sequence: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, positions) of window `sequence` of the stream, independent of any order."""
        if not 0 <= sequence < self.sequences_per_epoch:
            raise IndexError(f"sequence {sequence} not in [0, {self.sequences_per_epoch})")
        tokens = np.empty(self.seq_len + 1, dtype=np.int64)
        positions = np.empty(self.seq_len + 1, dtype=np.int32)
        self._fill_window(sequence * self.seq_len, tokens, positions)
        return tokens, positions

    def prefetch(self, max_workers: int = 4) -> None:
        """Fetch and verify every shard now (in parallel) instead of on first use."""
        with ThreadPoolExecutor(max_workers) as pool:
            shards = range(len(self.manifest.shards))
            list(pool.map(lambda shard: (self._open_shard(shard), self._index(shard)), shards))

    def close(self) -> None:
        self._tokens.clear()
        self._indexes.clear()
        self._fetcher.close()

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps would pickle as their full contents: a worker process reopens them.
        state = dict(self.__dict__)
        state.update(_tokens={}, _indexes={}, _order=SequenceOrder(self.sequences_per_epoch, self.seed))
        return state

    # -- internals ----------------------------------------------------------------------------

    def _fill_window(self, start: int, tokens_out: np.ndarray, positions_out: np.ndarray) -> None:
        """Copy stream tokens [start, start + len(tokens_out)) and their in-document positions."""
        end = start + len(tokens_out)
        shard = int(np.searchsorted(self._offsets, start, side="right")) - 1
        done = 0
        while start < end:
            base = int(self._offsets[shard])
            a, b = start - base, min(end, int(self._offsets[shard + 1])) - base
            tokens_out[done : done + b - a] = self._open_shard(shard)[a:b]
            positions_out[done : done + b - a] = self._positions(shard, a, b)
            done += b - a
            start = base + b
            shard += 1

    def _positions(self, shard: int, a: int, b: int) -> np.ndarray:
        """In-document offsets of shard tokens [a, b)."""
        index = self._index(shard)
        first = int(np.searchsorted(index, a, side="right")) - 1
        stop = int(np.searchsorted(index, b, side="left"))
        starts = index[first:stop].astype(np.int64)  # the document holding a, then those starting in (a, b)
        lengths = np.diff(np.concatenate(([a], starts[1:], [b])))
        if first == 0:  # a continued document's positions carry on from the previous shard
            starts[0] -= self._lead(shard)
        return np.arange(a, b, dtype=np.int64) - np.repeat(starts, lengths)

    def _lead(self, shard: int) -> int:
        """Position, within its document, of the shard's first token (0 unless continued)."""
        if shard not in self._leads:
            lead = 0
            if self.manifest.shards[shard].continues_previous:
                previous = self.manifest.shards[shard - 1]
                previous_index = self._index(shard - 1)
                lead = previous.tokens - int(previous_index[-2])
                if previous.documents == 1:  # the previous shard is itself one piece of this document
                    lead += self._lead(shard - 1)
            self._leads[shard] = lead
        return self._leads[shard]

    def _open_shard(self, shard: int) -> np.ndarray:
        tokens = self._tokens.get(shard)
        if tokens is None:
            entry = self.manifest.shards[shard]
            location = entry.url or resolve(self.location, entry.path)
            path = self._local_copy(location, entry.sha256, entry.bytes, entry.path)
            tokens = open_tokens(path, self.manifest.dtype)
            self._tokens[shard] = tokens
        return tokens

    def _index(self, shard: int) -> np.ndarray:
        index = self._indexes.get(shard)
        if index is None:
            entry: ShardEntry = self.manifest.shards[shard]
            size = (entry.documents + 1) * INDEX_DTYPE.itemsize
            path = self._local_copy(
                entry.index_url or resolve(self.location, entry.index_path), entry.index_sha256, size, entry.index_path
            )
            index = np.asarray(open_index(path))
            if (problem := index_problem(index, entry.tokens, entry.documents)) is not None:
                raise ShardError(f"{entry.index_path}: {problem}")
            self._indexes[shard] = index
        return index

    def _local_copy(self, location: str, sha256: str, size: int, name: str) -> Path:
        path = local_path(location)
        if path is None:
            return self._cache.get(location, sha256, size, name)
        try:
            actual = path.stat().st_size
        except OSError as e:
            raise ShardError(f"{name}: cannot open {path}: {e.strerror or e}") from e
        if actual != size:
            raise ShardError(f"{name}: {actual} bytes on disk, the manifest says {size} ({path})")
        return path
