"""Opening the database: SQLite (WAL, durable) by default, PostgreSQL by URL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text

MIGRATIONS = Path(__file__).with_name("migrations")
#: The newest migration (tests check it is alembic's head): a database already there is
#: opened without loading alembic, a fifth of the daemon's start-up.
HEAD = "0022"


def default_url(state_dir: Path) -> str:
    return f"sqlite:///{(state_dir / 'middleware.db').resolve()}"


def _durable_sqlite(lock_timeout: float) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets readers (the status page) work during writes; FULL makes each commit
        # survive a power cut, not only a killed process.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(lock_timeout * 1000)}")
        cursor.close()
        # Transactions begin where SQLAlchemy begins them (below), not at the first
        # INSERT as the sqlite3 module would: a write that read state first must hold
        # what it read.
        dbapi_connection.isolation_level = None

    return on_connect


def _begin(conn: Connection) -> None:
    """A write transaction takes SQLite's write lock at once (BEGIN IMMEDIATE), waiting
    up to the lock timeout for another process's; it then reads what that one committed,
    never a state a later write would overwrite. Reads begin deferred: one snapshot each."""
    write = conn.get_execution_options().get("write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def open_engine(url: str, lock_timeout: float = 10.0) -> Engine:
    """``lock_timeout``: how long a write waits for a lock another process holds before
    it fails (and the analyser gets a NAK rather than a late ACK)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _durable_sqlite(lock_timeout))
        event.listen(engine, "begin", _begin)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        # What the QC state's locking counts on (a row another transaction made is read
        # once it commits), whatever default lab IT gave the server or the role.
        isolation_level="READ COMMITTED",
        connect_args={"options": f"-c lock_timeout={int(lock_timeout * 1000)}"},
    )


@dataclass(frozen=True, slots=True)
class RiskySetting:
    """A database server setting under which what the daemon keeps may be lost or let
    grow: the daemon says so at start, and carries on (the server is lab IT's)."""

    name: str
    value: str
    consequence: str


#: PostgreSQL settings, the value that is a risk, and what it means for the lab.
_RISKS = {
    "fsync": ("off", "a power cut or a crash of the server can lose committed results and "
              "corrupt the database"),
    "synchronous_commit": ("off", "results the analysers were told were kept can be lost when "
                           "the server crashes or loses power"),
    "full_page_writes": ("off", "a crash of the server can leave pages half written"),
    "autovacuum": ("off", "tables changed all day (open holds, the LIS outbox, the QC state) "
                   "are never vacuumed: they and their indexes grow and every lookup slows"),
    "track_counts": ("off", "autovacuum cannot tell which tables need vacuuming"),
}  # fmt: skip


def risky_settings(conn: Connection) -> list[RiskySetting]:
    """The server's settings that put what the daemon keeps at risk; none on SQLite, whose
    settings the daemon makes itself."""
    if conn.dialect.name != "postgresql":
        return []
    rows = conn.execute(
        text("SELECT name, setting FROM pg_settings WHERE name = ANY(:names) ORDER BY name"),
        {"names": sorted(_RISKS)},
    )
    return [
        RiskySetting(name, value, _RISKS[name][1])
        for name, value in rows
        if value == _RISKS[name][0]
    ]


def current_revision(engine: Engine) -> str | None:
    """The migration a database is at; None for one never migrated."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (the newest by default)."""
    if revision in ("head", HEAD) and current_revision(engine) == HEAD:
        return
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        # Outside any transaction, where SQLite honours it: straight on the driver's
        # connection, which is in autocommit until a transaction begins.
        raw = connection.connection.dbapi_connection
        if sqlite and raw is not None:
            # SQLite rebuilds a table to change its constraints; tables that refer to it
            # must not stop the rebuild. The references are checked once it is done.
            raw.execute("PRAGMA foreign_keys=OFF")
        try:
            with connection.begin():
                config.attributes["connection"] = connection
                before = MigrationContext.configure(connection).get_current_revision()
                command.upgrade(config, revision)
                after = MigrationContext.configure(connection).get_current_revision()
                # Checked only when a migration ran: on a large database the check reads
                # every table, which a plain restart need not pay for.
                if sqlite and after != before:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"migration broke references: {broken[:5]}")
        finally:
            if sqlite and raw is not None:
                raw.execute("PRAGMA foreign_keys=ON")
