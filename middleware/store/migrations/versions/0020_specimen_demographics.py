"""The patient's sex and birth date kept with each specimen, as its first message gave
them: a message about its results released later (after a hold) carries them to the LIS.
Specimens kept before have none.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-03 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("specimens") as batch_op:
        batch_op.add_column(sa.Column("patient_sex", sa.Text(), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("patient_birth_date", sa.Date()))


def downgrade() -> None:
    with op.batch_alter_table("specimens") as batch_op:
        batch_op.drop_column("patient_birth_date")
        batch_op.drop_column("patient_sex")
