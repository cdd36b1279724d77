"""The FastAPI application: `create_app(settings)`.

    uvicorn --factory api.app:app_from_env        # or: flywheel serve [--host --port] [--no-auth]

Start-up migrates the database (Alembic `upgrade head`), fails jobs a previous process left
`running` without a live Ray actor, and starts the job reaper (see api/services.py).

The factory refuses settings with auth off on an interface other than loopback (api/auth.py
`check_exposure`). The API's own description (`/openapi.json`, `/docs`, `/redoc`) needs a read
token like every other route.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from api.access_log import install_redaction
from api.auth import check_exposure, require_read
from api.errors import install_error_handlers
from api.rate_limit import RateLimits
from api.routes import ROOT_ROUTERS, V1_ROUTERS
from api.services import Services
from api.settings import Settings

DESCRIPTION = """\
Flywheel's curation service. Upload or register corpora, run curation configs on Ray, follow
their per-stage progress, ask why any document was dropped, and stream the resulting token
shards (HTTP Range, ETag = sha256) to training clients.

Every route but `/healthz` and `/static` needs `Authorization: Bearer <token>` (`flywheel token
create NAME [--scope read|admin]`), this description included; `read` tokens may GET, `admin`
tokens may also create and cancel. The dashboard (`/`) signs a browser in with a form that sets
an HttpOnly cookie.
"""

# The dashboard's CSS, JS and vendored Chart.js: public code, served without a token.
STATIC_DIR = Path(__file__).resolve().parent / "static"

TAGS = [
    {"name": "corpora", "description": "Input data: streamed uploads, or files registered by URI."},
    {"name": "jobs", "description": "Curation runs on Ray: state, progress, stats, rejects."},
    {"name": "documents", "description": "Why a document was dropped."},
    {"name": "manifests", "description": "Token-shard manifests and their files."},
    {"name": "training", "description": "Training runs on a manifest, in a Ray actor: state, loss curve, checkpoints."},
    {"name": "ablations", "description": "Data ablations on a corpus, in a Ray actor: one model recipe trained on "
                                         "several curation recipes; loss curves, held-out results, leakage check."},
    {"name": "tokens", "description": "API tokens (admin): list them, revoke one. Tokens are created on the "
                                      "server's command line (`flywheel token create`)."},
    {"name": "service", "description": "Health and metrics."},
]


def docs_router() -> APIRouter:
    """/openapi.json, /docs and /redoc behind a read token (FastAPI serves its own without one)."""
    router = APIRouter(include_in_schema=False, dependencies=[Depends(require_read)])

    @router.get("/openapi.json")
    def openapi(request: Request) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    @router.get("/docs")
    def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{request.app.title} API")

    @router.get("/redoc")
    def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{request.app.title} API")

    return router


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    check_exposure(settings)  # before anything is created: no half-started service to clean up
    services = Services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        install_redaction()  # after uvicorn has configured its loggers
        services.start()
        try:
            yield
        finally:
            services.stop()

    try:
        app_version = version("flywheel")
    except PackageNotFoundError:
        app_version = "0+unknown"
    app = FastAPI(title="Flywheel", version=app_version, description=DESCRIPTION, openapi_tags=TAGS,
                  lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.services = services
    app.state.rate_limits = RateLimits(settings)  # per process: see api/rate_limit.py
    install_error_handlers(app)
    for router in V1_ROUTERS:
        app.include_router(router, prefix="/v1")
    for router in ROOT_ROUTERS:
        app.include_router(router)
    app.include_router(docs_router())
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def app_from_env() -> FastAPI:
    return create_app(Settings.from_env())
