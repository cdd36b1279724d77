"""/v1/tokenizers/{sha256}: a tokenizer file, addressed by its content hash (as manifests name it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import Response
from sqlalchemy import select

from api.auth import require_read
from api.deps import ServicesDep, SessionDep
from api.ids import SHA256
from api.manifests import locate, tokenizer_file
from api.models import Manifest
from api.ranges import serve_file
from api.routes.manifests import FILE_RESPONSES, manifest_doc

router = APIRouter(tags=["manifests"])


@router.get("/tokenizers/{tokenizer_id}", dependencies=[Depends(require_read)], responses=FILE_RESPONSES,
            response_class=Response)
@router.head("/tokenizers/{tokenizer_id}", dependencies=[Depends(require_read)], response_class=Response,
             operation_id="head_tokenizer")
def get_tokenizer(tokenizer_id: Annotated[str, Path(pattern=SHA256, description="the tokenizer file's sha256")],
                  request: Request, session: SessionDep, services: ServicesDep) -> Response:
    row = session.scalars(select(Manifest).where(Manifest.tokenizer_sha256 == tokenizer_id).limit(1)).first()
    if row is None:
        raise HTTPException(404, detail=f"no manifest uses tokenizer {tokenizer_id}")
    try:
        served = tokenizer_file(manifest_doc(row), row.uri)
    except FileNotFoundError as e:
        raise HTTPException(410, detail=str(e)) from None
    fs, _ = locate(row.uri)
    return serve_file(request, fs, served.path, size=served.size, sha256=served.sha256,
                      media_type=served.media_type, on_bytes=services.metrics.bytes_served.inc)
