"""Orders' and worklist downloads' test codes kept as a JSON array, not joined by commas:
a LIS's test code may hold a comma, and was then read back as two tests.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03 12:00:00
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_TABLES = ("orders", "worklist_downloads")
_BATCH = 5000


def _convert(table: str, to_json: bool) -> None:
    conn = op.get_bind()
    rows = sa.table(table, sa.column("id", sa.Integer), sa.column("test_codes", sa.Text))
    update = (
        rows.update()
        .where(rows.c.id == sa.bindparam("row"))
        .values(test_codes=sa.bindparam("codes"))
    )
    after = 0
    while True:
        batch = conn.execute(
            sa.select(rows.c.id, rows.c.test_codes)
            .where(rows.c.id > after)
            .order_by(rows.c.id)
            .limit(_BATCH)
        ).all()
        if not batch:
            return
        changed = [
            {
                "row": row_id,
                "codes": json.dumps([c for c in codes.split(",") if c], ensure_ascii=False)
                if to_json
                else ",".join(json.loads(codes)),
            }
            for row_id, codes in batch
        ]
        conn.execute(update, changed)
        after = batch[-1][0]


def upgrade() -> None:
    for table in _TABLES:
        _convert(table, to_json=True)


def downgrade() -> None:
    for table in _TABLES:
        _convert(table, to_json=False)
