"""The stage model.

A stage receives the documents that every earlier stage kept and must return *every one of
them*, each marked with a verdict:

    _reason  string  ""  -> kept;  anything else -> dropped, the reason (`duplicate_url`, ...)
    _detail  string  JSON object explaining the verdict ("{}" when there is nothing to say)

A stage may also rewrite `text` (sentence dedup, PII redaction) -- then it must refresh
`n_tokens` -- and add columns (`lang`, `perplexity`, ...). The pipeline materialises the
result, checks `docs_in == docs_out + sum(dropped)`, writes the dropped rows to `rejects/` and
hands the kept rows to the next stage. A stage never filters rows itself: nothing is dropped
silently.

Two shapes, as in NeMo Curator and datatrove:
- `MapStage`: row-local, runs as `Dataset.map_batches` over Arrow tables (`process_batch`).
  Stages with an expensive set-up (a model) set `uses_actors = True`: the set-up then runs
  once per actor of a Ray actor pool, not once per batch.
- `Stage` with its own `run`: a global step (dedup) built from Ray Data shuffles/group-bys.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from curation.text_bytes import string_buffers, word_starts

if TYPE_CHECKING:  # Ray is heavy; stages import it lazily
    import ray.data

REASON = "_reason"
DETAIL = "_detail"
KEPT = ""


class StageParams(BaseModel):
    """Base for each stage's parameters: unknown keys are an error, before any work starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class RunContext:
    """What a stage may know about the run it is part of."""

    seed: int
    output: str  # URI of the run's output folder (local path or pyarrow.fs URI)
    num_cpus: int = 1  # CPUs of the Ray cluster, for sizing shuffles and actor pools
    # Summaries a stage wants in stats.json next to its counts (cluster histograms, ...).
    extra_stats: dict[str, Any] = field(default_factory=dict)


class Stage(ABC):
    """One named step of a curation run. Subclasses live one per file in `curation/stages/`."""

    name: ClassVar[str]
    method: ClassVar[str]  # how it works, for the removal table ("MinHash + LSH")
    Params: ClassVar[type[StageParams]] = StageParams
    # Columns the stage needs, and those it adds or rewrites: a config whose stage reads what
    # neither the reader nor an earlier stage writes fails before any work (PipelineConfig).
    reads: ClassVar[tuple[str, ...]] = ("id", "text")
    writes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: StageParams, ctx: RunContext):
        self.params = params
        self.ctx = ctx

    @abstractmethod
    def run(self, ds: "ray.data.Dataset") -> "ray.data.Dataset":
        """Return every row of `ds` with `_reason` and `_detail` columns added."""

    def summarize(self, out: "ray.data.Dataset") -> dict[str, Any]:
        """Extra statistics for stats.json, computed from the materialised output."""
        return {}

    def finalize(self, run_stats: dict[str, Any]) -> Any:
        """Called once the run's stats.json is written (the tokenize stage writes the manifest
        here, so its provenance holds every stage's final numbers)."""
        return None


class MapStage(Stage):
    """A row-local stage: `process_batch` judges an Arrow batch and returns it, same rows."""

    uses_actors: ClassVar[bool] = False
    batch_size: ClassVar[int | None] = 1024

    def setup(self) -> None:
        """Load models etc. Called once per worker process/actor before the first batch."""

    @abstractmethod
    def process_batch(self, batch: pa.Table) -> pa.Table:
        """Return `batch` (same rows, same order) with `_reason`/`_detail` (see `verdicts`)."""

    def run(self, ds: "ray.data.Dataset") -> "ray.data.Dataset":
        kwargs: dict[str, Any] = dict(batch_format="pyarrow", batch_size=self.batch_size, zero_copy_batch=True)
        if self.uses_actors:
            from ray.data import ActorPoolStrategy  # Ray Data: stages are configured without it

            return ds.map_batches(
                _StageActor,
                fn_constructor_args=(type(self), self.params, self.ctx),
                # NOTE: every actor from the start: an autoscaling pool starts at one and adds the
                # others only once a queue builds, each paying its model load late.
                compute=ActorPoolStrategy(size=max(1, self.ctx.num_cpus)),
                **kwargs,
            )
        return ds.map_batches(_StageTask(self), **kwargs)


class _StageTask:
    """Callable for stateless map stages; `setup` runs once per worker process (cached)."""

    def __init__(self, stage: MapStage):
        self.stage = stage
        self.ready = False

    def __call__(self, batch: pa.Table) -> pa.Table:
        if not self.ready:
            self.stage.setup()
            self.ready = True
        return _checked(self.stage, batch)


class _StageActor:
    """Actor-pool wrapper: builds the stage (and its model) once per actor."""

    def __init__(self, cls: type[MapStage], params: StageParams, ctx: RunContext):
        self.stage = cls(params, ctx)
        self.stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _checked(self.stage, batch)


