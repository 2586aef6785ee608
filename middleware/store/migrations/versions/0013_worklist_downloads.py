"""Orders waiting to be sent to analysers that take a downloaded worklist.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 01:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worklist_downloads",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("instrument", sa.Text(), nullable=False),
        sa.Column("specimen_id", sa.Text(), nullable=False),
        sa.Column("patient_id", sa.Text(), nullable=False),
        sa.Column("test_codes", sa.Text(), nullable=False),
        sa.Column("priority", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
    )
    op.create_index(
        "ix_worklist_downloads_pending", "worklist_downloads", ["instrument", "state", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_worklist_downloads_pending", table_name="worklist_downloads")
    op.drop_table("worklist_downloads")
