"""Each message keeps the name of the driver that read it (configured or detected).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Messages kept before this revision: which driver read them was not recorded.
    with op.batch_alter_table("messages") as batch_op:
        batch_op.add_column(sa.Column("driver", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch_op:
        batch_op.drop_column("driver")
