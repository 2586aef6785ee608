"""The reagent lots of a result are found by the result: a held result released later goes
to the LIS with the lots that made it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 00:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_reagent_uses_result", "reagent_uses", ["result_id"])


def downgrade() -> None:
    op.drop_index("ix_reagent_uses_result", table_name="reagent_uses")
