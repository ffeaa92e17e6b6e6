"""responses retention: an index on created_at, so the orphan sweep finds the stored responses past
FTSERVE_RESPONSES_RETENTION_DAYS across every org

Revision ID: 0010_responses_retention
Revises: 0009_job_method_config
Create Date: 2026-12-08 10:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0010_responses_retention"
down_revision = "0009_job_method_config"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_responses_created", "responses", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_responses_created", table_name="responses")
