"""/v1/documents/{job}/{doc_id}/why: which stage dropped a document, and why (or that it was kept)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path

from api.auth import require_read
from api.deps import SessionDep
from api.ids import JOB_ID
from api.results import explain
from api.routes.jobs import finished_job
from api.schemas import Problem, Why

router = APIRouter(tags=["documents"])


# `:path` because generated ids (`<file>@<offset>`) may contain slashes. The id is only ever a
# filter value on Parquet columns, never a file name.
@router.get("/documents/{job_id}/{doc_id:path}/why", response_model=Why, dependencies=[Depends(require_read)],
            responses={404: {"model": Problem}, 409: {"model": Problem}})
def why(job_id: Annotated[str, Path(pattern=JOB_ID)], doc_id: Annotated[str, Path(min_length=1, max_length=4096)],
        session: SessionDep) -> dict:
    job = finished_job(session, job_id)
    found = explain(job.output_uri, doc_id)
    if found is None:
        raise HTTPException(404, detail=f"job {job_id} never saw a document {doc_id!r}")
    found["doc_id"] = found.pop("id")
    return {"job_id": job_id, **found}
