"""Routers, one module per resource.

`V1_ROUTERS` are mounted under `/v1`, `ROOT_ROUTERS` at `/` (health, metrics). Another resource
plugs in by adding its module's `router` here: `routes/training_jobs.py` belongs in V1_ROUTERS,
`routes/dashboard.py` (HTML pages) in ROOT_ROUTERS.
"""

from api.routes import (
                        ablations,
                        corpora,
                        dashboard,
                        documents,
                        health,
                        jobs,
                        manifests,
                        metrics,
                        tokenizers,
                        tokens,
                        training_jobs,
)

V1_ROUTERS = [corpora.router, jobs.router, documents.router, manifests.router, tokenizers.router,
              training_jobs.router, ablations.router, tokens.router]
ROOT_ROUTERS = [health.router, metrics.router, dashboard.router]

__all__ = ["V1_ROUTERS", "ROOT_ROUTERS"]
