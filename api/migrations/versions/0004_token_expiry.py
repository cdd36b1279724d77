"""Token expiry: `api_tokens.expires_at` (NULL: never expires), set by `flywheel token create --expires-in`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from api.models import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: tokens created before this revision keep never expiring.
    op.add_column("api_tokens", sa.Column("expires_at", UtcDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:  # SQLite drops a column by rebuilding the table
        batch.drop_column("expires_at")
