"""Running a curation config on Ray Data.

    read -> stage 1 -> stage 2 -> ... -> OUTPUT/data/*.parquet
              |          |
              +----------+--> OUTPUT/rejects/<stage>-NNNNN.parquet   OUTPUT/stats.json

Each stage's output is materialised before the next starts. That costs object-store space
(Ray spills to disk when it fills) but buys three things a fused streaming plan cannot give:
exact per-stage timings, the accounting check `docs_in == docs_out + sum(dropped)` before any
later stage runs, and rejects written once per stage without recomputing the stage.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import fs as pafs

from contract.atomic import write_json_atomic
from contract.layout import CurationRun, join
from contract.stores import filesystem_for
from curation import runtime
from curation.config import PipelineConfig
from curation.io.files import InputError, plan_reads, write_parquet
from curation.io.reader import read_documents
from curation.io.unique_ids import enforce_unique_ids
from curation.stages import stage_class
from curation.stages.base import DETAIL, KEPT, REASON, RunContext, Stage
from curation.stats import RunStats, StageStats

REJECT_COLUMNS = ["id", "stage", "reason", "detail", "domain", "source", "n_tokens", "text"]
READ_METHOD = "JSONL/Parquet reader"


class OutputError(ValueError):
    """The output cannot be written: not empty, not writable, or the disk filled (one line)."""


class OutputExists(OutputError):
    pass


# Disk-level failures worth a one-line answer (the rest are bugs and keep their traceback).
# Ray re-raises a worker's OSError as a RayTaskError whose text may be all that survives.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
_DISK_MESSAGES = ("No space left on device", "Disk quota exceeded", "Read-only file system",
                  "Permission denied", "File too large")  # fmt: skip


def disk_failure(exc: BaseException) -> str | None:
    """The disk-level reason behind `exc` (through Ray task errors and exception chains), or None."""
    stack, seen = [exc], set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
            return os.strerror(e.errno)  # pyarrow puts its whole message in strerror
        text = str(e)
        for message in _DISK_MESSAGES:
            if message in text:
                return message
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


class AccountingError(RuntimeError):
    """A stage lost or invented documents: a bug, never a data problem."""


@dataclass
class RunResult:
    output: str
    stats: RunStats
    data_dir: str
    rejects_dir: str
    stats_path: str
    extra: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[str, dict[str, Any]], None]


def _tally_batch(batch: pa.Table) -> pa.Table:
    """Per-block partial counts: (reason, docs, tokens, bytes of text). The driver sums these."""
    if batch.num_rows == 0:
        return pa.table({"reason": pa.array([], pa.string()), "docs": pa.array([], pa.int64()),
                         "tokens": pa.array([], pa.int64()), "bytes": pa.array([], pa.int64())})
    t = pa.table({REASON: batch[REASON], "n_tokens": batch["n_tokens"],
                  "n_bytes": pc.binary_length(pc.fill_null(batch["text"], "")).cast(pa.int64())})
    grouped = t.group_by(REASON).aggregate([("n_tokens", "count"), ("n_tokens", "sum"), ("n_bytes", "sum")])
    return pa.table({"reason": grouped[REASON], "docs": grouped["n_tokens_count"].cast(pa.int64()),
                     "tokens": grouped["n_tokens_sum"].cast(pa.int64()),
                     "bytes": grouped["n_bytes_sum"].cast(pa.int64())})


def _sum_tallies(tables: list[pa.Table]) -> dict[str, tuple[int, int, int]]:
    totals: dict[str, tuple[int, int, int]] = {}
    for t in tables:
        for row in t.to_pylist():
            d, n, b = totals.get(row["reason"], (0, 0, 0))
            totals[row["reason"]] = (d + int(row["docs"]), n + int(row["tokens"]), b + int(row["bytes"]))
    return totals


def tally(ds) -> dict[str, tuple[int, int]]:
    """{reason: (docs, tokens)} over a materialized dataset with verdicts ("" = kept)."""
    counts = _sum_tallies(runtime.per_block(ds, lambda block, _: _tally_batch(block)))
    return {reason: (docs, tokens) for reason, (docs, tokens, _) in counts.items()}


def _kept(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.equal(batch[REASON], KEPT)).drop_columns([REASON, DETAIL])


def _rejected(batch: pa.Table, stage: str) -> pa.Table:
    dropped = batch.filter(pc.not_equal(batch[REASON], KEPT))
    return pa.table({
        "id": dropped["id"], "stage": pa.array([stage] * dropped.num_rows, pa.string()),
        "reason": dropped[REASON], "detail": dropped[DETAIL], "domain": dropped["domain"],
        "source": dropped["source"], "n_tokens": dropped["n_tokens"], "text": dropped["text"],
    })


def _settle_block(block: pa.Table, index: int, stage: str, rejects_dir: str, data_dir: str | None,
                  tag: str) -> pa.Table:
    """One pass over a stage's output block: its tally, its rejects file and, after the last
    stage, its data file. File names are the block's position and the run: a retried task
    rewrites the same file, and a run's files sort in the order of its documents."""
    counts = _tally_batch(block)
    if block.num_rows == 0:
        return counts
    if pc.any(pc.not_equal(block[REASON], KEPT)).as_py():
        write_parquet(_rejected(block, stage), f"{rejects_dir}/{stage}-{index:05}-{tag}.parquet")
    if data_dir is not None:
        kept = _kept(block)
        if kept.num_rows:
            write_parquet(kept, f"{data_dir}/part-{index:05}-{tag}.parquet")
    return counts


