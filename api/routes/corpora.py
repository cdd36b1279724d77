"""/v1/corpora: upload a file (streamed multipart) or register files by URI; list and get."""

from __future__ import annotations

import re
from typing import Annotated

from anyio import CancelScope, to_thread
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.auth import require_admin, require_read
from api.deps import JSON_BODY_LIMIT, MAX_OFFSET, ServicesDep, SessionDep, newest_first_page
from api.ids import CORPUS_ID, new_id
from api.locations import LocationError, LocationForbidden, allowed_location
from api.models import Corpus, utcnow
from api.scan import corpus_size
from api.schemas import CorpusList, CorpusOut, CorpusRegistration, Problem
from api.services import Services
from api.uploads import receive_upload
from curation.config import DOMAIN_PATTERN
from curation.io.files import InputError

router = APIRouter(tags=["corpora"])

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary",
                                 "description": "JSONL, JSONL.gz, JSONL.zst or Parquet; streamed, sha256 computed"},
                        "name": {"type": "string", "description": "display name (default: the file name)"},
                        "domain": {"type": "string", "pattern": DOMAIN_PATTERN,
                                   "description": "domain of records that carry none"},
                    },
                }
            },
            "application/json": {"schema": CorpusRegistration.model_json_schema()},
        },
    }
}


def _insert(services: Services, row: Corpus) -> None:
    with services.db.session() as s:
        s.add(row)


def _counted(counts, name: str) -> dict:
    if counts.documents == 0:
        raise HTTPException(422, detail=f"{name}: no valid documents (first problem: {counts.first_problem})")
    return dict(state="ready", documents=counts.documents, malformed=counts.malformed, text_bytes=counts.text_bytes,
                domains=counts.domains, files=counts.files, scanned_at=utcnow())


async def _count_inline(services: Services, uri: str, domain: str | None, name: str,
                        read_roots: tuple[str, ...] | None) -> dict:
    try:  # in the scan process (memory-limited), never in the web process
        counts = await to_thread.run_sync(services.inline_scanner.count, uri, domain, read_roots)
    except InputError as e:
        raise HTTPException(422, detail=str(e)) from None
    except (OSError, ValueError) as e:  # corrupt gzip/zstd, unreadable Parquet, ...
        raise HTTPException(422, detail=f"{name}: cannot be read ({type(e).__name__}: {str(e)[:300]})") from None
    return _counted(counts, name)


def _domain(value: str | None) -> str | None:
    if value and not re.match(DOMAIN_PATTERN, value):
        raise HTTPException(422, detail=f"domain: {value!r} must match {DOMAIN_PATTERN}")
    return value or None


async def _upload(request: Request, services: Services) -> Corpus:
    settings, storage = services.settings, services.storage
    corpus_id = new_id("cor")
    folder = f"corpora/{corpus_id}"
    upload = await receive_upload(request, storage, settings.max_upload_bytes, folder)
    try:
        domain = _domain(upload.fields.get("domain"))
        name = upload.fields.get("name") or upload.filename
        key = f"{folder}/{upload.filename}"
        if upload.key != key:  # local storage: the upload waited in tmp/
            await to_thread.run_sync(storage.move, upload.key, key)
        uri = storage.uri(key)
        inline = upload.size <= settings.scan_inline_bytes
        values = await _count_inline(services, uri, domain, name, None) if inline else dict(state="scanning")
        row = Corpus(id=corpus_id, name=name[:255], source="upload", uri=uri, domain=domain, sha256=upload.sha256,
                     size_bytes=upload.size, **values)
        await to_thread.run_sync(_insert, services, row)
    except BaseException:
        with CancelScope(shield=True):  # nothing half-registered, even when the client is gone
            await to_thread.run_sync(storage.delete, upload.key)
            await to_thread.run_sync(storage.delete_tree, folder)
        raise
    if not inline:
        services.scan_later(corpus_id)
    return row


async def _read_json(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > JSON_BODY_LIMIT:
            raise HTTPException(413, detail=f"JSON body larger than {JSON_BODY_LIMIT:,} bytes")
    return bytes(body)


async def _register(request: Request, services: Services) -> Corpus:
    raw = await _read_json(request)
    try:
        reg = CorpusRegistration.model_validate_json(raw)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None
    try:
        uri = allowed_location(reg.uri, services.settings.allowed_roots)
    except (LocationError, LocationForbidden) as e:
        raise HTTPException(e.status, detail=str(e)) from None
    try:
        files, size = await to_thread.run_sync(corpus_size, uri, services.read_roots)
    except InputError as e:
        raise HTTPException(422, detail=f"uri: {e}") from None
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid (a ValueError) or an unreachable store
        raise HTTPException(422, detail=f"uri: cannot be read ({type(e).__name__}: {str(e)[:300]})") from None
    name = reg.name or uri.rstrip("/").rsplit("/", 1)[-1]
    inline = size <= services.settings.scan_inline_bytes
    values = (await _count_inline(services, uri, reg.domain, name, services.read_roots) if inline
              else dict(state="scanning", files=files))
    row = Corpus(id=new_id("cor"), name=name[:255], source="uri", uri=uri, domain=reg.domain, sha256=None,
                 size_bytes=size, **values)
    await to_thread.run_sync(_insert, services, row)
    if not inline:
        services.scan_later(row.id)
    return row


@router.post(
    "/corpora", status_code=201, response_model=CorpusOut, dependencies=[Depends(require_admin)],
    openapi_extra=_UPLOAD_BODY, summary="Upload a corpus file, or register files by URI",
    responses={400: {"model": Problem}, 403: {"model": Problem}, 413: {"model": Problem},
               415: {"model": Problem}, 422: {"model": Problem}},
)
async def create_corpus(request: Request, services: ServicesDep) -> Corpus:
    """`multipart/form-data` with field `file` uploads (streamed to storage, sha256 computed on the
    way, 413 past the size limit, nothing registered on any failure). `application/json`
    `{"uri": ...}` registers existing files inside FLYWHEEL_ALLOWED_ROOTS without copying them.

    Corpora up to FLYWHEEL_SCAN_INLINE_BYTES are counted before the answer (`state: ready`);
    larger ones answer `state: scanning` and are counted in the background."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _upload(request, services)
    if content_type == "application/json":
        return await _register(request, services)
    raise HTTPException(415, detail="send multipart/form-data with a 'file' field, or application/json {\"uri\": ...}")


@router.get("/corpora", response_model=CorpusList, dependencies=[Depends(require_read)])
def list_corpora(session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                 offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> dict:
    return newest_first_page(session, Corpus, limit, offset)


@router.get("/corpora/{corpus_id}", response_model=CorpusOut, dependencies=[Depends(require_read)],
            responses={404: {"model": Problem}})
def get_corpus(corpus_id: Annotated[str, Path(pattern=CORPUS_ID)], session: SessionDep) -> Corpus:
    row = session.get(Corpus, corpus_id)
    if row is None:
        raise HTTPException(404, detail=f"no corpus {corpus_id}")
    return row

