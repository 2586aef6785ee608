"""An order keeps what the LIS says of its specimen (collection time, type, container),
for sample acceptance where the analyser does not say it.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 02:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Orders kept before this revision: the LIS's specimen details were not kept.
    with op.batch_alter_table("orders") as batch_op:
        batch_op.add_column(sa.Column("collected_at", sa.DateTime(timezone=True)))
        batch_op.add_column(
            sa.Column("specimen_type", sa.Text(), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("container", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch_op:
        batch_op.drop_column("container")
        batch_op.drop_column("specimen_type")
        batch_op.drop_column("collected_at")
