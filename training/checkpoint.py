"""Sharded, reshardable checkpoints with torch.distributed.checkpoint (DCP).

    ckpts = CheckpointManager(f"{out}/checkpoints", interval_s=600, every_steps=None, keep=2, group=pg)
    if ckpts.due(step, final):                 # rank 0's answer is the one that counts
        path = ckpts.save(step, state)         # every rank; returns OUT/checkpoints/step_00000120
    ckpts.wait()                               # async_save=True: until meta.json is written
    meta = ckpts.load(ckpts.latest(), state)   # any world size, any (efsdp x ep) layout

A checkpoint is one directory: DCP's per-rank `.distcp` files and `.metadata`, then `meta.json`
(written by rank 0 last, so a directory without it is incomplete and ignored). With
`async_save=True`, `save` returns once the state is copied to CPU memory; DCP writes it from a
background thread and meta.json follows once every rank's files are written (`wait()`).
OUT is a local folder or a store URI (`s3://bucket/run`, see training.checkpoint_storage).
Parameters and optimizer moments are saved as DTensor shards with their global shapes, so DCP
reshards them on load: FSDP over W ranks, experts over ep, or a plain single-process model.

The state holds model (with the MoE routing-bias buffers), optimizer, scheduler step, and the
trainer's state: step, data cursor (global sequences consumed), manifest id and fingerprint,
seed. RNG needs no state: the trainer reseeds from (seed, step, rank) at every step.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

from contract.atomic import write_atomic
from contract.layout import TrainingRun, join
from contract.stores import complete_folders, filesystem_for, read_bytes, sub_folders
from training.checkpoint_storage import storage_reader, storage_writer

# Optimizer state and param-group settings keyed by parameter name ("param_groups.<fqn>.lr"), not
# by group index: pipeline stages hold different groups (a dense-only stage has no router group),
# and one layout's group list need not match another's (torchtitan saves it this way for PP).
STATE_DICT_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


class TrainingState(Stateful):
    """DCP's application state: model, optimizer, scheduler and a plain dict of trainer state.

    `trainer` is read at save time through `get_trainer()` and handed to `set_trainer(dict)` at
    load time, so the trainer owns what it stores (step, data cursor, manifest identity).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, get_trainer, set_trainer):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.get_trainer, self.set_trainer = get_trainer, set_trainer

    def state_dict(self) -> dict[str, Any]:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=STATE_DICT_OPTIONS)
        return {
            "model": model_sd,
            "optim": optim_sd,
            "scheduler": self.scheduler.state_dict(),
            "trainer": self.get_trainer(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                       options=STATE_DICT_OPTIONS)  # fmt: skip
        self.scheduler.load_state_dict(state["scheduler"])
        self.set_trainer(state["trainer"])


class CheckpointManager:
    """When to save, where, and which checkpoint is the latest complete one.

    root        the checkpoints folder: a local path (shared by every rank) or a store URI
                (`s3://bucket/run/checkpoints`: every rank writes its own files there, no
                shared disk needed)
    interval_s  save when this many seconds passed since the last save (or the start)
    every_steps also save every N steps (None: wall clock only)
    keep        complete checkpoints kept after a save (None: keep all, e.g. when Ray Train's
                CheckpointConfig prunes them)
    group       the training ranks' process group (None: the default group or no distribution)
    async_save  write in the background (DCP `async_save`); call `wait()` before reading the
                checkpoint or exiting

    Checkpoints are named by locations (strings): `path_for(120)` is `ROOT/step_00000120`.
    """

    def __init__(
        self,
        root: str | Path,
        interval_s: float = 600.0,
        every_steps: int | None = None,
        keep: int | None = 2,
        group: dist.ProcessGroup | None = None,
        async_save: bool = False,
    ):
        self.root = str(root).rstrip("/")
        self.fs, self.base = filesystem_for(self.root)
        self.interval_s, self.every_steps, self.keep, self.group = interval_s, every_steps, keep, group
        self.async_save = async_save
        self.last_save = time.monotonic()
        self.seconds_saving = 0.0
        self._pending: Future | None = None  # the background save's completion (meta.json, prune)
        self._completer: ThreadPoolExecutor | None = None
        self._writer_group: dist.ProcessGroup | None = None

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

    def path_for(self, step: int) -> str:
        return join(self.root, step_name(step))

    def path_for_name(self, name: str) -> str:
        """The location of the step folder called `name` under root."""
        return join(self.root, name)

    def save(self, step: int, state: TrainingState, meta: dict[str, Any] | None = None) -> str:
        """Collective over `group`: write the state, then rank 0 writes meta.json and prunes.

        Async: returns once the state is staged (copied to CPU: training may change it from
        then on); the previous save is waited for first, so at most one is in flight.
        """
        self.wait()
        start = time.monotonic()
        location, folder = self.path_for(step), join(self.base, step_name(step))
        if self.rank == 0:
            self._delete(folder)  # a partial save from a crashed attempt at this very step
            self.fs.create_dir(folder, recursive=True)
        self._barrier()
        no_dist = not dist.is_initialized()
        if self.async_save:
            with _single_process_ok():
                written = dcp.async_save({"app": state}, storage_writer=storage_writer(location),
                                         process_group=self._background_group(), no_dist=no_dist)  # fmt: skip
            self._pending = self._background().submit(self._complete, written, folder, step, meta)
        else:
            with _single_process_ok():
                dcp.save({"app": state}, storage_writer=storage_writer(location), process_group=self.group,
                         no_dist=no_dist)  # fmt: skip
            self._complete(None, folder, step, meta)
            self._barrier()
        self.last_save = time.monotonic()
        self.seconds_saving += self.last_save - start
        return location

    def wait(self) -> None:
        """Collective: block until the background save, if any, is complete (meta.json written);
        re-raises its error. A no-op for synchronous saves."""
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        start = time.monotonic()
        pending.result()
        self._barrier()
        self.seconds_saving += time.monotonic() - start

    def _complete(self, written: Future | None, folder: str, step: int, meta: dict[str, Any] | None) -> None:
        if written is not None:
            # DCP's rank 0 writes .metadata after gathering every rank's write results, and every
            # rank's future resolves after that: all files of the checkpoint are durable now.
            written.result()
        if self.rank == 0:
            record = {"step": step, "saved_at": time.time(), **(meta or {})}
            # Written last and whole: a step folder without it is an incomplete save.
            data = (json.dumps(record, indent=1, sort_keys=True) + "\n").encode()
            write_atomic(join(folder, TrainingRun.CHECKPOINT_META), data, self.fs)
            self._prune()

    def _background(self) -> ThreadPoolExecutor:
        if self._completer is None:
            self._completer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        return self._completer

    def _background_group(self) -> dist.ProcessGroup | None:
        """A gloo group of the training ranks for the background save's collectives.

        NOTE: not `group`: collectives must reach a group in the same order on every rank,
        and training's own (FSDP, EP) would interleave with the save thread's differently on
        each. gloo because DCP's background save exchanges CPU objects (plans, metadata).
        """
        if not dist.is_initialized():
            return None
        if self._writer_group is None:
            ranks = dist.get_process_group_ranks(self.group or dist.group.WORLD)
            # Local synchronisation: only these ranks call it (spares never save).
            self._writer_group = dist.new_group(ranks, backend="gloo", use_local_synchronization=True)
        return self._writer_group

    def latest(self) -> str | None:
        """The complete checkpoint with the highest step under root, or None."""
        complete = self.complete()
        return complete[-1] if complete else None

    def complete(self) -> list[str]:
        """Locations of the complete checkpoints (meta.json present), oldest first."""
        return [join(self.root, name) for name in self._step_folders(complete=True)]

    def load(self, location: str | Path, state: TrainingState) -> dict[str, Any]:
        """Collective: load `location` into `state` (resharding to this layout); returns meta.json."""
        meta = read_meta(location)
        with _single_process_ok():
            dcp.load({"app": state}, storage_reader=storage_reader(str(location)), process_group=self.group,
                     no_dist=not dist.is_initialized())  # fmt: skip
        self.last_save = time.monotonic()
        return meta

    def _step_folders(self, complete: bool) -> list[str]:
        """Names of the step_* folders under root (only those with meta.json when `complete`)."""
        if complete:
            return complete_folders(self.fs, self.base, TrainingRun.CHECKPOINT_STEP, TrainingRun.CHECKPOINT_META)
        return sub_folders(self.fs, self.base, TrainingRun.CHECKPOINT_STEP)

    def _prune(self) -> None:
        if self.keep is None:
            return
        complete = self._step_folders(complete=True)
        for old in complete[: -self.keep]:
            self._delete(join(self.base, old))
        newest = complete[-1] if complete else ""
        for partial in sorted(set(self._step_folders(complete=False)) - set(complete)):
            if partial < newest:  # crashed saves older than the newest complete one
                self._delete(join(self.base, partial))

    def _delete(self, folder: str) -> None:
        try:
            self.fs.delete_dir(folder)
        except FileNotFoundError:
            pass

    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier(group=self.group)


def step_name(step: int) -> str:
    return f"{TrainingRun.CHECKPOINT_STEP}{step:08d}"


@contextmanager
def _single_process_ok() -> Iterator[None]:
    # DCP warns that it "assumes" a single process even when told so with no_dist=True.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def read_meta(location: str | Path) -> dict[str, Any]:
    """A checkpoint's meta.json (a local step folder or one in a store)."""
    fs, folder = filesystem_for(str(location))
    return json.loads(read_bytes(fs, join(folder, TrainingRun.CHECKPOINT_META)))
