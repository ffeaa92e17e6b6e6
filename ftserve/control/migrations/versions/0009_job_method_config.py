"""fine_tuning_jobs.method_config: a method's own configuration beyond its hyperparameters (reinforcement: the
grader)

Revision ID: 0009_job_method_config
Revises: 0008_responses
Create Date: 2026-12-07 13:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_job_method_config"
down_revision = "0008_responses"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("method_config", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.drop_column("method_config")
