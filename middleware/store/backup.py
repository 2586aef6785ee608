"""Backups (D2): a consistent copy of the database taken while the daemon runs, with a
manifest to check it by, and its restoration into an empty database.

SQLite is copied with its online backup API in one step: one read snapshot, which the
daemon's writes (write-ahead log) neither wait for nor disturb. PostgreSQL is dumped by
``pg_dump`` from a snapshot this module exports, so that the rows counted into the
manifest are the rows dumped."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, inspect, literal, make_url, select, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from middleware.store.database import HEAD, open_engine
from middleware.store.records import RECORD_TABLES
from middleware.store.schema import instrument_leases, metadata

FORMAT = "lis-middleware-backup/1"
MANIFEST = "MANIFEST.json"
SQLITE_FILE = "middleware.db"
POSTGRES_FILE = "middleware.pgdump"
_CHUNK = 1024 * 1024


class BackupError(Exception):
    """A backup that cannot be taken, checked or restored; the message says why."""


@dataclass(frozen=True)
class Manifest:
    created_at: str
    database: str
    revision: str | None
    files: list[dict[str, Any]]
    rows: dict[str, int]

    def to_json(self) -> bytes:
        body = {"format": FORMAT} | self.__dict__
        return (json.dumps(body, indent=2) + "\n").encode("ascii")

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        try:
            body = json.loads((directory / MANIFEST).read_bytes())
        except OSError:
            raise BackupError(f"{directory / MANIFEST}: missing") from None
        except ValueError:
            raise BackupError(f"{directory / MANIFEST}: not JSON") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise BackupError(f"{directory / MANIFEST}: not a manifest of {FORMAT}")
        try:
            return cls(
                str(body["created_at"]),
                str(body["database"]),
                body["revision"],
                list(body["files"]),
                {str(k): int(v) for k, v in body["rows"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise BackupError(f"{directory / MANIFEST}: incomplete") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file or a directory (the names it holds) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def row_counts(conn: Connection) -> dict[str, int]:
    """Rows of every table of the schema that the database has."""
    present = set(inspect(conn).get_table_names())
    return {
        table.name: int(conn.execute(text(f'SELECT count(*) FROM "{table.name}"')).scalar_one())
        for table in metadata.sorted_tables
        if table.name in present
    }


def _revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError(f"{url}: not a SQLite file")
    return Path(database)


def tool(name: str) -> str:
    """The path of a PostgreSQL client program."""
    found = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/lib/postgresql/bin")
    if found is None:
        raise BackupError(f"{name} not found: install the PostgreSQL client (postgresql-client)")
    return found


def libpq_target(url: str) -> tuple[str, dict[str, str]]:
    """A connection URI for the PostgreSQL programs, and their environment: the password
    goes in ``PGPASSWORD``, where other users of the host cannot read it in the list of
    processes."""
    parsed: URL = make_url(url)
    env = dict(os.environ)
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


# ------------------------------------------------------------------------- backing up


def backup(url: str, destination: Path, now: datetime) -> Manifest:
    """Copies the database ``url`` names into ``destination`` (made if missing; refused
    when it already holds a backup) with its manifest, at ``now``."""
    if (destination / MANIFEST).exists():
        raise BackupError(f"{destination} already holds a backup; give a new directory")
    if url.startswith("sqlite") and not sqlite_path(url).exists():
        raise BackupError(f"{sqlite_path(url)}: no such database")
    try:
        destination.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"{destination}: cannot make the directory: {exc.strerror}") from None
    engine = open_engine(url)
    try:
        with _reaching(url, "backup"):
            if engine.dialect.name == "sqlite":
                name, revision, rows = _backup_sqlite(url, destination)
            else:
                name, revision, rows = _backup_postgres(engine, url, destination)
    finally:
        engine.dispose()
    path = destination / name
    files = [{"name": name, "size": path.stat().st_size, "sha256": file_sha256(path)}]
    manifest = Manifest(now.isoformat(), engine.dialect.name, revision, files, rows)
    partial = destination / f".{MANIFEST}.partial"
    partial.write_bytes(manifest.to_json())
    fsync_path(partial)
    partial.rename(destination / MANIFEST)
    fsync_path(destination)
    return manifest


def _backup_sqlite(url: str, destination: Path) -> tuple[str, str | None, dict[str, int]]:
    source_path = sqlite_path(url)
    partial = destination / f".{SQLITE_FILE}.partial"
    partial.unlink(missing_ok=True)
    source = sqlite3.connect(source_path, timeout=30)
    target = sqlite3.connect(partial)
    try:
        # All pages in one step: a single read snapshot. In steps, each write of the
        # daemon's would start the copy again, and it might never end.
        source.backup(target, pages=-1)
        # One file that stands alone: no write-ahead log beside it to lose.
        target.execute("PRAGMA journal_mode=DELETE")
        checked = target.execute("PRAGMA quick_check").fetchone()
        if checked is None or checked[0] != "ok":
            raise BackupError(f"the copy does not check out: {checked}")
    finally:
        target.close()
        source.close()
    # Counted read-only: opened as the daemon opens it, the copy would turn back to a
    # write-ahead log and change under its checksum.
    copy = create_engine(
        "sqlite://", creator=lambda: sqlite3.connect(f"file:{partial}?mode=ro", uri=True)
    )
    try:
        with copy.connect() as conn:
            revision, rows = _revision(conn), row_counts(conn)
    finally:
        copy.dispose()
    fsync_path(partial)
    partial.rename(destination / SQLITE_FILE)
    fsync_path(destination)
    return SQLITE_FILE, revision, rows


def _backup_postgres(
    engine: Engine, url: str, destination: Path
) -> tuple[str, str | None, dict[str, int]]:
    partial = destination / f".{POSTGRES_FILE}.partial"
    partial.unlink(missing_ok=True)
    pg_dump = tool("pg_dump")
    target, env = libpq_target(url)
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            revision, rows = _revision(conn), row_counts(conn)
            # The exporting transaction stays open until pg_dump is done with it.
            done = subprocess.run(
                [pg_dump, "--format=custom", f"--snapshot={snapshot}",
                 f"--file={partial}", f"--dbname={target}"],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BackupError(f"pg_dump failed: {done.stderr.strip()}")
    fsync_path(partial)
    partial.rename(destination / POSTGRES_FILE)
    fsync_path(destination)
    return POSTGRES_FILE, revision, rows


def verify_backup(directory: Path) -> list[str]:
    """What is wrong with the backup in ``directory``, each file named; empty when every
    file is as its manifest says."""
    try:
        manifest = Manifest.read(directory)
    except BackupError as exc:
        return [str(exc)]
    problems = []
    for entry in manifest.files:
        path = directory / str(entry.get("name", ""))
        if Path(str(entry.get("name", ""))).name != entry.get("name"):
            problems.append(f"{directory / MANIFEST}: names a file outside the backup")
        elif not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != entry.get("size") or file_sha256(path) != entry.get("sha256"):
            problems.append(f"{path}: altered (its SHA-256 is not the manifest's)")
    return problems


# ------------------------------------------------------------------------- restoring


def holds_records(conn: Connection) -> bool:
    """Whether any table of records has a row: a daemon that only started on a database
    (leases, rules put in force) leaves it empty in this sense."""
    present = set(inspect(conn).get_table_names())
    tables = {record.table for record in RECORD_TABLES if record.table.name in present}
    return any(
        conn.execute(select(literal(1)).select_from(table).limit(1)).first() is not None
        for table in tables
    )


def live_daemons(conn: Connection, now: datetime, lease_seconds: float) -> list[str]:
    """Daemons whose leases were renewed within ``lease_seconds`` of ``now``: running."""
    if not inspect(conn).has_table(instrument_leases.name):
        return []
    since = now - timedelta(seconds=lease_seconds)
    rows = conn.execute(
        select(instrument_leases.c.owner).where(instrument_leases.c.renewed_at > since)
    ).all()
    return sorted({row.owner for row in rows})


@dataclass(frozen=True)
class Restored:
    database: str
    rows: dict[str, int]
    set_aside: Path | None
    """The SQLite file the restored one replaced, kept."""


def restore(url: str, source: Path, force: bool, now: datetime, lease_seconds: float) -> Restored:
    """Restores the backup in ``source`` into the database ``url`` names, after checking
    every file against the manifest. Refused when the target holds records (unless
    ``force``) or a daemon runs on it; the rows restored are counted against the
    manifest's."""
    problems = verify_backup(source)
    if problems:
        raise BackupError(f"backup refused: {problems[0]}")
    manifest = Manifest.read(source)
    if manifest.revision is not None and manifest.revision > HEAD:
        raise BackupError(
            f"the backup is at schema {manifest.revision}, newer than this version's {HEAD}"
        )
    with _reaching(url, "restore"):
        return _restore(url, source, manifest, force, now, lease_seconds)


