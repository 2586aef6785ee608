"""The engine's QC state as rows: one per instrument and test, one per control lot.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "qc_tests",
        sa.Column("instrument", sa.Text(), nullable=False),
        sa.Column("test_code", sa.Text(), nullable=False),
        sa.Column("run_number", sa.Integer(), nullable=False),
        sa.Column("last_was_patient", sa.Boolean(), nullable=False),
        sa.Column("levels", sa.Text(), nullable=False),
        sa.Column("void_reason", sa.Text(), nullable=False),
        sa.Column("void_at", sa.DateTime(timezone=True)),
        sa.Column("corrective_action_since", sa.DateTime(timezone=True)),
        sa.Column("corrective_action_reason", sa.Text(), nullable=False),
        sa.Column("last_in_control_at", sa.DateTime(timezone=True)),
        sa.Column("locked", sa.Text(), nullable=False),
        sa.Column("lots_in_use", sa.Text()),
        sa.Column("westgard", sa.Text(), nullable=False),
        sa.Column("basis", sa.Text(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("instrument", "test_code"),
    )
    op.create_table(
        "qc_lots",
        sa.Column("instrument", sa.Text(), nullable=False),
        sa.Column("test_code", sa.Text(), nullable=False),
        sa.Column("lot", sa.Text(), nullable=False),
        sa.Column("material", sa.Text(), nullable=False),
        sa.Column("window", sa.Text(), nullable=False),
        sa.Column("results", sa.Integer(), nullable=False),
        sa.Column("total", sa.Text(), nullable=False),
        sa.Column("squares", sa.Text(), nullable=False),
        sa.Column("runs", sa.Text(), nullable=False),
        sa.Column("cycle_results", sa.Integer(), nullable=False),
        sa.Column("cycle_total", sa.Text(), nullable=False),
        sa.Column("cycle_squares", sa.Text(), nullable=False),
        sa.Column("over_limit_cycles", sa.Integer(), nullable=False),
        sa.Column("approved_mean", sa.Text()),
        sa.Column("approved_sd", sa.Text()),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("instrument", "test_code", "lot"),
    )
    op.create_table(
        "pending_conversions",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    # The state of a database that already holds results is made once, by the first daemon
    # to start on it, from its history: that needs the rules, which a migration has not.
    held = op.get_bind().execute(sa.text("SELECT 1 FROM messages LIMIT 1")).first()
    if held is not None:
        op.execute(
            "INSERT INTO pending_conversions (name, since) VALUES ('qc-state', CURRENT_TIMESTAMP)"
        )


def downgrade() -> None:
    op.drop_table("pending_conversions")
    op.drop_table("qc_lots")
    op.drop_table("qc_tests")
