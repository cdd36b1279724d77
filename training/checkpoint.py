"""Sharded, reshardable checkpoints with torch.distributed.checkpoint (DCP).

    ckpts = CheckpointManager(out / "checkpoints", interval_s=600, every_steps=None, keep=2, group=pg)
    if ckpts.due(step, final):                 # rank 0's answer is the one that counts
        path = ckpts.save(step, state)         # every rank; returns out/checkpoints/step_00000120
    meta = ckpts.load(ckpts.latest(), state)   # any world size, any (efsdp x ep) layout

A checkpoint is one directory: DCP's per-rank `.distcp` files and `.metadata`, then `meta.json`
(written by rank 0 last, so a directory without it is incomplete and ignored). Parameters and
optimizer moments are saved as DTensor shards with their global shapes, so DCP reshards them on
load: FSDP over W ranks, experts over ep, or a plain single-process model.

The state holds model (with the MoE routing-bias buffers), optimizer, scheduler step, and the
trainer's state: step, data cursor (global sequences consumed), manifest id and fingerprint,
seed. RNG needs no state: the trainer reseeds from (seed, step, rank) at every step.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

from contract.atomic import write_atomic
from contract.layout import TrainingRun



class TrainingState(Stateful):
    """DCP's application state: model, optimizer, scheduler and a plain dict of trainer state.

    `trainer` is read at save time through `get_trainer()` and handed to `set_trainer(dict)` at
    load time, so the trainer owns what it stores (step, data cursor, manifest identity).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, get_trainer, set_trainer):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.get_trainer, self.set_trainer = get_trainer, set_trainer

    def state_dict(self) -> dict[str, Any]:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {
            "model": model_sd,
            "optim": optim_sd,
            "scheduler": self.scheduler.state_dict(),
            "trainer": self.get_trainer(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.set_trainer(state["trainer"])


class CheckpointManager:
    """When to save, where, and which checkpoint is the latest complete one.

    root        the checkpoints folder (shared by every rank: a shared filesystem on clusters)
    interval_s  save when this many seconds passed since the last save (or the start)
    every_steps also save every N steps (None: wall clock only)
    keep        complete checkpoints kept after a save (None: keep all, e.g. when Ray Train's
                CheckpointConfig prunes them)
    group       the training ranks' process group (None: the default group or no distribution)
    """

    def __init__(
        self,
        root: str | Path,
        interval_s: float = 600.0,
        every_steps: int | None = None,
        keep: int | None = 2,
        group: dist.ProcessGroup | None = None,
    ):
        self.root = Path(root)
        self.interval_s, self.every_steps, self.keep, self.group = interval_s, every_steps, keep, group
        self.last_save = time.monotonic()
        self.seconds_saving = 0.0

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group) if dist.is_initialized() else 0

    def due(self, step: int, final: bool) -> bool:
        """Whether to save after `step` (this rank's clock: callers broadcast rank 0's answer)."""
        if final:
            return True
        if self.every_steps is not None and step % self.every_steps == 0:
            return True
        return time.monotonic() - self.last_save >= self.interval_s

    def path_for(self, step: int) -> Path:
        return self.root / f"step_{step:08d}"

    def save(self, step: int, state: TrainingState, meta: dict[str, Any] | None = None) -> Path:
        """Collective over `group`: write the state, then rank 0 writes meta.json and prunes."""
        start = time.monotonic()
        path = self.path_for(step)
        if self.rank == 0:
            if path.exists():  # a partial save from a crashed attempt at this very step
                shutil.rmtree(path)
            path.mkdir(parents=True)
        self._barrier()
        with _single_process_ok():
            dcp.save({"app": state}, checkpoint_id=str(path), process_group=self.group, no_dist=not dist.is_initialized())
        if self.rank == 0:
            record = {"step": step, "saved_at": time.time(), **(meta or {})}
            # Written last and atomically: a step folder without it is an incomplete save.
            write_atomic(path / TrainingRun.CHECKPOINT_META, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
            self._prune()
        self._barrier()
        self.last_save = time.monotonic()
        self.seconds_saving += self.last_save - start
        return path

    def latest(self) -> Path | None:
        """The complete checkpoint with the highest step under root, or None."""
        complete = self.complete()
        return complete[-1] if complete else None

    def complete(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("step_*") if (p / TrainingRun.CHECKPOINT_META).is_file())

    def load(self, path: str | Path, state: TrainingState) -> dict[str, Any]:
        """Collective: load `path` into `state` (resharding to this layout); returns meta.json."""
        path = Path(path)
        meta = json.loads((path / TrainingRun.CHECKPOINT_META).read_text())
        with _single_process_ok():
            dcp.load({"app": state}, checkpoint_id=str(path), process_group=self.group, no_dist=not dist.is_initialized())
        self.last_save = time.monotonic()
        return meta

    def _prune(self) -> None:
        if self.keep is None:
            return
        complete = self.complete()
        for old in complete[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        newest = complete[-1].name if complete else ""
        for partial in self.root.glob("step_*"):  # crashed saves older than the newest complete one
            if not (partial / TrainingRun.CHECKPOINT_META).exists() and partial.name < newest:
                shutil.rmtree(partial, ignore_errors=True)

    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier(group=self.group)


@contextmanager
def _single_process_ok() -> Iterator[None]:
    # DCP warns that it "assumes" a single process even when told so with no_dist=True.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def read_meta(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / TrainingRun.CHECKPOINT_META).read_text())
