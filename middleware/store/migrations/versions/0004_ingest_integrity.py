"""Every byte in one raw row with its outcome; re-runs of identical messages are kept;
text without length limits on PostgreSQL.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 16:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    with op.batch_alter_table("raw_transmissions") as batch_op:
        batch_op.add_column(sa.Column("connection_id", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("stream_offset", sa.BigInteger(), nullable=True))
        batch_op.add_column(
            sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("outcome", sa.Text(), nullable=True))
        batch_op.create_index(
            "ix_raw_transmissions_stream", ["connection_id", "stream_offset"], unique=False
        )
    with op.batch_alter_table("messages") as batch_op:
        batch_op.drop_constraint("uq_messages_content", type_="unique")
        batch_op.add_column(sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_messages_content", ["instrument", "content_sha256"])
    # Messages kept before this revision were final: a later identical one is a re-run.
    op.execute("UPDATE messages SET settled_at = received_at")
    if bind.dialect.name == "postgresql":
        _unlimited_postgresql_columns()


def _unlimited_postgresql_columns() -> None:
    """VARCHAR(n) becomes TEXT and NUMERIC(p, s) becomes NUMERIC: PostgreSQL refused
    what analysers send and SQLite took."""
    rows = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name <> 'alembic_version' "
                "AND ((data_type = 'character varying') "
                "OR (data_type = 'numeric' AND numeric_precision IS NOT NULL))"
            )
        )
        .all()
    )
    for table, column, kind in rows:
        target = "TEXT" if kind == "character varying" else "NUMERIC"
        op.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" TYPE {target}')


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch_op:
        batch_op.drop_index("ix_messages_content")
        batch_op.drop_column("settled_at")
        batch_op.create_unique_constraint("uq_messages_content", ["instrument", "content_sha256"])
    with op.batch_alter_table("raw_transmissions") as batch_op:
        batch_op.drop_index("ix_raw_transmissions_stream")
        for column in ("outcome", "last_received_at", "stream_offset", "connection_id"):
            batch_op.drop_column(column)
