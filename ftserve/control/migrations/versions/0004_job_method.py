"""job method (supervised | dpo)

Revision ID: 0004_job_method
Revises: 0003_job_worker_losses
Create Date: 2026-11-27 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_job_method"
down_revision = "0003_job_worker_losses"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing jobs were all supervised: the server default fills them in.
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("method", sa.String(length=16), server_default="supervised", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.drop_column("method")
