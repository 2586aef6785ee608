"""The commands that keep the records: ``backup``, ``restore``, ``archive`` and ``purge``
(docs/operations.md, "Backups, retention and archives"). Exit status 0 when done, 1 when
something does not check out or is refused, 2 on usage and configuration errors."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from middleware.settings import Settings
    from middleware.store.retention import Overdue


def _fail(command: str, message: str, status: int = 1) -> int:
    print(f"lis-middleware {command}: {message}", file=sys.stderr)
    return status


def _load(args: argparse.Namespace, command: str, existing: bool = True) -> Settings | None:
    """The configuration; with ``existing``, only when its database is there."""
    from middleware.cli import _settings, _store_settings

    return _store_settings(args, command) if existing else _settings(args, command)


def _engine(settings: Settings) -> Engine:
    """The configured database, at the newest schema (archives are recorded in it)."""
    from middleware.store.database import migrate, open_engine

    engine = open_engine(settings.database, settings.database_lock_timeout)
    migrate(engine)
    return engine


def _key(settings: Settings, create: bool = False) -> bytes:
    from middleware.archive import load_key

    return load_key(settings.archive.key_file, settings.state_dir, create)


# ---------------------------------------------------------------------------- backup


def _backup(args: argparse.Namespace) -> int:
    from middleware.store.backup import BackupError, backup, verify_backup

    words = args.target
    if words[0] == "verify":
        if len(words) != 2:
            args.parser.error("backup verify takes one directory")
        problems = verify_backup(Path(words[1]))
        for problem in problems:
            print(problem)
        if problems:
            return 1
        print(f"backup ok: {words[1]}")
        return 0
    if len(words) != 1:
        args.parser.error("backup takes one directory (or: backup verify DIR)")
    settings = _load(args, "backup")
    if settings is None:
        return 2
    destination = Path(words[0])
    try:
        manifest = backup(settings.database, destination, datetime.now(UTC))
    except BackupError as exc:
        return _fail("backup", str(exc))
    for entry in manifest.files:
        print(f"{destination / entry['name']}  {entry['size']} bytes  sha256 {entry['sha256']}")
    main = ("messages", "results", "control_results", "raw_transmissions", "audit_log")
    counted = ", ".join(f"{manifest.rows[t]} {t}" for t in main if t in manifest.rows)
    print(f"{manifest.database} backup at schema {manifest.revision}: {counted}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from sqlalchemy import make_url

    from middleware.store.audit import audit
    from middleware.store.backup import BackupError, restore

    settings = _load(args, "restore", existing=False)
    if settings is None:
        return 2
    now = datetime.now(UTC)
    replaced = _audit_head(settings.database)
    try:
        done = restore(
            settings.database, Path(args.source), args.force, now, settings.lease_seconds
        )
    except BackupError as exc:
        return _fail("restore", str(exc))
    engine = _engine(settings)
    try:
        with engine.connect() as conn:
            conn.execution_options(write=True)
            with conn.begin():
                audit(
                    conn,
                    now,
                    args.by,
                    "backup.restore",
                    str(Path(args.source).resolve()),
                    replaced or "",
                )
    finally:
        engine.dispose()
    target = make_url(settings.database)
    sqlite = target.get_backend_name() == "sqlite"
    where = target.database if sqlite else target.render_as_string(hide_password=True)
    if done.set_aside is not None:
        print(f"the database replaced is kept as {done.set_aside}")
    print(
        f"restored {sum(done.rows.values())} rows from {args.source} into {where}; start the daemon"
    )
    return 0


def _audit_head(url: str) -> dict[str, object] | None:
    """The audit log's last entry in the database a restore replaces, if it holds one: a
    restore takes the chain back to the backup's, and a head written down since is then
    found in the restore's own entry, not in the chain."""
    from sqlalchemy import inspect, make_url, select
    from sqlalchemy.exc import SQLAlchemyError

    from middleware.store.database import open_engine
    from middleware.store.schema import audit_log

    target = make_url(url)
    if target.get_backend_name() == "sqlite" and not Path(target.database or "").is_file():
        return None  # opened, it would be made
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(audit_log.name):
                return None
            last = conn.execute(
                select(audit_log.c.id, audit_log.c.hash).order_by(audit_log.c.id.desc()).limit(1)
            ).first()
    except SQLAlchemyError:
        return None  # not reachable: the restore says so
    finally:
        engine.dispose()
    return None if last is None else {"replaced_head": last.hash, "replaced_entry": last.id}


