"""Training jobs: a `flywheel train` run on a registered manifest, in a Ray actor.

    POST /training-jobs --> row `queued` (config validated by training.train_config) --> detached
                            named actor `flywheel-train-<id>` (namespace "flywheel")
    actor  --> writes `running`, runs `train_command(OUT/train_config.json, local=True)`: one
               process inside the actor, writing OUT/metrics.jsonl and OUT/checkpoints/ --> then
               `succeeded` | `failed` itself
    GET    --> state from the row; step, loss, tokens/s, loss curve and checkpoints from OUT's files

Same lifecycle as curation jobs (api/jobs.py): conditional transitions, cancel kills the actor,
the reaper fails a `running` job whose actor is gone and restarts a `queued` one never started.
NOTE: the actor asks Ray for no CPU (`num_cpus=0`, like the curation actor) and trains in its own
process: a run sized for this service (tiny/small presets, CPU). Multi-worker runs on GPUs are
`flywheel train` on Ray Train.
"""

from __future__ import annotations

import json
import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from api.db import Database
from api.jobs import JobRunner, describe, transition
from api.models import TrainingJob, utcnow

log = logging.getLogger(__name__)

CONFIG_NAME = "train_config.json"
# The trainer's file layout (training.trainer.METRICS_NAME, training.checkpoint.META_NAME),
# spelled out here so that reading progress in the web process does not import torch.
METRICS_NAME = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_META = "meta.json"
TAIL_BYTES = 65536  # a metrics line is < 1 KB: the tail holds the last whole ones


def execute_training_job(database_url: str, job_id: str) -> str:
    """Run one queued training job to its end, writing every state change; returns the final state.

    Runs inside the job's Ray actor (tests may call it directly).
    """
    from training.cli import train_command

    db = Database(database_url)
    try:
        with db.session() as s:
            if not transition(s, job_id, ("queued",), "running", table=TrainingJob, started_at=utcnow(),
                              phase="training"):
                return s.scalar(select(TrainingJob.state).where(TrainingJob.id == job_id)) or "missing"
            job = s.get(TrainingJob, job_id)
            config, out_dir = job.config, Path(job.out_uri)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            config_path = out_dir / CONFIG_NAME
            config_path.write_text(json.dumps(config, indent=2) + "\n")
            train_command(config_path, local=True)
        except Exception as e:  # the job's verdict, not the actor's crash
            log.error("training job %s failed:\n%s", job_id, traceback.format_exc())
            with db.session() as s:
                transition(s, job_id, ("running",), "failed", table=TrainingJob, error=describe(e),
                           finished_at=utcnow(), phase=None)
            return "failed"
        with db.session() as s:
            if not transition(s, job_id, ("running",), "succeeded", table=TrainingJob, finished_at=utcnow(),
                              phase="done"):
                return s.scalar(select(TrainingJob.state).where(TrainingJob.id == job_id)) or "missing"
        return "succeeded"
    finally:
        db.dispose()


class TrainingJobRunner(JobRunner):
    """Start, cancel, check and reap training actors (the curation runner over `training_jobs`)."""

    table = TrainingJob
    actor_prefix = "flywheel-train-"
    execute = staticmethod(execute_training_job)


# --- progress, read from the run's folder ------------------------------------------------------

@dataclass
class TrainingProgress:
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl, one per step
    checkpoints: list[str] = field(default_factory=list)

    @property
    def last(self) -> dict[str, Any]:
        return self.records[-1] if self.records else {}


def _parse_lines(lines: list[str]) -> list[dict[str, Any]]:
    """JSON objects of `lines`, less a final one the trainer is still writing (no newline yet)."""
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def read_progress(out_dir: str | Path, *, with_curve: bool = True) -> TrainingProgress:
    """What the trainer has written so far under `out_dir` (nothing yet: empty progress).

    with_curve=False reads only the last metrics line and no checkpoints (for listings).
    """
    out = Path(out_dir)
    metrics = out / METRICS_NAME
    if not metrics.is_file():
        return TrainingProgress()
    if not with_curve:
        with open(metrics, "rb") as f:
            start = max(0, f.seek(0, 2) - TAIL_BYTES)
            f.seek(start)
            lines = f.read().decode(errors="replace").split("\n")
        lines = lines[1:] if start else lines  # the first line read is cut when we started mid-file
        return TrainingProgress(records=_parse_lines([ln for ln in lines if ln.strip()])[-1:])
    text = metrics.read_text()
    lines = [ln for ln in text.split("\n") if ln.strip()]
    checkpoints = sorted(p.name for p in (out / CHECKPOINTS_DIR).glob("step_*") if (p / CHECKPOINT_META).is_file())
    return TrainingProgress(records=_parse_lines(lines), checkpoints=checkpoints)


def thin(points: list[dict[str, Any]], max_points: int) -> list[dict[str, Any]]:
    """At most `max_points` evenly spaced points, the last one always kept."""
    if len(points) <= max_points:
        return points
    stride = -(-len(points) // max_points)
    kept = points[::stride]
    if kept[-1] is not points[-1]:
        kept = kept[:-1] + [points[-1]] if len(kept) == max_points else kept + [points[-1]]
    return kept
