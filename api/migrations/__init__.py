"""Alembic migrations of the service database; run by `api.db.Database.migrate()`."""
