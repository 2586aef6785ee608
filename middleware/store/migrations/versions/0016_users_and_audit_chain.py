"""Users and API tokens for the status page and the control API; the audit log made
tamper-evident: each entry gets the hash of the one before it and its own, computed here
for the entries already written.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-09 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from middleware.store.audit import GENESIS, entry_hash

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_BATCH = 1000


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("password_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sessions_revoked_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("name", name="uq_users_name"),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("token_sha256", sa.Text(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.UniqueConstraint("name", name="uq_api_tokens_name"),
        sa.UniqueConstraint("token_sha256", name="uq_api_tokens_sha256"),
    )
    # Not in batch mode: SQLite would rebuild the table and lose its triggers.
    op.add_column("audit_log", sa.Column("prev_hash", sa.Text()))
    op.add_column("audit_log", sa.Column("hash", sa.Text()))
    postgresql = op.get_bind().dialect.name == "postgresql"
    # The entries already written are chained here, the only UPDATE the log ever takes.
    if postgresql:
        op.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
    else:
        op.execute("DROP TRIGGER audit_log_no_update")
    _chain_existing()
    if postgresql:
        op.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
    else:
        op.execute(
            "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
            "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
        )


def _chain_existing() -> None:
    """Every entry by id, a batch at a time: the log may be long."""
    conn = op.get_bind()
    log = sa.table(
        "audit_log",
        sa.column("id", sa.Integer()),
        sa.column("at", sa.DateTime(timezone=True)),
        sa.column("actor", sa.Text()),
        sa.column("action", sa.Text()),
        sa.column("subject", sa.Text()),
        sa.column("detail", sa.Text()),
        sa.column("prev_hash", sa.Text()),
        sa.column("hash", sa.Text()),
    )
    update = (
        log.update()
        .where(log.c.id == sa.bindparam("row_id"))
        .values(prev_hash=sa.bindparam("new_prev"), hash=sa.bindparam("new_hash"))
    )
    prev, after = GENESIS, 0
    while True:
        rows = conn.execute(
            sa.select(log.c.id, log.c.at, log.c.actor, log.c.action, log.c.subject, log.c.detail)
            .where(log.c.id > after)
            .order_by(log.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        changes = []
        for row in rows:
            digest = entry_hash(prev, row.at, row.actor, row.action, row.subject, row.detail)
            changes.append({"row_id": row.id, "new_prev": prev, "new_hash": digest})
            prev = digest
        conn.execute(update, changes)
        after = rows[-1].id


def downgrade() -> None:
    # Not in batch mode: SQLite drops a column in place, keeping the table's triggers.
    op.drop_column("audit_log", "hash")
    op.drop_column("audit_log", "prev_hash")
    op.drop_table("api_tokens")
    op.drop_table("users")