class Pipeline:
    """One run of a `PipelineConfig`. `run()` does the work; construction validates only."""

    def __init__(self, config: PipelineConfig, *, overwrite: bool = False, progress: ProgressFn | None = None):
        self.config = config
        self.overwrite = overwrite
        self.progress = progress or (lambda event, info: None)
        self.fs, self.root = filesystem_for(config.output)
        self.layout = CurationRun(config.output)  # URIs, as the config gives them
        self.files = CurationRun(self.root)  # paths inside self.fs
        self.data_dir, self.rejects_dir = self.layout.data, self.layout.rejects
        # Input problems are the user's to fix: find them before starting Ray.
        self.read_tasks = [t for spec in config.inputs
                           for t in plan_reads(spec.path, spec.domain or config.default_domain)]

    def _prepare_output(self) -> None:
        """An empty, writable output folder, checked before any work (a probe file is written
        and removed: a folder can exist on a read-only or full filesystem)."""

        try:
            info = self.fs.get_file_info(self.root)
            if info.type == pafs.FileType.File:
                raise OutputExists(f"output {self.config.output} is a file")
            if info.type == pafs.FileType.Directory:
                entries = self.fs.get_file_info(pafs.FileSelector(self.root))
                if entries and not self.overwrite:
                    raise OutputExists(f"output {self.config.output} is not empty (use --overwrite to replace it)")
                if entries:
                    self.fs.delete_dir_contents(self.root)
            self.fs.create_dir(self.root, recursive=True)
            probe = join(self.root, f".write-probe-{uuid.uuid4().hex[:8]}")
            with self.fs.open_output_stream(probe) as f:
                f.write(b"ok")
            self.fs.delete_file(probe)
        except OSError as e:
            raise OutputError(f"output {self.config.output}: cannot write there ({disk_failure(e) or e})") from None

    def _settle(self, name: str, method: str, out, prev: StageStats | None, started: float,
                stage: Stage | None, last: bool) -> tuple[Any, StageStats]:
        """Materialise a stage's output, then in one pass over its blocks: check the accounting,
        write rejects (and, after the last stage, the kept documents); keep the rest lazily."""
        out = out.materialize()
        data_dir = self.data_dir if last else None
        counts = _sum_tallies(runtime.per_block(out, _settle_block, name, self.rejects_dir, data_dir, self.tag))
        docs_out, tokens_out, bytes_out = counts.pop(KEPT, (0, 0, 0))
        dropped = {r: c[0] for r, c in sorted(counts.items())}
        dropped_tokens = {r: c[1] for r, c in sorted(counts.items())}
        total = docs_out + sum(dropped.values())
        if prev is None:  # the read step: every record read is an input
            docs_in, tokens_in = total, tokens_out + sum(dropped_tokens.values())
            bytes_in = bytes_out + sum(c[2] for c in counts.values())
        else:
            docs_in, tokens_in, bytes_in = prev.docs_out, prev.tokens_out, prev.bytes_out
        if total != docs_in:
            raise AccountingError(f"stage {name!r}: {docs_in} documents in, {docs_out} kept + "
                                  f"{total - docs_out} dropped = {total}")
        extra = stage.summarize(out) if stage is not None else {}
        kept = out.map_batches(_kept, batch_format="pyarrow", batch_size=None)
        stats = StageStats(name=name, method=method, docs_in=docs_in, docs_out=docs_out,
                           tokens_in=tokens_in, tokens_out=tokens_out, bytes_in=bytes_in, bytes_out=bytes_out,
                           dropped=dropped,
                           dropped_tokens=dropped_tokens, seconds=round(time.perf_counter() - started, 3),
                           extra=extra)
        return kept, stats

    def _read(self, ctx: RunContext) -> tuple[Any, str]:
        """The read step: (the input records with ids made unique, its method name). A run that
        starts from something else overrides it (workflows.ablation.prefix_cache: an earlier run's
        kept documents, every column as that run left them)."""
        records = read_documents(self.read_tasks).materialize()
        return enforce_unique_ids(records, self.config.duplicate_ids, partitions=max(8, 4 * ctx.num_cpus)), READ_METHOD

    def run(self) -> RunResult:
        """Run every step. A disk-level failure on the way (full, read-only, no permission) is an
        `OutputError` naming the step; stats.json and manifest.json are written last, each to a
        temporary name then renamed, so a run that fails publishes neither."""
        self._prepare_output()
        self._step = "read"
        try:
            return self._run()
        except OutputError:
            raise
        except Exception as e:
            reason = disk_failure(e)
            if reason is None:
                raise
            raise OutputError(f"output {self.config.output}: {reason} during {self._step}; the run stopped "
                              f"without publishing stats.json or a manifest (free space, then rerun with --overwrite)"
                              ) from e

    def _run(self) -> RunResult:
        started = time.perf_counter()
        runtime.init_ray()
        ctx = RunContext(seed=self.config.seed, output=self.config.output, num_cpus=runtime.cluster_cpus())
        stages = [stage_class(s.name)(s.params, ctx) for s in self.config.stages]
        run_stats = RunStats(run_id=uuid.uuid4().hex[:12], config_sha256=self.config.fingerprint(),
                             config=self.config.dump())

        n_steps = len(stages) + 1
        self.progress("stage_start", {"name": "read", "index": 0, "total": n_steps})
        t0 = time.perf_counter()
        self.tag = run_stats.run_id
        for folder in (self.files.data, self.files.rejects):
            self.fs.create_dir(folder, recursive=True)
        records, method = self._read(ctx)
        ds, st = self._settle("read", method, records, None, t0, None, last=not stages)
        # The settled output holds what later steps need: the raw read blocks can be freed now
        # rather than at the end of the run (-18% peak spill disk for 2 GB on a 300 MiB store,
        # benchmarks/memory_scale.md).
        del records
        run_stats.stages.append(st)
        self.progress("stage_done", {"stats": st, "index": 0, "total": n_steps})
        for i, stage in enumerate(stages, start=1):
            self._step = stage.name
            self.progress("stage_start", {"name": stage.name, "index": i, "total": n_steps})
            t0 = time.perf_counter()
            prev = run_stats.stages[-1]
            ds, st = self._settle(stage.name, stage.method, stage.run(ds), prev, t0, stage, last=i == len(stages))
            run_stats.stages.append(st)
            self.progress("stage_done", {"stats": st, "index": i, "total": n_steps})

        self._step = "write"
        self.progress("write_start", {})  # the last stage's pass wrote data/ already
        run_stats.seconds = round(time.perf_counter() - started, 3)
        stats_path = self.layout.stats
        stats_json = run_stats.to_json()
        write_json_atomic(self.files.stats, stats_json, fs=self.fs)
        extra = {}
        try:
            for stage in stages:
                self._step = f"{stage.name} (finalize)"
                made = stage.finalize(stats_json)
                if made is not None:
                    extra[stage.name] = str(made)
        except BaseException:
            # stats.json says "done": without the finalize step's files (the manifest) it must not stay.
            with contextlib.suppress(OSError):
                self.fs.delete_file(self.files.stats)
            raise
        return RunResult(output=self.config.output, stats=run_stats, data_dir=self.data_dir,
                         rejects_dir=self.rejects_dir, stats_path=stats_path, extra=extra)


def run_pipeline(config: PipelineConfig, **kwargs: Any) -> RunResult:
    return Pipeline(config, **kwargs).run()


__all__ = ["Pipeline", "RunResult", "run_pipeline", "OutputError", "OutputExists", "AccountingError", "InputError",
           "tally"]
