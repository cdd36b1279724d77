"""Document ids are unique after `read`: the policy for inputs that repeat one.

Every later step names documents by id (rejects, `flywheel inspect`, the dedup keepers,
`explain`), so two documents under one id would make those answers ambiguous. Policies:

    reject   the first occurrence (by source path, then position in the file) is kept; each
             later one is a `read` reject with reason `duplicate_id` and a detail naming the kept
             copy, so nothing is lost and the user can see what collided (the default)
    error    the run stops before any stage, naming how many ids repeat and a few of them

Repeats are rare, so the check is built around "no repeat": each block sends the driver one
64-bit hash per id (8 bytes a document), the driver finds the hashes that occur twice, and only
the rows under those hashes come back, as (id, source, position), to be compared exactly. Two
light passes over the read blocks, no shuffle: a Ray shuffle costs seconds to start (~4.5 s
on 30k documents), this ~0.2 s. Past `DRIVER_CHECK_MAX_ROWS` the hashes would not fit the
driver comfortably, and the small columns are shuffled by id instead. Texts never travel.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from curation.io.files import InputError
from curation.io.records import POSITION
from curation.runtime import per_block
from curation.stages.base import DETAIL, REASON

if TYPE_CHECKING:
    import ray.data

DuplicateIdPolicy = Literal["reject", "error"]
DUPLICATE_ID = "duplicate_id"
EXAMPLES_IN_ERROR = 5
# 8 bytes a document on the driver: 50M ids are 400 MB of hashes.
DRIVER_CHECK_MAX_ROWS = 50_000_000


class DuplicateIdError(InputError):
    """Input ids repeat and the policy is `error` (one line for the user)."""


def _keys(batch: pa.Table) -> pa.Table:
    # Records the reader already rejected (malformed) carry made-up ids: they take no part.
    valid = pc.equal(batch[REASON], "")
    return batch.select(["id", "source", POSITION]).filter(valid)


def _id_hashes(batch: pa.Table, _index: int = 0) -> np.ndarray:
    if batch.num_rows == 0:
        return np.zeros(0, np.uint64)
    ids = _keys(batch)["id"].to_pylist()
    return np.fromiter((xxhash.xxh3_64_intdigest(i.encode()) for i in ids), np.uint64, len(ids))


def _rows_under(batch: pa.Table, _index: int, hashes: np.ndarray) -> pa.Table:
    """The (id, source, position) of rows whose id hash is in `hashes`."""
    if batch.num_rows == 0:
        return pa.table({"id": pa.array([], pa.string()), "source": pa.array([], pa.string()),
                         POSITION: pa.array([], pa.int64())})
    return _keys(batch).filter(pa.array(np.isin(_id_hashes(batch), hashes)))


def _repeated_rows(ds: "ray.data.Dataset", partitions: int) -> list[dict]:
    """`later_copies` over the whole dataset, as rows on the driver."""
    if ds.count() > DRIVER_CHECK_MAX_ROWS:
        return (ds.map_batches(_keys, batch_format="pyarrow", batch_size=None)
                  .repartition(partitions, keys=["id"])
                  .map_batches(later_copies, batch_format="pyarrow", batch_size=None)
                  .take_all())  # fmt: skip
    hashes = np.concatenate([np.zeros(0, np.uint64), *per_block(ds, _id_hashes)])
    values, counts = np.unique(hashes, return_counts=True)
    repeated = values[counts > 1]
    if len(repeated) == 0:
        return []
    candidates = per_block(ds, _rows_under, repeated)
    # equal hashes, different ids: no row
    return later_copies(pa.concat_tables(candidates, promote_options="permissive")).to_pylist()


def later_copies(block: pa.Table) -> pa.Table:
    """Rows of `block` (which holds every row of its ids) that repeat an earlier row's id, with
    the first occurrence's source and position."""
    empty = pa.table({"id": pa.array([], pa.string()), "source": pa.array([], pa.string()), POSITION: pa.array([], pa.int64()),
                      "kept_source": pa.array([], pa.string()), "kept_position": pa.array([], pa.int64())})
    if block.num_rows < 2:
        return empty
    block = block.sort_by([("id", "ascending"), ("source", "ascending"), (POSITION, "ascending")])
    ids = block["id"].to_numpy(zero_copy_only=False)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    if first.all():
        return empty
    group_start = np.flatnonzero(first)[np.cumsum(first) - 1]  # row -> row of its group's first
    later = np.flatnonzero(~first)
    keeper = group_start[later]
    return pa.table({
        "id": block["id"].take(later), "source": block["source"].take(later), POSITION: block[POSITION].take(later),
        "kept_source": block["source"].take(keeper), "kept_position": block[POSITION].take(keeper),
    })  # fmt: skip


class _MarkLaterCopies:
    """Map step: mark the rows named in `copies` as `duplicate_id` rejects, drop the position."""

    def __init__(self, copies: dict[tuple[str, int], tuple[str, int]]):
        self.copies = copies

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.copies and batch.num_rows:
            reasons, details = batch[REASON].to_pylist(), batch[DETAIL].to_pylist()
            sources, positions, ids = (batch[c].to_pylist() for c in ("source", POSITION, "id"))
            for i, (source, position) in enumerate(zip(sources, positions, strict=True)):
                kept = self.copies.get((source, position)) if reasons[i] == "" else None
                if kept is not None:
                    reasons[i] = DUPLICATE_ID
                    details[i] = json.dumps({"id": ids[i], "kept_source": kept[0], "kept_position": kept[1],
                                             "source": source, "position": position}, sort_keys=True)
            batch = batch.set_column(batch.schema.get_field_index(REASON), REASON, pa.array(reasons, pa.string()))
            batch = batch.set_column(batch.schema.get_field_index(DETAIL), DETAIL, pa.array(details, pa.string()))
        return batch.drop_columns([POSITION])


def enforce_unique_ids(ds: ray.data.Dataset, policy: DuplicateIdPolicy, partitions: int) -> ray.data.Dataset:
    """`ds` (the reader's output, materialised: it is read twice) with repeated ids handled by
    `policy` and the position column dropped."""
    found = _repeated_rows(ds, partitions)
    copies = {(r["source"], r[POSITION]): (r["kept_source"], r["kept_position"]) for r in found}
    if copies and policy == "error":
        examples = sorted((r["id"], r["source"], r[POSITION]) for r in found)[:EXAMPLES_IN_ERROR]
        raise DuplicateIdError(
            f"{len(copies)} input records repeat an earlier record's id, e.g. "
            + ", ".join(f"{i!r} at {s}@{p}" for i, s, p in examples)
            + " (set duplicate_ids: reject to keep the first of each and reject the rest)"
        )
    return ds.map_batches(_MarkLaterCopies(copies), batch_format="pyarrow", batch_size=None)
