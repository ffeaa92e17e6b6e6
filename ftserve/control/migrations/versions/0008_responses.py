"""responses: the Responses API's stored responses (per org): the Response object, its input items and the
conversation before them

Revision ID: 0008_responses
Revises: 0007_uploads
Create Date: 2026-12-07 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_responses"
down_revision = "0007_uploads"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("input_items", sa.JSON(), nullable=False),
        sa.Column("history", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_responses_org_created", "responses", ["org_id", "created_at", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_responses_org_created", table_name="responses")
    op.drop_table("responses")
