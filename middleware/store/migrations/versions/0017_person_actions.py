"""What a person does to held results: comments on results, reagent lots recalled by a
person (R4), and on each open hold who sent it early and whether a re-run was asked for.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Holds made before this revision: sent early by the rules if at all, no re-run asked.
    with op.batch_alter_table("open_holds") as batch_op:
        batch_op.add_column(sa.Column("preliminary_by", sa.Text()))
        batch_op.add_column(sa.Column("rerun_requested_at", sa.DateTime(timezone=True)))
    op.create_table(
        "result_comments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("result_id", sa.Integer(), sa.ForeignKey("results.id"), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("written_by", sa.Text(), nullable=False),
        sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_result_comments_result", "result_comments", ["result_id"])
    op.create_index("ix_result_comments_written", "result_comments", ["written_at"])
    op.create_table(
        "recalled_lots",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("reagent", sa.Text(), nullable=False),
        sa.Column("lot", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("recalled_by", sa.Text(), nullable=False),
        sa.Column("recalled_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("reagent", "lot", name="uq_recalled_lots"),
    )
    op.create_index("ix_recalled_lots_recalled", "recalled_lots", ["recalled_at"])


def downgrade() -> None:
    op.drop_index("ix_recalled_lots_recalled", table_name="recalled_lots")
    op.drop_table("recalled_lots")
    op.drop_index("ix_result_comments_written", table_name="result_comments")
    op.drop_index("ix_result_comments_result", table_name="result_comments")
    op.drop_table("result_comments")
    with op.batch_alter_table("open_holds") as batch_op:
        batch_op.drop_column("rerun_requested_at")
        batch_op.drop_column("preliminary_by")
