"""/v1/training-jobs: train a model on a registered manifest, or post-train one (`kind`, see
api/posttrain_jobs.py); follow its curves, cancel it, read a red-team job's report."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.auth import require_admin, require_read
from api.deps import JSON_BODY_LIMIT, MAX_OFFSET, ServicesDep, SessionDep, newest_first_page
from api.errors import one_line
from api.ids import TRAINING_JOB_ID, new_id
from api.manifests import ManifestInvalid, load_manifest
from api.models import Manifest, TrainingJob
from api.posttrain_jobs import (
    POSTTRAIN_KINDS,
    allowed_local_input,
    failure_rates,
    metric_curves,
    read_redteam_report,
    read_redteam_responses,
    validated_posttrain_config,
)
from api.run_files import thin
from api.schemas import (
    Problem,
    RedTeamReport,
    RedTeamResponses,
    TrainingJobCreate,
    TrainingJobList,
    TrainingJobOut,
    TrainingJobSummary,
    TrainingKind,
)
from api.training_jobs import eval_curve, read_progress
from training.train_config import TrainConfig

router = APIRouter(tags=["training"])
# TrainConfig fields the service sets: where the data is, where the run writes, and one process.
SERVICE_KEYS = ("manifest", "out_dir", "cache_dir", "workers", "min_workers")

TrainingJobIdPath = Annotated[str, Path(pattern=TRAINING_JOB_ID)]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def _summary_fields(job: TrainingJob, last: dict[str, Any]) -> dict[str, Any]:
    return {
        **{k: getattr(job, k) for k in ("id", "kind", "manifest_id", "state", "phase", "error", "created_at",
                                        "started_at", "finished_at")},
        "config": {k: v for k, v in job.config.items() if k not in SERVICE_KEYS},
        "steps": job.config.get("steps"),
        "step": last.get("step"), "loss": last.get("loss"), "tokens_per_s": last.get("tokens_per_s"),
    }


def training_job_summary(job: TrainingJob) -> TrainingJobSummary:
    last = read_progress(job.out_uri, with_curve=False).last
    return TrainingJobSummary.model_validate(_summary_fields(job, last))


def training_job_out(job: TrainingJob, max_points: int = 1000) -> TrainingJobOut:
    progress = read_progress(job.out_uri)
    curve = [{"step": r["step"], "loss": r["loss"]} for r in progress.records if "loss" in r]  # ppo logs none
    return TrainingJobOut.model_validate({**_summary_fields(job, progress.last), "loss_curve": thin(curve, max_points),
                                          "checkpoints": progress.checkpoints,
                                          "eval_curve": thin(eval_curve(progress.evals), max_points),
                                          "curves": metric_curves(progress.records, progress.evals, max_points)})


def get_training_job(session: Session, job_id: str) -> TrainingJob:
    job = session.get(TrainingJob, job_id)
    if job is None:
        raise HTTPException(404, detail=f"no training job {job_id}")
    return job


def validated_eval_files(files: list[str], roots: tuple[str, ...]) -> list[str]:
    """The eval files as real local paths, each inside an allowed root or the service's storage
    (the rule corpora registered by URI follow): 403 outside them, 422 if not a local file."""
    return [allowed_local_input(uri, roots, "config.eval_files") for uri in files]


def validated_config(body: TrainingJobCreate, manifest: Manifest, out_dir: str,
                     roots: tuple[str, ...] = ()) -> dict[str, Any]:
    """The TrainConfig of the run as JSON, checked as far as possible before anything starts:
    its fields, the model it builds for the manifest's vocabulary, and its eval files (which
    must lie under `roots`). 422 (403 for a file outside the roots) with one line if not."""
    given = [k for k in SERVICE_KEYS if k in body.config]
    if given:
        raise HTTPException(422, detail=f"config: {', '.join(given)} are set by the service")
    try:
        cfg = TrainConfig.model_validate({**body.config, "manifest": manifest.uri, "out_dir": out_dir, "workers": 1})
    except ValidationError as e:
        raise HTTPException(422, detail=f"config: {one_line(e.errors())}") from None
    except TypeError as e:  # TrainConfig's before-validator meets e.g. `"steps": [1]` (not a ValidationError)
        raise HTTPException(422, detail=f"config: {e}") from None
    if cfg.preset == "moe-67b":
        raise HTTPException(422, detail="config: preset moe-67b is for planning only (flywheel train --dry-run)")
    if cfg.eval_files:
        cfg = cfg.model_copy(update={"eval_files": validated_eval_files(cfg.eval_files, roots)})
    try:
        vocab_size = load_manifest(manifest.uri, manifest.sha256).tokenizer.vocab_size
    except (FileNotFoundError, ManifestInvalid) as e:
        raise HTTPException(410, detail=f"manifest {manifest.id}: {e}") from None
    try:
        cfg.build_model_config(vocab_size)
    except ValidationError as e:
        raise HTTPException(422, detail=f"config.model: {one_line(e.errors())}") from None
    except (ValueError, TypeError) as e:
        raise HTTPException(422, detail=f"config.model: {e}") from None
    return cfg.model_dump(mode="json")


@router.post("/training-jobs", status_code=201, response_model=TrainingJobOut, dependencies=[Depends(require_admin)],
             max_body_size=JSON_BODY_LIMIT,
             responses={403: {"model": Problem}, 404: {"model": Problem}, 409: {"model": Problem},
                        410: {"model": Problem}, 413: {"model": Problem}, 422: {"model": Problem},
                        501: {"model": Problem}})
def create_training_job(body: TrainingJobCreate, services: ServicesDep, session: SessionDep) -> TrainingJobOut:
    """Validate the config (against the manifest for pretraining, the starting job and the data
    files for post-training; 422 with one line), then run the kind's command on Ray. 501: the kind
    is not in this build.

    The answer comes at once with state `queued`; poll `GET /v1/training-jobs/{id}`."""
    job_id = new_id("trn")
    out_uri = services.storage.uri(f"training/{job_id}")  # local or in the store: checkpoints go either way
    if body.kind in POSTTRAIN_KINDS:
        if body.manifest_id is not None:
            raise HTTPException(422, detail=f"manifest_id: {body.kind} starts from init_from_job's checkpoint "
                                            "(its manifest comes with it)")
        config, manifest_id = validated_posttrain_config(
            session, body.kind, body.config, init_from_job=body.init_from_job, reward_from_job=body.reward_from_job,
            out_dir=out_uri, roots=services.read_roots)
    else:
        if body.manifest_id is None:
            raise HTTPException(422, detail="manifest_id: pretraining needs a manifest")
        if body.init_from_job is not None or body.reward_from_job is not None:
            raise HTTPException(422, detail="init_from_job: pretraining starts from a manifest, not a job "
                                            "(post-training kinds start from a job)")
        manifest = session.get(Manifest, body.manifest_id)
        if manifest is None:
            raise HTTPException(404, detail=f"no manifest {body.manifest_id}")
        config, manifest_id = validated_config(body, manifest, out_uri, services.read_roots), manifest.id
    job = TrainingJob(id=job_id, kind=body.kind, manifest_id=manifest_id, state="queued", config=config,
                      out_uri=out_uri, phase="queued")
    session.add(job)
    session.commit()
    services.training_runner.start_or_fail(job_id)
    session.refresh(job)
    return training_job_out(job)


@router.get("/training-jobs", response_model=TrainingJobList, dependencies=[Depends(require_read)])
def list_training_jobs(session: SessionDep, state: Annotated[JobState | None, Query()] = None,
                       kind: Annotated[TrainingKind | None, Query()] = None,
                       limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                       offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> dict:
    where = ([TrainingJob.state == state] if state else []) + ([TrainingJob.kind == kind] if kind else [])
    return newest_first_page(session, TrainingJob, limit, offset, *where, out=training_job_summary)


@router.get("/training-jobs/{job_id}", response_model=TrainingJobOut, dependencies=[Depends(require_read)],
            responses={404: {"model": Problem}})
def read_training_job(job_id: TrainingJobIdPath, session: SessionDep,
                      max_points: Annotated[int, Query(ge=2, le=100_000)] = 1000) -> TrainingJobOut:
    """State; step, loss and tokens/s of the latest step; the loss curve; complete checkpoints."""
    return training_job_out(get_training_job(session, job_id), max_points)


@router.post("/training-jobs/{job_id}/cancel", response_model=TrainingJobOut, dependencies=[Depends(require_admin)],
             max_body_size=JSON_BODY_LIMIT, responses={404: {"model": Problem}, 409: {"model": Problem}})
def cancel_training_job(job_id: TrainingJobIdPath, services: ServicesDep, session: SessionDep) -> TrainingJobOut:
    """Mark the job cancelled and kill its Ray actor (its checkpoints so far stay on disk)."""
    job = get_training_job(session, job_id)
    if not services.training_runner.cancel(job_id):
        session.refresh(job)
        raise HTTPException(409, detail=f"training job {job_id} already {job.state}")
    session.refresh(job)
    return training_job_out(job)


# --- red-team reports ----------------------------------------------------------------------------

def get_redteam_job(session: Session, job_id: str) -> TrainingJob:
    job = get_training_job(session, job_id)
    if job.kind != "redteam":
        raise HTTPException(404, detail=f"training job {job_id} is a {job.kind} job: no red-team report")
    return job


@router.get("/training-jobs/{job_id}/redteam", response_model=RedTeamReport, dependencies=[Depends(require_read)],
            responses={404: {"model": Problem}, 409: {"model": Problem}})
def read_redteam(job_id: TrainingJobIdPath, session: SessionDep) -> RedTeamReport:
    """A red-team job's report: its summary as written, and the failure rate per category
    (409 while the report is not written yet)."""
    job = get_redteam_job(session, job_id)
    report = read_redteam_report(job.out_uri)
    if report is None:
        raise HTTPException(409, detail=f"training job {job_id} is {job.state}: no report yet")
    rates = [{"name": k, "failure_rate": v} for k, v in failure_rates(report).items()]
    return RedTeamReport(job_id=job_id, report=report, failure_rates=rates)


@router.get("/training-jobs/{job_id}/redteam/responses", response_model=RedTeamResponses,
            dependencies=[Depends(require_read)], responses={404: {"model": Problem}})
def read_redteam_responses_page(job_id: TrainingJobIdPath, session: SessionDep,
                                category: Annotated[str | None, Query(max_length=200)] = None,
                                limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                                offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> RedTeamResponses:
    """One page of the per-prompt lines (prompt, response, category, verdict), optionally one category's."""
    job = get_redteam_job(session, job_id)
    return RedTeamResponses(job_id=job_id, **read_redteam_responses(job.out_uri, limit, offset, category))
