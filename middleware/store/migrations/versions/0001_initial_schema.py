"""Initial schema: raw transmissions (append-only), messages, specimens, results, control
results, reagent lots and their use, orders, quarantine, audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-21 19:42:46.572271
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=60), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instrument", sa.String(length=100), nullable=False),
        sa.Column("connection", sa.String(length=200), nullable=False),
        sa.Column("sender", sa.String(length=200), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("record_count", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("problems", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("instrument", "content_sha256", name="uq_messages_content"),
    )
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("specimen_id", sa.String(length=100), nullable=False),
        sa.Column("patient_id", sa.String(length=100), nullable=False),
        sa.Column("test_codes", sa.Text(), nullable=False),
        sa.Column("priority", sa.String(length=2), nullable=False),
        sa.Column("source", sa.String(length=40), nullable=False),
        sa.Column("ordered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index("ix_orders_specimen", ["specimen_id"], unique=False)

    op.create_table(
        "reagent_lots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reagent", sa.String(length=120), nullable=False),
        sa.Column("lot", sa.String(length=60), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("manufacturer", sa.String(length=120), nullable=False),
        sa.Column("serial", sa.String(length=60), nullable=False),
        sa.Column("expiry", sa.Date(), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("reagent", "lot", name="uq_reagent_lots"),
    )
    op.create_table(
        "control_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("specimen_id", sa.String(length=100), nullable=False),
        sa.Column("patient_id", sa.String(length=100), nullable=False),
        sa.Column("test_code", sa.String(length=60), nullable=False),
        sa.Column("instrument_test_code", sa.String(length=120), nullable=False),
        sa.Column("value_text", sa.Text(), nullable=False),
        sa.Column("units", sa.String(length=60), nullable=False),
        sa.Column("reference_range", sa.String(length=120), nullable=False),
        sa.Column("abnormal_flags", sa.String(length=120), nullable=False),
        sa.Column("instrument_flags", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=4), nullable=False),
        sa.Column("operator", sa.String(length=100), nullable=False),
        sa.Column("instrument", sa.String(length=100), nullable=False),
        sa.Column("module", sa.String(length=100), nullable=False),
        sa.Column("comments", sa.Text(), nullable=False),
        sa.Column("dilution", sa.String(length=40), nullable=False),
        sa.Column("value_number", sa.Numeric(precision=24, scale=8), nullable=True),
        sa.Column("censor", sa.String(length=2), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("control_material", sa.String(length=120), nullable=False),
        sa.Column("lot", sa.String(length=60), nullable=False),
        sa.Column("level", sa.String(length=30), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("control_results", schema=None) as batch_op:
        batch_op.create_index("ix_control_results_test", ["instrument", "test_code"], unique=False)

    op.create_table(
        "raw_transmissions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("connection", sa.String(length=200), nullable=False),
        sa.Column("instrument", sa.String(length=100), nullable=False),
        sa.Column("direction", sa.String(length=3), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("duplicate", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("raw_transmissions", schema=None) as batch_op:
        batch_op.create_index("ix_raw_transmissions_message", ["message_id"], unique=False)

    op.create_table(
        "results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("specimen_id", sa.String(length=100), nullable=False),
        sa.Column("patient_id", sa.String(length=100), nullable=False),
        sa.Column("test_code", sa.String(length=60), nullable=False),
        sa.Column("instrument_test_code", sa.String(length=120), nullable=False),
        sa.Column("value_text", sa.Text(), nullable=False),
        sa.Column("units", sa.String(length=60), nullable=False),
        sa.Column("reference_range", sa.String(length=120), nullable=False),
        sa.Column("abnormal_flags", sa.String(length=120), nullable=False),
        sa.Column("instrument_flags", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=4), nullable=False),
        sa.Column("operator", sa.String(length=100), nullable=False),
        sa.Column("instrument", sa.String(length=100), nullable=False),
        sa.Column("module", sa.String(length=100), nullable=False),
        sa.Column("comments", sa.Text(), nullable=False),
        sa.Column("dilution", sa.String(length=40), nullable=False),
        sa.Column("value_number", sa.Numeric(precision=24, scale=8), nullable=True),
        sa.Column("censor", sa.String(length=2), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.create_index("ix_results_specimen", ["specimen_id"], unique=False)
        batch_op.create_index("ix_results_test", ["instrument", "test_code"], unique=False)

    op.create_table(
        "specimens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("specimen_id", sa.String(length=100), nullable=False),
        sa.Column("patient_id", sa.String(length=100), nullable=False),
        sa.Column("specimen_type", sa.String(length=60), nullable=False),
        sa.Column("container", sa.String(length=60), nullable=False),
        sa.Column("collected_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("analysed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("first_message_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["first_message_id"],
            ["messages.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("specimen_id", name="uq_specimens_specimen_id"),
    )
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("raw_id", sa.Integer(), nullable=True),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("connection", sa.String(length=200), nullable=False),
        sa.Column("instrument", sa.String(length=100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
        ),
        sa.ForeignKeyConstraint(
            ["raw_id"],
            ["raw_transmissions.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "reagent_uses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reagent_lot_id", sa.Integer(), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=True),
        sa.Column("control_result_id", sa.Integer(), nullable=True),
        sa.Column("instrument", sa.String(length=100), nullable=False),
        sa.Column("test_code", sa.String(length=60), nullable=False),
        sa.Column("calibration_id", sa.String(length=120), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["control_result_id"],
            ["control_results.id"],
        ),
        sa.ForeignKeyConstraint(
            ["reagent_lot_id"],
            ["reagent_lots.id"],
        ),
        sa.ForeignKeyConstraint(
            ["result_id"],
            ["results.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("reagent_uses", schema=None) as batch_op:
        batch_op.create_index("ix_reagent_uses_lot", ["reagent_lot_id"], unique=False)
    _append_only("raw_transmissions")
    _append_only("audit_log")


def _append_only(table: str) -> None:
    """What came off the wire and what people did are evidence: refuse change and delete."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION refuse_change() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END; $$ LANGUAGE plpgsql"
        )
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION refuse_change()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )


def downgrade() -> None:
    for table in ("raw_transmissions", "audit_log"):
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
    with op.batch_alter_table("reagent_uses", schema=None) as batch_op:
        batch_op.drop_index("ix_reagent_uses_lot")

    op.drop_table("reagent_uses")
    op.drop_table("quarantine")
    op.drop_table("specimens")
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_index("ix_results_test")
        batch_op.drop_index("ix_results_specimen")

    op.drop_table("results")
    with op.batch_alter_table("raw_transmissions", schema=None) as batch_op:
        batch_op.drop_index("ix_raw_transmissions_message")

    op.drop_table("raw_transmissions")
    with op.batch_alter_table("control_results", schema=None) as batch_op:
        batch_op.drop_index("ix_control_results_test")

    op.drop_table("control_results")
    op.drop_table("reagent_lots")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index("ix_orders_specimen")

    op.drop_table("orders")
    op.drop_table("messages")
    op.drop_table("audit_log")