# --------------------------------------------------------------------------- archive


def _archive(args: argparse.Namespace) -> int:
    words = args.target
    if words[0] == "verify":
        if len(words) != 2:
            args.parser.error("archive verify takes one directory")
        return _archive_verify(args, Path(words[1]))
    if len(words) != 2:
        args.parser.error("archive takes two destinations, on two media (or: archive verify DIR)")
    return _archive_write(args, [Path(w) for w in words])


def _archive_verify(args: argparse.Namespace, directory: Path) -> int:
    from middleware.archive import ArchiveError, archive_directories, load_key, verify

    try:
        if args.key is not None:
            key = load_key(Path(args.key), Path())
        else:
            settings = _load(args, "archive verify", existing=False)
            if settings is None:
                return 2
            key = _key(settings)
    except ArchiveError as exc:
        return _fail("archive verify", str(exc), 2)
    found = archive_directories(directory)
    if not found:
        return _fail("archive verify", f"no archive in {directory}")
    bad = 0
    for archive_dir in found:
        problems = verify(archive_dir, key)
        for problem in problems:
            print(problem)
        if problems:
            bad += 1
        else:
            print(f"archive ok: {archive_dir}")
    return 1 if bad else 0


def _same_medium(destinations: list[Path]) -> bool:
    devices = set()
    for destination in destinations:
        existing = destination
        while not existing.exists():
            existing = existing.parent
        devices.add(existing.stat().st_dev)
    return len(devices) < len(destinations)


def _archive_write(args: argparse.Namespace, destinations: list[Path]) -> int:
    from middleware.archive import ArchiveError, archive_month, months_to_archive
    from middleware.store.archives import Month

    settings = _load(args, "archive")
    if settings is None:
        return 2
    now = datetime.now(UTC)
    try:
        key = _key(settings, create=True)
        month = Month.parse(args.period) if args.period else None
    except (ArchiveError, ValueError) as exc:
        return _fail("archive", str(exc), 2)
    if _same_medium(destinations):
        print(
            "lis-middleware archive: warning: both destinations are on the same file system; "
            "archives belong on two separate media",
            file=sys.stderr,
        )
    engine = _engine(settings)
    try:
        months = [month] if month is not None else months_to_archive(engine, now)
        if not months:
            print("nothing to archive: no closed month with records is left unarchived")
            return 0
        for each in months:
            written = archive_month(engine, destinations, each, key, now, args.by)
            copies = " and ".join(str(d) for d in written.directories)
            print(f"{written.period}: {written.row_count} rows in {copies}")
    except ArchiveError as exc:
        return _fail("archive", str(exc))
    finally:
        engine.dispose()
    return 0


# ----------------------------------------------------------------------------- purge


def _purge(args: argparse.Namespace) -> int:
    from middleware.archive import ArchiveError
    from middleware.retention import PurgeRefused, purge
    from middleware.store import archives
    from middleware.store.retention import cutoffs, overdue

    settings = _load(args, "purge")
    if settings is None:
        return 2
    if not args.dry_run and not args.by:
        args.parser.error("purge deletes records: say who does it with --by (or --dry-run)")
    now = datetime.now(UTC)
    limits = cutoffs(settings.retention.model_dump(), now)
    engine = _engine(settings)
    try:
        if args.dry_run:
            with engine.connect() as conn:
                months = [a.period for a in archives.recorded(conn)]
                found = overdue(conn, limits, months)
            return 0 if _print_overdue(found, limits, args.format) else 141
        try:
            done = purge(engine, _key(settings), limits, now, args.by)
        except (PurgeRefused, ArchiveError) as exc:
            return _fail("purge", f"{exc}; nothing deleted")
    finally:
        engine.dispose()
    for name, count in done.deleted.items():
        if count:
            print(f"{name:<22} {count:>10} deleted")
    print(f"{done.total} row(s) deleted, from archives {', '.join(done.archives) or 'none'}")
    return 0


