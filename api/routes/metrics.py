"""/metrics: Prometheus text format (jobs by state, documents processed, bytes served)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from api.auth import require_read
from api.deps import ServicesDep

router = APIRouter(tags=["service"])


@router.get("/metrics", dependencies=[Depends(require_read)], response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=services.metrics.content_type)
