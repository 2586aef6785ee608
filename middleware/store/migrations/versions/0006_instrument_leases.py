"""Leases: which daemon serves which instrument when several share one database.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 16:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instrument_leases",
        sa.Column("instrument", sa.Text(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("renewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("instrument"),
    )


def downgrade() -> None:
    op.drop_table("instrument_leases")
