"""Alembic environment. `Database.migrate()` hands over an open connection in
`config.attributes["connection"]`; the `alembic` command line uses `sqlalchemy.url` from
alembic.ini or `FLYWHEEL_DATABASE_URL`:

    FLYWHEEL_DATABASE_URL=sqlite:///flywheel-data/flywheel.db \
        alembic -c api/migrations/alembic.ini revision --autogenerate -m "what changed"
"""

from __future__ import annotations

import os

from alembic import context

from api.db import make_engine, normalise_url
from api.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(**kwargs) -> None:
    context.configure(target_metadata=target_metadata, compare_type=True, **kwargs)


def _url() -> str:
    return normalise_url(os.environ.get("FLYWHEEL_DATABASE_URL") or config.get_main_option("sqlalchemy.url"))


def _run(connection) -> None:
    # SQLite cannot ALTER most things: batch mode rebuilds the table instead.
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (shared := config.attributes.get("connection")) is not None:
    _run(shared)
else:
    engine = make_engine(_url())
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