def _print_overdue(found: list[Overdue], limits: dict[str, datetime], form: str) -> bool:
    """False when whoever reads the list has gone (``| head``)."""
    from middleware.cli import _print_out

    if form == "json":
        for item in found:
            said = _print_out(
                json.dumps(
                    {
                        "kind": item.kind,
                        "table": item.name,
                        "before": limits[item.kind].isoformat(),
                        "rows": item.rows,
                        "oldest": item.oldest.isoformat() if item.oldest else None,
                        "newest": item.newest.isoformat() if item.newest else None,
                        "archived": item.archived,
                    }
                )
            )
            if not said:
                return False
        return True
    lines = []
    for kind, limit in limits.items():
        lines.append(f"{kind}: kept until {limit:%Y-%m-%d %H:%M} UTC")
        past = [item for item in found if item.kind == kind and item.rows]
        if not past:
            lines.append("  nothing past retention")
        for item in past:
            span = f"{item.oldest:%Y-%m-%d} .. {item.newest:%Y-%m-%d}" if item.oldest else ""
            lines.append(
                f"  {item.name:<22} {item.rows:>10} past retention  {span}  "
                f"{item.archived} in archived months"
            )
    if not _print_out("\n".join(lines)):
        return False
    print("purge deletes only rows past retention that a verified archive holds", file=sys.stderr)
    return True


# ---------------------------------------------------------------------------- parser


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The commands, on the ``lis-middleware`` parser's subcommands."""
    config = {"metavar": "FILE", "help": "the daemon's YAML configuration"}

    backup = sub.add_parser(
        "backup",
        help="copy the database while the daemon runs; or check a copy",
        usage="lis-middleware backup [--config FILE] DEST\n"
        "       lis-middleware backup verify DEST",
        description="Copy the configured database into the directory DEST (made if missing) "
        "while the daemon runs: SQLite with its online backup API, PostgreSQL with pg_dump, "
        "each from one snapshot; with MANIFEST.json (time, schema revision, each file's "
        "SHA-256 and size, rows per table). `backup verify DEST` checks every file against "
        "the manifest: exit status 1, naming the file, when one differs.",
    )
    backup.add_argument("target", nargs="+", metavar="DEST")
    backup.add_argument("--config", **config)
    backup.set_defaults(handler=_backup, parser=backup)

    restore = sub.add_parser(
        "restore",
        help="restore a backup into the configured database (daemon stopped)",
        description="Check the backup in SRC against its manifest, then restore it into the "
        "configured database: refused while a daemon runs on it, and when it holds records "
        "unless --force (a SQLite file replaced is kept beside it). The rows restored are "
        "counted against the manifest.",
    )
    restore.add_argument("source", metavar="SRC")
    restore.add_argument("--config", **config)
    restore.add_argument("--force", action="store_true", help="replace a database with records")
    restore.add_argument("--by", default=getpass.getuser(), help="who restores (audited)")
    restore.set_defaults(handler=_restore)

    archive = sub.add_parser(
        "archive",
        help="write closed months' records to two media; or check an archive",
        usage="lis-middleware archive [--config FILE] [--period YYYY-MM] DEST1 DEST2\n"
        "       lis-middleware archive verify [--config FILE | --key FILE] DIR",
        description="Write the records of a closed calendar month (UTC) as JSON Lines with "
        "their description into DEST1/YYYY-MM and DEST2/YYYY-MM, each with a manifest of "
        "SHA-256 sums signed with HMAC-SHA256; check both copies and record the archive. "
        "Without --period, every closed month not archived yet. `archive verify DIR` checks "
        "the signature and every file of the archive in DIR (or of each archive in it): "
        "exit status 1, naming the first file altered or missing.",
    )
    archive.add_argument("target", nargs="+", metavar="DEST")
    archive.add_argument("--period", metavar="YYYY-MM", help="one closed month")
    archive.add_argument("--config", **config)
    archive.add_argument("--key", metavar="FILE", help="verify with this key file")
    archive.add_argument("--by", default=getpass.getuser(), help="who archives (audited)")
    archive.set_defaults(handler=_archive, parser=archive)

    purge = sub.add_parser(
        "purge",
        help="delete records past retention that a verified archive holds",
        description="Delete the records past their retention (settings' retention section) "
        "that a recorded archive holds, after checking every copy of those archives; rows "
        "still needed (held results, messages not delivered to the LIS, open corrective "
        "actions) stay. --dry-run lists, per kind, what is past retention.",
    )
    purge.add_argument("--dry-run", action="store_true", help="list, delete nothing")
    purge.add_argument("--config", **config)
    purge.add_argument("--by", help="who purges (audited); required without --dry-run")
    purge.add_argument("--format", choices=("text", "json"), default="text")
    purge.set_defaults(handler=_purge, parser=purge)


__all__ = ["add_parsers"]