def _restore(
    url: str, source: Path, manifest: Manifest, force: bool, now: datetime, lease_seconds: float
) -> Restored:
    engine = open_engine(url)
    try:
        if engine.dialect.name != manifest.database:
            raise BackupError(
                f"a {manifest.database} backup cannot be restored into {engine.dialect.name}"
            )
        with _target(engine, url) as conn:
            running = live_daemons(conn, now, lease_seconds) if conn is not None else []
            if running:
                raise BackupError(
                    f"daemon {', '.join(running)} runs on this database: stop it first"
                )
            if conn is not None and holds_records(conn) and not force:
                raise BackupError(
                    "the target database holds records: restore into an empty one "
                    "(or give --force to replace it)"
                )
    finally:
        engine.dispose()
    set_aside = None
    if manifest.database == "sqlite":
        set_aside = _restore_sqlite(source / SQLITE_FILE, sqlite_path(url), now)
    else:
        _restore_postgres(source / POSTGRES_FILE, url)
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            rows = row_counts(conn)
        differ = [t for t, n in manifest.rows.items() if rows.get(t) != n]
        if differ:
            table = differ[0]
            raise BackupError(
                f"restored {rows.get(table)} rows of {table}, "
                f"the manifest says {manifest.rows[table]}"
            )
        # The backup's leases are those of daemons that ran when it was taken: kept, they
        # would refuse the next start for up to lease_seconds in the name of a daemon
        # that is not there (none runs on the target: checked above).
        with engine.begin() as conn:
            # A backup from before leases existed has none (the daemon makes the table).
            if inspect(conn).has_table(instrument_leases.name):
                conn.execute(instrument_leases.delete())
    finally:
        engine.dispose()
    return Restored(manifest.database, rows, set_aside)


