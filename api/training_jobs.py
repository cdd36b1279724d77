"""Training jobs: a `flywheel train` run on a registered manifest, in a Ray actor.

    POST /training-jobs --> row `queued` (config validated by training.train_config) --> detached
                            named actor `flywheel-train-<id>` (namespace "flywheel")
    actor  --> writes `running`, runs `train_command(OUT/train_config.json, local=True)`: one
               process inside the actor, writing OUT/metrics.jsonl and OUT/checkpoints/ --> then
               `succeeded` | `failed` itself
    GET    --> state from the row; step, loss, tokens/s, loss curve, eval curve (OUT/eval.jsonl, when
               the config has eval_files) and checkpoints from OUT's files

Same lifecycle as curation jobs (api/jobs.py): conditional transitions, cancel kills the actor,
the reaper fails a `running` job whose actor is gone and restarts a `queued` one never started.
NOTE: the actor asks Ray for no CPU (`num_cpus=0`, like the curation actor) and trains in its own
process: a run sized for this service (tiny/small presets, CPU). Multi-worker runs on GPUs are
`flywheel train` on Ray Train.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.db import Database
from api.jobs import JobRunner, run_job
from api.models import TrainingJob
from api.run_files import finite
from contract.jsonl import parse_jsonl_lines, read_jsonl
from contract.layout import TrainingRun  # the trainer's layout, without importing torch

TAIL_BYTES = 65536  # a metrics line is < 1 KB: the tail holds the last whole ones


def execute_training_job(database_url: str, job_id: str) -> str:
    """Run one queued training job to its end, writing every state change; returns the final state.

    Runs inside the job's Ray actor (tests may call it directly).
    """

    def train(db: Database, job: TrainingJob) -> None:
        from training.cli import train_command  # torch: runs in the job's Ray actor, never in the web process

        out_dir = Path(job.out_uri)
        out_dir.mkdir(parents=True, exist_ok=True)
        config_path = out_dir / TrainingRun.CONFIG
        config_path.write_text(json.dumps(job.config, indent=2) + "\n")
        train_command(config_path, local=True)

    return run_job(database_url, job_id, TrainingJob, train, phase="training")


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
    evals: list[dict[str, Any]] = field(default_factory=list)  # eval.jsonl, one per evaluation

    @property
    def last(self) -> dict[str, Any]:
        return self.records[-1] if self.records else {}


def read_progress(out_dir: str | Path, *, with_curve: bool = True) -> TrainingProgress:
    """What the trainer has written so far under `out_dir` (nothing yet: empty progress).

    with_curve=False reads only the last metrics line, no checkpoints and no evaluations (for listings).
    """
    out = Path(out_dir)
    metrics = out / TrainingRun.METRICS
    if not metrics.is_file():
        return TrainingProgress()
    if not with_curve:
        with open(metrics, "rb") as f:
            start = max(0, f.seek(0, 2) - TAIL_BYTES)
            f.seek(start)
            lines = f.read().decode(errors="replace").split("\n")
        lines = lines[1:] if start else lines  # the first line read is cut when we started mid-file
        return TrainingProgress(records=parse_jsonl_lines([ln for ln in lines if ln.strip()])[-1:])
    checkpoints = sorted(p.name for p in (out / TrainingRun.CHECKPOINTS).glob("step_*")
                         if (p / TrainingRun.CHECKPOINT_META).is_file())
    return TrainingProgress(records=read_jsonl(metrics), checkpoints=checkpoints, evals=read_jsonl(out / TrainingRun.EVAL))


def eval_curve(evals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """eval.jsonl's records as curve points: overall loss and perplexity, loss per domain (None
    where not finite: a diverged run still answers in JSON)."""
    return [{"step": r["step"], "tokens": r["tokens"], "loss": finite(r["overall"]["loss"]),
             "perplexity": finite(r["overall"]["perplexity"]),
             "domains": {name: finite(d["loss"]) for name, d in r["domains"].items()}} for r in evals]
