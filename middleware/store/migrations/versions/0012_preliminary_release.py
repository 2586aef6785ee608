"""A held result may go to the LIS as preliminary (Q13): its open hold says when.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Holds made before this revision: none was sent early.
    with op.batch_alter_table("open_holds") as batch_op:
        batch_op.add_column(sa.Column("preliminary_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("open_holds") as batch_op:
        batch_op.drop_column("preliminary_at")
