"""The lab's own control limits once approved (Q3), and QC-voiding events.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 20:50:17.179128
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "control_limits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instrument", sa.String(length=100), nullable=False),
        sa.Column("test_code", sa.String(length=60), nullable=False),
        sa.Column("lot", sa.String(length=60), nullable=False),
        sa.Column("mean", sa.Numeric(precision=24, scale=8), nullable=False),
        sa.Column("sd", sa.Numeric(precision=24, scale=8), nullable=False),
        sa.Column("results", sa.Integer(), nullable=False),
        sa.Column("approved_by", sa.String(length=100), nullable=False),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("control_limits", schema=None) as batch_op:
        batch_op.create_index(
            "ix_control_limits_lot", ["instrument", "test_code", "lot"], unique=False
        )

    op.create_table(
        "qc_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instrument", sa.String(length=100), nullable=False),
        sa.Column("test_code", sa.String(length=60), nullable=False),
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_by", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("qc_events", schema=None) as batch_op:
        batch_op.create_index("ix_qc_events_test", ["instrument", "test_code"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("qc_events", schema=None) as batch_op:
        batch_op.drop_index("ix_qc_events_test")

    op.drop_table("qc_events")
    with op.batch_alter_table("control_limits", schema=None) as batch_op:
        batch_op.drop_index("ix_control_limits_lot")

    op.drop_table("control_limits")
