"""Post-training jobs: `kind` on training_jobs (pretrain, sft, reward_model, ppo, dpo, redteam) and
`manifest_id` optional (a post-training job starts from another job's checkpoint, not a manifest).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # server_default "pretrain": every row from before this revision is a pretraining run.
    with op.batch_alter_table("training_jobs") as batch:  # SQLite changes nullability by rebuilding the table
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="pretrain"))
        batch.alter_column("manifest_id", existing_type=sa.String(32), nullable=True)


def downgrade() -> None:
    # A post-training row has no manifest: it cannot stay in a table that requires one.
    op.execute("DELETE FROM training_jobs WHERE manifest_id IS NULL")
    with op.batch_alter_table("training_jobs") as batch:
        batch.alter_column("manifest_id", existing_type=sa.String(32), nullable=False)
        batch.drop_column("kind")
