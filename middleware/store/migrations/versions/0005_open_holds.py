"""The results currently held, as rows of their own; a patient's latest result of a test
found by index.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 16:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "open_holds",
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("instrument", sa.Text(), nullable=False),
        sa.Column("test_code", sa.Text(), nullable=False),
        sa.Column("held_since", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"]),
        sa.PrimaryKeyConstraint("result_id"),
    )
    with op.batch_alter_table("open_holds") as batch_op:
        batch_op.create_index("ix_open_holds_test", ["instrument", "test_code"], unique=False)
    with op.batch_alter_table("results") as batch_op:
        batch_op.create_index(
            "ix_results_patient_test_id", ["patient_id", "test_code", "id"], unique=False
        )
        batch_op.drop_index("ix_results_patient_test")
    # Once, from the decisions kept so far: each result's latest decision, if a hold.
    op.execute(
        "INSERT INTO open_holds (result_id, instrument, test_code, held_since) "
        "SELECT d.result_id, d.instrument, d.test_code, d.decided_at FROM decisions d "
        "JOIN (SELECT result_id, max(id) AS id FROM decisions GROUP BY result_id) latest "
        "ON latest.id = d.id WHERE d.action = 'hold'"
    )


def downgrade() -> None:
    with op.batch_alter_table("results") as batch_op:
        batch_op.create_index("ix_results_patient_test", ["patient_id", "test_code"], unique=False)
        batch_op.drop_index("ix_results_patient_test_id")
    op.drop_table("open_holds")
