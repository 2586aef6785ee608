"""QC runs that end after a failure is dealt with, and the review of a failure from the
last run accepted whole: ``qc_tests.last_was_patient`` becomes ``run_closed`` (a run also
closes when its corrective action does), with the run that opened the corrective action
and the time QC was last in control at the end of an accepted run.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-03 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("qc_tests") as batch_op:
        batch_op.alter_column("last_was_patient", new_column_name="run_closed")
        batch_op.add_column(
            sa.Column("corrective_action_run", sa.Text(), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("accepted_run_at", sa.DateTime(timezone=True)))
    # The best the rows know: the last time QC was in control (what failures reviewed from).
    op.execute("UPDATE qc_tests SET accepted_run_at = last_in_control_at")


def downgrade() -> None:
    with op.batch_alter_table("qc_tests") as batch_op:
        batch_op.drop_column("accepted_run_at")
        batch_op.drop_column("corrective_action_run")
        batch_op.alter_column("run_closed", new_column_name="last_was_patient")
