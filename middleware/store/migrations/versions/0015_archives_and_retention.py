"""Archives of closed months, and what purging the records past their retention needs:
the archives written, a permit that lets a purge delete from the append-only tables, and
indexes on the times that place a row in a month and on the references a delete checks.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# The month an archive takes rows from is found by these times, not by reading each table
# whole every month.
_TIMES = (
    ("ix_raw_transmissions_received", "raw_transmissions", "received_at"),
    ("ix_messages_received", "messages", "received_at"),
    ("ix_quarantine_received", "quarantine", "received_at"),
    ("ix_results_stored", "results", "stored_at"),
    ("ix_control_results_stored", "control_results", "stored_at"),
    ("ix_decisions_decided", "decisions", "decided_at"),
    ("ix_qc_evaluations_evaluated", "qc_evaluations", "evaluated_at"),
    ("ix_corrective_actions_closed", "corrective_actions", "closed_at"),
    ("ix_qc_reviews_reviewed", "qc_reviews", "reviewed_at"),
    ("ix_outbox_answered", "outbox", "answered_at"),
    ("ix_outbox_log_at", "outbox_log", "at"),
    ("ix_audit_log_at", "audit_log", "at"),
)
# Deleting a row makes both databases look for rows referring to it: without an index,
# each deleted row would read the whole referring table.
_REFERENCES = (
    ("ix_results_message", "results", "message_id"),
    ("ix_control_results_message", "control_results", "message_id"),
    ("ix_specimens_first_message", "specimens", "first_message_id"),
    ("ix_quarantine_raw", "quarantine", "raw_id"),
    ("ix_quarantine_message", "quarantine", "message_id"),
    ("ix_qc_evaluations_control_result", "qc_evaluations", "control_result_id"),
    ("ix_reagent_uses_control_result", "reagent_uses", "control_result_id"),
    ("ix_qc_reviews_result", "qc_reviews", "result_id"),
    ("ix_qc_reviews_corrective_action", "qc_reviews", "corrective_action_id"),
    ("ix_corrective_actions_closing", "corrective_actions", "closing_evaluation_id"),
)
_APPEND_ONLY = ("raw_transmissions", "audit_log")


def upgrade() -> None:
    op.create_table(
        "archives",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("period", sa.Text(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("destinations", sa.Text(), nullable=False),
        sa.Column("manifest_sha256", sa.Text(), nullable=False),
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("period", name="uq_archives_period"),
    )
    op.create_table(
        "purge_permit",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
    )
    # Not in batch mode: SQLite would rebuild the tables and lose their triggers.
    for name, table, column in _TIMES + _REFERENCES:
        op.create_index(name, table, [column])
    # A row of purge_permit exists only inside a purge's own transaction, unseen by any
    # other: the append-only tables still refuse every UPDATE, and every DELETE but the
    # purge's of rows a verified archive holds.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION refuse_change() RETURNS trigger AS $$ BEGIN "
            "IF TG_OP = 'DELETE' AND EXISTS (SELECT 1 FROM purge_permit) THEN RETURN OLD; "
            "END IF; "
            "RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END; $$ LANGUAGE plpgsql"
        )
    else:
        for table in _APPEND_ONLY:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
            op.execute(
                f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
                "WHEN NOT EXISTS (SELECT 1 FROM purge_permit) "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION refuse_change() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END; $$ LANGUAGE plpgsql"
        )
    else:
        for table in _APPEND_ONLY:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
            op.execute(
                f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )
    for name, table, _ in reversed(_TIMES + _REFERENCES):
        op.drop_index(name, table_name=table)
    op.drop_table("purge_permit")
    op.drop_table("archives")
