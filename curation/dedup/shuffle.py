"""The Ray Data building blocks the dedup stages are made of.

`map_partitions`: hash-partition a dataset on key columns and call a function once per
partition with the *whole* partition as one Arrow table. `repartition(n, keys=...)` emits each
hash partition as exactly one block (Ray sets `disallow_block_splitting` for it; `map_groups`
relies on the same), and `map_batches(batch_size=None)` hands a block over whole. Inside, the
function works vectorised (Arrow group-by, numpy) instead of Python once per group: 0.5 s vs
10 s for 200k rows / 50k groups with `groupby().map_groups()` on 2 CPUs.

`cogroup`: the same for two datasets at once (a partitioned hash join). `Dataset.join` would do,
but it needs `polars`, which this environment does not have; both sides are padded to one
schema, unioned and partitioned together, and each partition is split back into its two sides.

`Broadcast`: a small materialised table that every worker reads from the object store (cached
once per worker process): the cheap way to join a few verdicts to many full rows, whose texts
then do not move at all (100k documents, 2 CPUs: 0.55 s, vs 3.0 s for a cogroup on id).

`lookup` (a left join on a unique key inside one table) and `runs` (the groups of a sorted
partition) are what the per-partition functions are built from.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    import ray.data

SIDE = "_cogroup_side"
_LEFT, _RIGHT = "l\x1f", "r\x1f"  # column-name prefixes while the two sides travel together


def partition_count(num_cpus: int, rows: int = 0, rows_per_partition: int = 1_000_000) -> int:
    """Enough partitions to keep every CPU busy and each partition's table small."""
    return max(2 * max(1, num_cpus), -(-rows // rows_per_partition))


def map_partitions(ds: "ray.data.Dataset", keys: list[str], num_partitions: int,
                   fn: Callable[..., pa.Table], **fn_kwargs: Any) -> "ray.data.Dataset":
    """`fn(partition, **fn_kwargs)` once per hash partition; all rows of a key are in one call."""
    return ds.repartition(num_partitions, keys=list(keys)).map_batches(
        fn, batch_size=None, batch_format="pyarrow", zero_copy_batch=True, fn_kwargs=fn_kwargs or None)


def arrow_schema(ds: "ray.data.Dataset") -> pa.Schema:
    return ds.schema().base_schema


def cogroup(left: "ray.data.Dataset", right: "ray.data.Dataset", on: str, num_partitions: int,
            fn: Callable[..., pa.Table], *, left_schema: pa.Schema, right_schema: pa.Schema,
            **fn_kwargs: Any) -> "ray.data.Dataset":
    """`fn(left_part, right_part, **fn_kwargs)` once per hash partition of `on`: both parts hold
    every row of their side whose key falls in that partition (either may be empty)."""
    key_type = left_schema.field(on).type
    if right_schema.field(on).type != key_type:
        raise TypeError(f"cogroup on {on!r}: {key_type} vs {right_schema.field(on).type}")
    fields = [pa.field(on, key_type), pa.field(SIDE, pa.int8())]
    fields += [pa.field(_LEFT + f.name, f.type) for f in left_schema if f.name != on]
    fields += [pa.field(_RIGHT + f.name, f.type) for f in right_schema if f.name != on]
    joint = pa.schema(fields)
    tagged_left = left.map_batches(_pad, batch_format="pyarrow", zero_copy_batch=True,
                                   fn_kwargs={"prefix": _LEFT, "side": 0, "on": on, "joint": joint})
    tagged_right = right.map_batches(_pad, batch_format="pyarrow", zero_copy_batch=True,
                                     fn_kwargs={"prefix": _RIGHT, "side": 1, "on": on, "joint": joint})
    return map_partitions(tagged_left.union(tagged_right), [on], num_partitions, _split_and_call,
                          on=on, user_fn=fn, left_schema=left_schema, right_schema=right_schema,
                          fn_kwargs=fn_kwargs)


def _pad(batch: pa.Table, prefix: str, side: int, on: str, joint: pa.Schema) -> pa.Table:
    n = batch.num_rows
    cols = []
    for f in joint:
        if f.name == on:
            cols.append(batch[on])
        elif f.name == SIDE:
            cols.append(pa.array([side] * n, pa.int8()))
        elif f.name.startswith(prefix):
            cols.append(batch[f.name[len(prefix):]])
        else:
            cols.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(cols, schema=joint)


def _side(part: pa.Table, side: int, prefix: str, on: str, schema: pa.Schema) -> pa.Table:
    rows = part.filter(pc.equal(part[SIDE], side))
    return pa.Table.from_arrays([rows[on] if f.name == on else rows[prefix + f.name] for f in schema],
                                names=schema.names)


def _split_and_call(part: pa.Table, on: str, user_fn: Callable[..., pa.Table], left_schema: pa.Schema,
                    right_schema: pa.Schema, fn_kwargs: dict[str, Any]) -> pa.Table:
    return user_fn(_side(part, 0, _LEFT, on, left_schema), _side(part, 1, _RIGHT, on, right_schema), **fn_kwargs)


_BROADCAST_CACHE: dict[str, pa.Table] = {}


class Broadcast:
    """A materialised table shipped by reference; `table()` fetches it once per process."""

    def __init__(self, ds: "ray.data.Dataset", schema: pa.Schema):
        mat = ds.materialize()
        self.refs = mat.to_arrow_refs()
        self.schema = schema  # an empty dataset has none to ask for
        self.token = uuid.uuid4().hex

    @classmethod
    def of_table(cls, table: pa.Table) -> "Broadcast":
        """A table the driver holds, put in the object store once."""
        import ray  # Ray: started by the run, not by importing the stage

        self = cls.__new__(cls)
        self.refs, self.schema, self.token = [ray.put(table)], table.schema, uuid.uuid4().hex
        return self

    def table(self) -> pa.Table:
        import ray  # Ray: started by the run, not by importing the stage

        cached = _BROADCAST_CACHE.get(self.token)
        if cached is None:
            tables = [t for t in ray.get(self.refs) if t.num_rows]
            cached = pa.concat_tables(tables).combine_chunks() if tables else self.schema.empty_table()
            _BROADCAST_CACHE.clear()  # one broadcast at a time per worker: free the last one
            _BROADCAST_CACHE[self.token] = cached
        return cached


def lookup(keys: pa.Array | pa.ChunkedArray, table: pa.Table, key: str) -> pa.Table:
    """Rows of `table` (unique `key`) matching each of `keys`, in `keys`' order; all-null rows
    where there is no match. A hash lookup like a left join, but for any column type (Acero's
    join rejects list payloads such as signatures) and keeping the left order."""
    idx = pc.index_in(keys, value_set=table[key])
    return table.take(idx)


def runs(*keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of the runs of equal rows of sorted key arrays: the groups of a sorted
    partition, found without a Python loop."""
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    change = np.zeros(n, bool)
    change[0] = True
    for k in keys:
        change[1:] |= k[1:] != k[:-1]
    starts = np.flatnonzero(change)
    return starts, np.diff(np.r_[starts, n])
