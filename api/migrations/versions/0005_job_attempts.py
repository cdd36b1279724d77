"""Job start attempts: `attempts` on jobs, training_jobs and ablations, counted each time the
service starts a job's actor; the reaper fails a queued job whose actor died before reporting
after `max_start_attempts` of them instead of restarting it forever.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLES = ("jobs", "training_jobs", "ablations")


def upgrade() -> None:
    for table in TABLES:
        # server_default "0": rows from before this revision have had no counted attempt.
        op.add_column(table, sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:  # SQLite drops a column by rebuilding the table
            batch.drop_column("attempts")
