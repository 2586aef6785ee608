"""The audit log: who did what and when; append-only.

Each function takes an open ``Connection`` inside a transaction its caller owns, so
several writes can share one commit.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import (
    Connection,
)

from middleware.store.schema import (
    audit_log,
)


def audit(
    conn: Connection, at: datetime, actor: str, action: str, subject: str = "", detail: object = ""
) -> None:
    text = detail if isinstance(detail, str) else json.dumps(detail, default=str)
    conn.execute(
        audit_log.insert(),
        {"at": at, "actor": actor, "action": action, "subject": subject, "detail": text},
    )
