"""/v1/manifests: token-shard manifests of finished jobs, and their files over HTTP Range."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from api.auth import require_read
from api.deps import MAX_OFFSET, ServicesDep, SessionDep, base_url, newest_first_page
from api.ids import MANIFEST_ID
from api.manifests import ManifestInvalid, load_manifest, locate, shard_file, with_urls
from api.models import Manifest
from api.ranges import serve_file
from api.schemas import ManifestList, ManifestSummary, Problem
from contract.manifest import Manifest as ManifestDoc

router = APIRouter(tags=["manifests"])

ManifestIdPath = Annotated[str, Path(pattern=MANIFEST_ID)]
FILE_NAME = r"^[A-Za-z0-9_\-][A-Za-z0-9._\-]{0,254}$"

FILE_RESPONSES = {
    200: {"content": {"application/octet-stream": {}}, "description": "the whole file"},
    206: {"content": {"application/octet-stream": {}}, "description": "one byte range (Range: bytes=a-b)"},
    304: {"description": "If-None-Match named the ETag (the file's sha256)"},
    404: {"model": Problem},
    410: {"model": Problem, "description": "the manifest or this file is gone from the store"},
    416: {"description": "the range starts past the end; Content-Range: bytes */size"},
}


def manifest_row(session: Session, manifest_id: str) -> Manifest:
    row = session.get(Manifest, manifest_id)
    if row is None:
        raise HTTPException(404, detail=f"no manifest {manifest_id}")
    return row


def manifest_doc(row: Manifest) -> ManifestDoc:
    try:
        return load_manifest(row.uri, row.sha256)
    except (FileNotFoundError, ManifestInvalid) as e:
        raise HTTPException(410, detail=f"manifest {row.id}: {e}") from None


def summary(row: Manifest, base: str) -> ManifestSummary:
    return ManifestSummary.model_validate({
        **{k: getattr(row, k) for k in ("id", "job_id", "dataset_id", "shards", "tokens", "bytes",
                                        "tokenizer_sha256", "created_at")},
        "url": f"{base}/v1/manifests/{row.id}"})


@router.get("/manifests", response_model=ManifestList, dependencies=[Depends(require_read)])
def list_manifests(request: Request, session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                   offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> dict:
    base = base_url(request)
    return newest_first_page(session, Manifest, limit, offset, out=lambda r: summary(r, base))


@router.get("/manifests/{manifest_id}", response_model=ManifestDoc, dependencies=[Depends(require_read)],
            responses={404: {"model": Problem}, 410: {"model": Problem}})
def get_manifest(manifest_id: ManifestIdPath, request: Request, session: SessionDep) -> ManifestDoc:
    """The manifest (see contract/manifest.schema.json) with absolute `url`/`index_url` on every
    shard and `url` on the tokenizer, pointing at this service: a training client can use it as is."""
    row = manifest_row(session, manifest_id)
    return with_urls(manifest_doc(row), base_url(request), row.id)


@router.get("/manifests/{manifest_id}/shards/{name}", dependencies=[Depends(require_read)],
            responses=FILE_RESPONSES, response_class=Response)
@router.head("/manifests/{manifest_id}/shards/{name}", dependencies=[Depends(require_read)],
             response_class=Response, operation_id="head_shard")
def get_shard(manifest_id: ManifestIdPath, name: Annotated[str, Path(pattern=FILE_NAME)], request: Request,
              session: SessionDep, services: ServicesDep) -> Response:
    """A shard's `.bin` or `.idx`, by file name. ETag is its sha256 from the manifest."""
    row = manifest_row(session, manifest_id)
    doc = manifest_doc(row)
    served = shard_file(doc, row.uri, name)
    if served is None:
        raise HTTPException(404, detail=f"manifest {manifest_id} lists no file {name!r}")
    fs, _ = locate(row.uri)
    return serve_file(request, fs, served.path, size=served.size, sha256=served.sha256,
                      media_type=served.media_type, on_bytes=services.metrics.bytes_served.inc)
