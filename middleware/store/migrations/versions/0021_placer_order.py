"""Each order kept with the LIS's number for it (ORC-2): a specimen may carry several
orders, each replaced or cancelled on its own. Orders kept before have none, and are
replaced as a specimen's only order was.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-03 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch_op:
        batch_op.add_column(sa.Column("placer_order", sa.Text(), nullable=False, server_default=""))
    op.create_index("ix_orders_placer", "orders", ["placer_order"])


def downgrade() -> None:
    op.drop_index("ix_orders_placer", table_name="orders")
    with op.batch_alter_table("orders") as batch_op:
        batch_op.drop_column("placer_order")
