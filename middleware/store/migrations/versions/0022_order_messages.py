"""The LIS's order messages taken, by sender and control id (MSH-3/4 and MSH-10): one
sent again because its answer was lost is answered without being applied a second time.
Messages taken before are not known: only those from now on are.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-03 18:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "order_messages",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key_sha256", sa.Text(), nullable=False),
        sa.Column("sender", sa.Text(), nullable=False),
        sa.Column("control_id", sa.Text(), nullable=False),
        sa.Column("content_sha256", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("key_sha256", name="uq_order_messages_key"),
    )


def downgrade() -> None:
    op.drop_table("order_messages")
