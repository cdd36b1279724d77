"""/v1/jobs: submit a curation config over corpora, follow it, cancel it, read its results."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import require_admin, require_read
from api.deps import JSON_BODY_LIMIT, MAX_OFFSET, ServicesDep, SessionDep, newest_first_page
from api.ids import JOB_ID, new_id
from api.locations import LocationError, LocationForbidden
from api.models import Corpus, Job, JobStage
from api.results import read_stats, rejects_page
from api.schemas import JobCreate, JobList, JobOut, Problem, RejectsPage
from api.stage_paths import check_stage_paths
from curation.config import ConfigError, parse_config

router = APIRouter(tags=["jobs"])
SERVICE_KEYS = ("inputs", "output")

JobIdPath = Annotated[str, Path(pattern=JOB_ID)]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def job_out(job: Job) -> JobOut:
    recipe = {k: v for k, v in job.config.items() if k not in SERVICE_KEYS}
    done = sum(s.state == "done" for s in job.stages)
    return JobOut.model_validate({
        **{k: getattr(job, k) for k in ("id", "state", "corpus_ids", "phase", "error", "docs_in", "docs_out",
                                        "manifest_id", "created_at", "started_at", "finished_at")},
        "config": recipe, "stages": job.stages,
        "progress": 1.0 if job.state == "succeeded" else round(done / max(1, len(job.stages)), 4),
    })


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(404, detail=f"no job {job_id}")
    return job


def finished_job(session: Session, job_id: str) -> Job:
    job = get_job(session, job_id)
    if job.state != "succeeded":
        raise HTTPException(409, detail=f"job {job_id} is {job.state}: results exist once it has succeeded")
    return job


@router.post("/jobs", status_code=201, response_model=JobOut, dependencies=[Depends(require_admin)],
             max_body_size=JSON_BODY_LIMIT,
             responses={403: {"model": Problem}, 413: {"model": Problem}, 422: {"model": Problem}})
def create_job(body: JobCreate, services: ServicesDep, session: SessionDep) -> JobOut:
    """Validate the config (unknown stage or parameter: 422 with one line), then run it on Ray.
    Files its stages read (models, tokenizers, earlier runs) must lie inside the allowed roots or
    the service's storage (403 outside, 422 for a URI with options).

    The answer comes at once with state `queued`; poll `GET /v1/jobs/{id}`."""
    try:
        corpus_ids = body.validated_ids()
    except ValueError as e:
        raise HTTPException(422, detail=str(e)) from None
    given = [k for k in SERVICE_KEYS if k in body.config]
    if given:
        raise HTTPException(422, detail=f"config: {' and '.join(given)} are set by the service; name corpora in corpus_ids")
    corpora = {c.id: c for c in session.scalars(select(Corpus).where(Corpus.id.in_(corpus_ids)))}
    missing = [c for c in corpus_ids if c not in corpora]
    if missing:
        raise HTTPException(422, detail=f"corpus_ids: no corpus {', '.join(missing)}")
    invalid = [c for c in corpus_ids if corpora[c].state == "invalid"]
    if invalid:
        raise HTTPException(422, detail=f"corpus_ids: corpus {invalid[0]} is invalid ({corpora[invalid[0]].error})")
    job_id = new_id("job")
    output_uri = services.storage.uri(f"jobs/{job_id}")
    inputs = [corpora[c].pipeline_input() for c in corpus_ids]
    try:
        config = parse_config(body.config, inputs=inputs, output=output_uri)
    except ConfigError as e:
        raise HTTPException(422, detail=str(e)) from None
    try:
        check_stage_paths(config.stages, services.read_roots, "config.stages")
    except (LocationError, LocationForbidden) as e:
        raise HTTPException(e.status, detail=str(e)) from None
    steps = ["read"] + [s.name for s in config.stages]
    job = Job(id=job_id, state="queued", corpus_ids=corpus_ids, config=config.dump(), output_uri=output_uri,
              phase="queued", stages=[JobStage(position=i, name=n, state="pending") for i, n in enumerate(steps)])
    session.add(job)
    session.commit()
    services.runner.start_or_fail(job_id)
    session.refresh(job)
    return job_out(job)


@router.get("/jobs", response_model=JobList, dependencies=[Depends(require_read)])
def list_jobs(session: SessionDep, state: Annotated[JobState | None, Query()] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100,
              offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> dict:
    where = [Job.state == state] if state else []
    return newest_first_page(session, Job, limit, offset, *where, out=job_out)


@router.get("/jobs/{job_id}", response_model=JobOut, dependencies=[Depends(require_read)],
            responses={404: {"model": Problem}})
def read_job(job_id: JobIdPath, session: SessionDep) -> JobOut:
    """State, per-stage progress, error, and `manifest_id` (registered by the job's actor in the
    transaction that made it succeeded). A read: it writes nothing."""
    return job_out(get_job(session, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, dependencies=[Depends(require_admin)],
             max_body_size=JSON_BODY_LIMIT, responses={404: {"model": Problem}, 409: {"model": Problem}})
def cancel_job(job_id: JobIdPath, services: ServicesDep, session: SessionDep) -> JobOut:
    """Mark the job cancelled and kill its Ray actor (and with it the tasks it started)."""
    job = get_job(session, job_id)
    if not services.runner.cancel(job_id):
        session.refresh(job)
        raise HTTPException(409, detail=f"job {job_id} already {job.state}")
    session.refresh(job)
    return job_out(job)


@router.get("/jobs/{job_id}/stats", dependencies=[Depends(require_read)],
            responses={404: {"model": Problem}, 409: {"model": Problem}})
def job_stats(job_id: JobIdPath, session: SessionDep) -> dict[str, Any]:
    """The run's stats.json: per-stage documents and tokens in/out, dropped by reason, seconds."""
    job = finished_job(session, job_id)
    stats = read_stats(job.output_uri)
    if stats is None:
        raise HTTPException(404, detail=f"job {job_id} has no stats.json")
    return stats


@router.get("/jobs/{job_id}/rejects", response_model=RejectsPage, dependencies=[Depends(require_read)],
            responses={404: {"model": Problem}, 409: {"model": Problem}})
def job_rejects(
    job_id: JobIdPath, session: SessionDep,
    stage: Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_]{0,63}$")] = None,
    reason: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    include_text: bool = False,
) -> dict:
    """Dropped documents, paged, filtered by stage and reason; `text` only with include_text=true,
    cut to its first 4096 characters as in `/why`."""
    job = finished_job(session, job_id)
    total, items = rejects_page(job.output_uri, stage=stage, reason=reason, limit=limit, offset=offset,
                                include_text=include_text)
    return {"job_id": job_id, "total": total, "limit": limit, "offset": offset, "items": items}
