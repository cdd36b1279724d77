"""Shared shape of the exact-key dedup stages (`url_dedup`, `exact_dedup`).

Each document gets a key; a hash shuffle on the key (`Dataset.repartition(keys=...)`, one
distributed shuffle in which the texts travel once) puts all documents with one key in the
same block; each block is then judged vectorised: per key, the smallest id is kept and the
others are marked with the kept id. Documents without a key (no URL) get a key of their own,
so they never meet anything.

NOTE: `Dataset.groupby().map_groups()` gives the same answer but calls Python once per group:
8 s vs 4 s for 30k documents on 2 CPUs, and the gap grows with the number of singleton groups.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.stages.base import KEPT, Stage, StageParams, set_column, with_verdicts

KEY = "_dedup_key"


class KeyedDedupParams(StageParams):
    # Shuffle partitions; None: 4 per CPU of the cluster (enough to keep blocks small).
    partitions: int | None = None


def mark_duplicates(block: pa.Table, reason: str, key_name: str) -> pa.Table:
    """Keep the smallest id of each key in `block` (which holds every row of its keys)."""
    if block.num_rows == 0:
        return with_verdicts(block, [], None).drop_columns([KEY])
    block = block.sort_by([(KEY, "ascending"), ("id", "ascending")])
    keys = block[KEY].to_numpy(zero_copy_only=False)
    ids = block["id"].to_numpy(zero_copy_only=False)
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    starts = np.flatnonzero(first)
    group_of = np.cumsum(first) - 1  # row -> index of its group
    sizes = np.diff(np.append(starts, len(keys)))
    reasons, details = [], []
    for i in range(len(keys)):
        if first[i]:
            reasons.append(KEPT)
            details.append(None)
        else:
            g = group_of[i]
            reasons.append(reason)
            details.append({"kept_id": ids[starts[g]], key_name: keys[i], "group_size": int(sizes[g])})
    return with_verdicts(block, reasons, details).drop_columns([KEY])


class KeyedDedup(Stage):
    reason: str
    key_name: str  # how the key is named in a reject's detail

    @abstractmethod
    def keys(self, batch: pa.Table) -> pa.Array:
        """One key per row (null: the row has none and is unique)."""

    def _with_key(self, batch: pa.Table) -> pa.Table:
        keys = self.keys(batch)
        # A row without a key must not meet other keyless rows: it becomes its own group.
        unique = pc.binary_join_element_wise("\x00", batch["id"], "")
        return set_column(batch, KEY, pc.if_else(pc.is_null(keys), unique, keys))

    def run(self, ds):
        reason, key_name = self.reason, self.key_name
        partitions = self.params.partitions or max(8, 4 * self.ctx.num_cpus)
        keyed = ds.map_batches(self._with_key, batch_format="pyarrow", batch_size=4096)
        # repartition(keys=) hash-partitions into exactly `partitions` blocks: every row of a
        # key lands in one block, and batch_size=None hands each block over whole.
        shuffled = keyed.repartition(partitions, keys=[KEY])
        return shuffled.map_batches(lambda b: mark_duplicates(b, reason, key_name),
                                    batch_format="pyarrow", batch_size=None)
