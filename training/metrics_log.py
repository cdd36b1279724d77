"""The trainer's JSONL logs (metrics.jsonl, eval.jsonl) in a local folder or an object store.

    log = MetricsLog("s3://bucket/run", enabled=rank == 0)
    log.write({"step": 1, "loss": 10.4})   # local: appended at once; store: uploaded by flush()
    log.flush()                            # the trainer flushes before every checkpoint save
    read_metrics("s3://bucket/run")        # [{"step": 1, "loss": 10.4}]

An object store has no append, so there the log is kept in memory and uploaded whole: every
`flush_s` seconds (TrainConfig.metrics_flush_s) and before each checkpoint save, so a checkpoint's steps always have their
lines in the store and a resume after a crash loses none of them. (The cost is a rewrite of the
whole log per flush; at ~1 KB a step a 100k-step run uploads ~100 MB a flush, so a log split in
segments would be the next step for runs that long.)

No torch here: the service and the ablation runner read these logs without the trainer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from contract.atomic import write_atomic
from contract.jsonl import read_jsonl
from contract.layout import TrainingRun, join
from contract.stores import exists, filesystem_for, is_object_store, read_bytes


class MetricsLog:
    """A JSONL log with a "step" per line, written by rank 0 only: metrics.jsonl (one object
    per optimiser step) or eval.jsonl (one per evaluation).

    On resume from step s, lines for steps after s (work a crash threw away) move to
    <name>.rolled_back.jsonl, so the log keeps at most one line per step.
    """

    def __init__(self, out_dir: str | Path, enabled: bool, name: str = TrainingRun.METRICS, flush_s: float = 0.0):
        self.enabled, self.flush_s = enabled, flush_s
        self.fs, base = filesystem_for(str(out_dir))
        self.path = join(base, name)
        self.rolled_back = join(base, TrainingRun.rolled_back(name))
        self.on_store = is_object_store(self.fs)
        self.lines: list[str] | None = None  # on a store: the whole log, read on first use
        self.flushed_at = time.monotonic()
        if enabled and not self.on_store:
            self.fs.create_dir(base, recursive=True)

    def rollback_after(self, step: int) -> None:
        if not self.enabled:
            return
        keep, drop = [], []
        for line in self._read(self.path):
            (keep if json.loads(line)["step"] <= step else drop).append(line)
        if drop:
            self._replace(self.rolled_back, self._read(self.rolled_back) + drop)
        self._replace(self.path, keep)

    def truncate(self) -> None:
        if self.enabled:
            self._replace(self.path, [])

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps(record)
        if not self.on_store:
            with self.fs.open_append_stream(self.path) as f:
                f.write((line + "\n").encode())
            return
        self._store_lines().append(line)
        if time.monotonic() - self.flushed_at >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Upload the log (on a store; local lines are written at once)."""
        if self.enabled and self.on_store and self.lines is not None:
            self._upload(self.path, self.lines)

    def _store_lines(self) -> list[str]:
        if self.lines is None:
            self.lines = self._read(self.path)
        return self.lines

    def _read(self, path: str) -> list[str]:
        if self.on_store and path == self.path and self.lines is not None:
            return list(self.lines)
        if not exists(self.fs, path):
            return []
        return [ln for ln in read_bytes(self.fs, path).decode().splitlines() if ln.strip()]

    def _replace(self, path: str, lines: list[str]) -> None:
        if self.on_store and path == self.path:
            self.lines = list(lines)
        self._upload(path, lines)

    def _upload(self, path: str, lines: list[str]) -> None:
        write_atomic(path, "".join(line + "\n" for line in lines).encode(), self.fs)
        self.flushed_at = time.monotonic()


def read_metrics(out_dir: str | Path, name: str = TrainingRun.METRICS) -> list[dict[str, Any]]:
    """The records of OUT/metrics.jsonl (or another log, e.g. TrainingRun.EVAL), OUT a local folder
    or a store URI; [] before the first line, a line still being written left out."""
    return read_jsonl(join(str(out_dir), name))