def _checked(stage: MapStage, batch: pa.Table) -> pa.Table:
    out = stage.process_batch(batch)
    if out.num_rows != batch.num_rows:
        raise RuntimeError(f"stage {stage.name!r} returned {out.num_rows} rows for {batch.num_rows}: "
                           "stages must mark rows, never drop them")
    if REASON not in out.column_names:
        out = with_verdicts(out, [KEPT] * out.num_rows, None)
    return out


def with_verdicts(table: pa.Table, reasons: list[str], details: list[dict | None] | None) -> pa.Table:
    """Set `_reason`/`_detail` on `table` (replacing any a previous stage left)."""
    n = table.num_rows
    if details is None:
        detail_col = pa.array(["{}"] * n, pa.string())
    else:
        detail_col = pa.array([json.dumps(d, sort_keys=True) if d else "{}" for d in details], pa.string())
    table = set_column(table, REASON, pa.array(reasons, pa.string()))
    return set_column(table, DETAIL, detail_col)


def set_column(table: pa.Table, name: str, values: pa.Array | pa.ChunkedArray) -> pa.Table:
    """Replace column `name` if present, else append it."""
    idx = table.schema.get_field_index(name)
    if idx >= 0:
        return table.set_column(idx, name, values)
    return table.append_column(name, values)


# `str.split()`'s whitespace: in one byte \t \n \v \f \r, \x1c-\x1f and space; in UTF-8,
# U+0085 and U+00A0 (C2 85, C2 A0), U+1680 (E1 9A 80), U+2000-U+200A, U+2028/9 and U+202F
# (E2 80 80-8A/A8/A9/AF), U+205F (E2 81 9F) and U+3000 (E3 80 80).
_WIDE_SPACES = [b"\xc2\x85", b"\xc2\xa0", b"\xe1\x9a\x80", b"\xe2\x81\x9f", b"\xe3\x80\x80"] + [
    bytes([0xE2, 0x80, b]) for b in [*range(0x80, 0x8B), 0xA8, 0xA9, 0xAF]]
# The same sequences as big-endian integers of their first two and three bytes.
_WIDE_SPACE_PAIRS = np.array([int.from_bytes(w, "big") for w in _WIDE_SPACES if len(w) == 2])
_WIDE_SPACE_TRIPLES = np.array([int.from_bytes(w, "big") for w in _WIDE_SPACES if len(w) == 3])


def count_words(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Whitespace-word counts, exactly `len(text.split())` of every text (nulls stay null), the
    token unit of stats.json until a tokenizer exists.

    Counted on the UTF-8 bytes with numpy, ~2x str.split on mixed text and ~8x a regex (the
    reader paid str.split per record): bytes <= 0x20 are spaces, a word starts at a non-space
    after a space. Texts holding a byte that rule gets wrong (control bytes that are not
    whitespace, multi-byte whitespace) are counted by str.split itself; a cheap superset of
    them is found in one pass (any control byte outside \\t-\\r and \\x1c-\\x1f, any lead byte >= C2).
    """
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks else pa.array([], pa.string())
    n = len(texts)
    if n == 0:
        return pa.array([], pa.int64())
    if not (pa.types.is_large_string(texts.type) or pa.types.is_string(texts.type)):
        texts = texts.cast(pa.string())
    offsets, data = string_buffers(texts)
    if len(data) == 0:
        counts = np.zeros(n, np.int64)
    else:
        space = data <= 0x20  # comparisons run at memory speed; a 256-entry lookup is 10x slower
        counts = np.diff(np.searchsorted(word_starts(space, offsets), offsets))
        odd = data < 9
        odd |= (data > 13) & (data < 28)
        odd |= data >= 0xC2
        suspects = np.flatnonzero(odd)
        if len(suspects):
            exact = data[suspects] < 28  # a control byte: str.split keeps it inside a word
            padded = np.concatenate([data, np.zeros(2, np.uint8)])
            lead = suspects[~exact]
            tail = padded[lead + 1].astype(np.int32) << 8 | padded[lead + 2]
            head = padded[lead].astype(np.int32) << 16 | tail
            wide_space = np.isin(head, _WIDE_SPACE_TRIPLES) | np.isin(head >> 8, _WIDE_SPACE_PAIRS)
            recount = np.concatenate([suspects[exact], lead[wide_space]])
            for i in np.unique(np.searchsorted(offsets, recount, side="right") - 1):
                counts[i] = len(texts[int(i)].as_py().split())
    out = pa.array(counts, pa.int64())
    if texts.null_count:
        out = pc.if_else(texts.is_valid(), out, pa.scalar(None, pa.int64()))
    return out