@contextmanager
def _reaching(url: str, command: str) -> Iterator[None]:
    """A database that cannot be reached or is not there, said in one line rather than
    with the driver's traceback."""
    try:
        yield
    except OperationalError as exc:
        # psycopg: 'connection failed: connection to server at ... failed: FATAL:  why'
        first = str(exc.orig).splitlines()[0] if str(exc.orig) else str(exc)
        why = first.rpartition("failed: ")[2].removeprefix("FATAL:").strip()
        name = make_url(url).database
        if why == f'database "{name}" does not exist':
            raise BackupError(
                f"{why}: create it (createdb {name}) and run {command} again"
            ) from None
        where = make_url(url).render_as_string(hide_password=True)
        raise BackupError(f"cannot reach the database {where}: {why}") from None


@contextmanager
def _target(engine: Engine, url: str) -> Iterator[Connection | None]:
    """A connection to the target database; None for a SQLite file not there yet."""
    if engine.dialect.name == "sqlite":
        path = sqlite_path(url)
        if not path.exists():
            yield None
            return
        _refuse_if_locked(path)
    with engine.connect() as conn:
        yield conn


def _refuse_if_locked(path: Path) -> None:
    """A SQLite file another process is writing: its daemon still runs."""
    probe = sqlite3.connect(path, timeout=0.5, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        raise BackupError(f"{path} is being written ({exc}): stop the daemon first") from None
    finally:
        probe.close()


def _restore_sqlite(backup_file: Path, target: Path, now: datetime) -> Path | None:
    target.parent.mkdir(parents=True, exist_ok=True)
    set_aside = None
    if target.exists():
        # Its write-ahead log folded into it first: moved without it, the old file
        # would lose its last commits, and the log left behind would corrupt the new one.
        old = sqlite3.connect(target, timeout=0.5, isolation_level=None)
        try:
            old.execute("PRAGMA journal_mode=DELETE")
        finally:
            old.close()
        set_aside = target.with_name(f"{target.name}.before-restore-{now:%Y%m%dT%H%M%SZ}")
        target.rename(set_aside)
    for stale in (target.with_name(target.name + "-wal"), target.with_name(target.name + "-shm")):
        stale.unlink(missing_ok=True)
    partial = target.with_name(f".{target.name}.restoring")
    with backup_file.open("rb") as src, partial.open("wb") as dst:
        shutil.copyfileobj(src, dst, _CHUNK)
        dst.flush()
        os.fsync(dst.fileno())
    partial.rename(target)
    fsync_path(target.parent)
    return set_aside


def _restore_postgres(dump: Path, url: str) -> None:
    pg_restore = tool("pg_restore")
    target, env = libpq_target(url)
    # One transaction: a restore that fails leaves the database as it was.
    done = subprocess.run(
        [pg_restore, "--clean", "--if-exists", "--no-owner", "--single-transaction",
         f"--dbname={target}", str(dump)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise BackupError(f"pg_restore failed: {done.stderr.strip()}")


__all__ = [
    "BackupError",
    "Manifest",
    "Restored",
    "backup",
    "restore",
    "verify_backup",
]
