"""job gang: a multi-host job's rendezvous endpoint (published by the claiming worker, for the claim it
belongs to), how many hosts it needs and how many joined; and the processes and hosts its last gang ran on

Revision ID: 0006_gang
Revises: 0005_batches
Create Date: 2026-11-30 11:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_gang"
down_revision = "0005_batches"
branch_labels = None
depends_on = None

COLUMNS = ("gang_endpoint", "gang_attempt", "gang_hosts", "gang_joined", "gang_processes")


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gang_endpoint", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("gang_attempt", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("gang_hosts", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("gang_joined", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("gang_processes", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        for name in reversed(COLUMNS):
            batch_op.drop_column(name)
