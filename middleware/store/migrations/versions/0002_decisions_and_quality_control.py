"""Decisions about results, QC evaluations, corrective actions and the review list.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 20:02:59.712042
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Delta checks look up a patient's previous result of a test.
    op.create_index("ix_results_patient_test", "results", ["patient_id", "test_code"])
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("instrument", sa.String(length=100), nullable=False),
        sa.Column("test_code", sa.String(length=60), nullable=False),
        sa.Column("specimen_id", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=10), nullable=False),
        sa.Column("reasons", sa.Text(), nullable=False),
        sa.Column("findings", sa.Text(), nullable=False),
        sa.Column("urgent", sa.Boolean(), nullable=False),
        sa.Column("comments", sa.Text(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["result_id"],
            ["results.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.create_index("ix_decisions_result", ["result_id"], unique=False)
        batch_op.create_index(
            "ix_decisions_test", ["instrument", "test_code", "action"], unique=False
        )

    op.create_table(
        "qc_evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("control_result_id", sa.Integer(), nullable=False),
        sa.Column("instrument", sa.String(length=100), nullable=False),
        sa.Column("test_code", sa.String(length=60), nullable=False),
        sa.Column("run", sa.String(length=60), nullable=False),
        sa.Column("level", sa.String(length=30), nullable=False),
        sa.Column("z", sa.Numeric(precision=12, scale=4), nullable=True),
        sa.Column("target_mean", sa.Numeric(precision=24, scale=8), nullable=True),
        sa.Column("target_sd", sa.Numeric(precision=24, scale=8), nullable=True),
        sa.Column("provisional", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("violations", sa.String(length=200), nullable=False),
        sa.Column("warnings", sa.String(length=200), nullable=False),
        sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["control_result_id"],
            ["control_results.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("qc_evaluations", schema=None) as batch_op:
        batch_op.create_index("ix_qc_evaluations_test", ["instrument", "test_code"], unique=False)

    op.create_table(
        "corrective_actions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instrument", sa.String(length=100), nullable=False),
        sa.Column("test_code", sa.String(length=60), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_by", sa.String(length=100), nullable=True),
        sa.Column("action_taken", sa.Text(), nullable=True),
        sa.Column("closing_evaluation_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["closing_evaluation_id"],
            ["qc_evaluations.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "qc_reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("corrective_action_id", sa.Integer(), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("listed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reviewed_by", sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(
            ["corrective_action_id"],
            ["corrective_actions.id"],
        ),
        sa.ForeignKeyConstraint(
            ["result_id"],
            ["results.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_index("ix_results_patient_test", table_name="results")
    op.drop_table("qc_reviews")
    op.drop_table("corrective_actions")
    with op.batch_alter_table("qc_evaluations", schema=None) as batch_op:
        batch_op.drop_index("ix_qc_evaluations_test")

    op.drop_table("qc_evaluations")
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_index("ix_decisions_test")
        batch_op.drop_index("ix_decisions_result")

    op.drop_table("decisions")
