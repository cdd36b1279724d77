"""Issue 16, item 10: the Alembic migrations build exactly the schema of api/models.py.

On a fresh database (SQLite and PostgreSQL) `upgrade head`, then Alembic's autogenerate
comparison against `Base.metadata` must find nothing: a column, index, constraint or type added
to a model without a migration (or the reverse) fails here. Also: 0004 (token expiry) upgrades a
database with tokens in it, and downgrades back.
"""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from api.auth import authenticate, create_token
from api.db import MIGRATIONS_DIR, Database
from api.models import Base
from tests.api.conftest import sibling_database


def alembic_config(connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def migrate_to(db: Database, revision: str, *, down: bool = False) -> None:
    with db.engine.begin() as conn:
        (command.downgrade if down else command.upgrade)(alembic_config(conn), revision)


def schema_differences(db: Database) -> list:
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return compare_metadata(context, Base.metadata)


def test_migrations_build_the_models_schema(database_url, tmp_path):
    db = Database(sibling_database(database_url, tmp_path))
    try:
        db.migrate()
        assert schema_differences(db) == []
        with db.engine.connect() as conn:
            head = ScriptDirectory.from_config(alembic_config(conn)).get_current_head()
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
    finally:
        db.dispose()


def test_token_expiry_migration_keeps_existing_tokens(database_url, tmp_path):
    db = Database(sibling_database(database_url, tmp_path))
    try:
        migrate_to(db, "0003")
        with db.engine.begin() as conn:  # a token as a 0003 service stored it: no expires_at column yet
            conn.execute(text("INSERT INTO api_tokens (id, name, scope, token_hash, created_at) "
                              "VALUES ('tok_0123456789abcdef', 'old', 'read', :h, CURRENT_TIMESTAMP)"),
                         {"h": "0" * 64})
        db.migrate()
        assert schema_differences(db) == []
        with db.session() as s:
            _, token = create_token(s, "new", "admin", "pepper")
        with db.session() as s:
            assert authenticate(s, token, "pepper") is not None
            assert s.execute(text("SELECT expires_at FROM api_tokens WHERE name = 'old'")).scalar() is None
        migrate_to(db, "0003", down=True)
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM api_tokens")).scalar() == 2
        db.migrate()
        assert schema_differences(db) == []
    finally:
        db.dispose()
