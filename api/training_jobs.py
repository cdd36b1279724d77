"""Training jobs: a `flywheel train` run on a registered manifest, or a post-training command
(`kind`: sft, reward_model, dpo, ppo, redteam; api/posttrain_jobs.py), in a Ray actor.

    POST /training-jobs --> row `queued` (config validated by training.train_config) --> detached
                            named actor `flywheel-train-<id>` (namespace "flywheel")
    actor  --> writes `running`, runs the kind's command (`train_command(OUT/train_config.json, local=True)`): one
               process inside the actor, writing OUT/metrics.jsonl and OUT/checkpoints/ (OUT a
               local folder or in the service's S3 storage) --> then
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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.db import Database
from api.jobs import JobRunner, run_job
from api.models import TrainingJob
from api.posttrain_jobs import run_command
from api.run_files import finite
from contract.atomic import json_bytes, write_atomic
from contract.jsonl import parse_jsonl_lines, read_jsonl
from contract.layout import TrainingRun, join  # the trainer's layout, without importing torch
from contract.stores import complete_folders, exists, filesystem_for

TAIL_BYTES = 65536  # a metrics line is < 1 KB: the tail holds the last whole ones


def execute_training_job(database_url: str, job_id: str) -> str:
    """Run one queued training job to its end, writing every state change; returns the final state.

    Runs inside the job's Ray actor (tests may call it directly).
    """

    def train(db: Database, job: TrainingJob) -> None:
        fs, out_dir = filesystem_for(job.out_uri)
        fs.create_dir(out_dir, recursive=True)
        write_atomic(join(out_dir, TrainingRun.CONFIG), json_bytes(job.config), fs)
        # The kind's command (`flywheel train`, `sft`, `reward-model`, ...): torch, imported in this actor only.
        run_command(job.kind, join(job.out_uri, TrainingRun.CONFIG))

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
    """What the trainer has written so far under `out_dir`, a local folder or a store URI
    (nothing yet: empty progress).

    with_curve=False reads only the last metrics line, no checkpoints and no evaluations (for listings).
    """
    fs, out = filesystem_for(str(out_dir))
    metrics = join(out, TrainingRun.METRICS)
    if not exists(fs, metrics):
        return TrainingProgress()
    if not with_curve:
        with fs.open_input_file(metrics) as f:  # a ranged read on a store: the tail only
            start = max(0, f.size() - TAIL_BYTES)
            f.seek(start)
            lines = f.read().decode(errors="replace").split("\n")
        lines = lines[1:] if start else lines  # the first line read is cut when we started mid-file
        return TrainingProgress(records=parse_jsonl_lines([ln for ln in lines if ln.strip()])[-1:])
    checkpoints = complete_folders(fs, join(out, TrainingRun.CHECKPOINTS), TrainingRun.CHECKPOINT_STEP,
                                   TrainingRun.CHECKPOINT_META)
    location = str(out_dir)
    return TrainingProgress(records=read_jsonl(join(location, TrainingRun.METRICS)), checkpoints=checkpoints,
                            evals=read_jsonl(join(location, TrainingRun.EVAL)))


def eval_curve(evals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """eval.jsonl's records as curve points: overall loss and perplexity, loss per domain (None
    where not finite: a diverged run still answers in JSON)."""
    return [{"step": r["step"], "tokens": r["tokens"], "loss": finite(r["overall"]["loss"]),
             "perplexity": finite(r["overall"]["perplexity"]),
             "domains": {name: finite(d["loss"]) for name, d in r["domains"].items()}} for r in evals
            if "overall" in r]  # a language-model evaluation (pretrain, sft); pair evaluations are in `curves`
