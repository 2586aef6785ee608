"""Archives (D10): the records of a closed month written as JSON Lines files, with their
description, to two directories (two media), each copy with a manifest of every file's
SHA-256 and an HMAC-SHA256 signature of the manifest. Read with any JSON reader; checked
with ``lis-middleware archive verify`` or by hand (docs/operations.md)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Column, Connection, Engine
from sqlalchemy import types as sqltypes

from middleware import keyfile
from middleware.store import archives as recorded_archives
from middleware.store.archives import ArchiveRecord, Month
from middleware.store.audit import audit
from middleware.store.backup import file_sha256, fsync_path
from middleware.store.records import RECORD_TABLES, RecordTable, earliest
from middleware.store.sql import utc

FORMAT = "lis-middleware-archive/1"
MANIFEST = "MANIFEST.json"
SIGNATURE = "MANIFEST.sig"
SCHEMA = "schema.json"
README = "FORMAT.md"
_CHUNK = 1024 * 1024


class ArchiveError(Exception):
    """An archive that cannot be written or does not check out; the message says which
    file and why."""


# ---------------------------------------------------------------------------- the key


def load_key(key_file: Path | None, state_dir: Path, create: bool = False) -> bytes:
    """The signing key: the configured file's text, else ``state_dir/archive.key``, made
    when ``create`` (to write an archive) and missing: 64 hex characters, readable by its
    owner only. A key made to check an archive could only fail it. The key is the file's
    text without surrounding white space, so that ``openssl dgst -sha256 -hmac "$(cat
    FILE)"`` computes the same signature."""
    if key_file is None:
        key_file = state_dir / "archive.key"
    else:
        create = False  # a configured key is the laboratory's to make
    try:
        return keyfile.load(key_file, create)
    except keyfile.KeyFileError as exc:
        raise ArchiveError(f"archive key {exc}") from None


def key_id(key: bytes) -> str:
    """Names a key without giving it away: which key signed an archive."""
    return hashlib.sha256(key).hexdigest()[:16]


def sign(key: bytes, manifest: bytes) -> str:
    return hmac.new(key, manifest, hashlib.sha256).hexdigest()


# ----------------------------------------------------------------------- the format


def _kind(column: Column[Any]) -> tuple[str, str]:
    """How a column's values are written: JSON type and, where JSON has none, encoding."""
    kind = column.type
    if isinstance(kind, sqltypes.LargeBinary):
        return "string", "base64 of the bytes as received"
    if isinstance(kind, sqltypes.DateTime):
        return "string", "ISO 8601 time in UTC"
    if isinstance(kind, sqltypes.Date):
        return "string", "ISO 8601 date"
    if isinstance(kind, sqltypes.Numeric):
        return "string", "decimal number as text, never rounded"
    if isinstance(kind, sqltypes.Boolean):
        return "boolean", ""
    if isinstance(kind, sqltypes.Integer):
        return "integer", ""
    return "string", ""


def _value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime):
        return (utc(value) or value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        # SQLite hands NUMERIC back padded to ten places (5.1000000000)
        return format(value.normalize(), "f")
    if isinstance(value, float):
        return repr(value)
    return str(value)


def describe(record: RecordTable) -> dict[str, Any]:
    """What ``schema.json`` says of one file."""
    placed = (
        record.time
        if record.parent is None
        else f"{record.parent.name}.{record.time} of the row {record.via} refers to"
    )
    columns = []
    for column in record.table.columns:
        json_type, encoding = _kind(column)
        entry: dict[str, Any] = {
            "name": column.name,
            "type": json_type,
            "nullable": bool(column.nullable) and not column.primary_key,
        }
        if encoding:
            entry["encoding"] = encoding
        refers = [f"{fk.column.table.name}.{fk.column.name}" for fk in column.foreign_keys]
        if refers:
            entry["refers_to"] = refers[0]
        columns.append(entry)
    return {
        "table": record.table.name,
        "retention_kind": record.kind,
        "month_by": placed,
        "columns": columns,
    }


_README = """\
# Archive {period}

Records of the laboratory middleware (lis-middleware) of the calendar month {period}
in UTC, from {start} (included) to {end} (excluded).
Written {created}.

## Files

- `MANIFEST.json`: the format (`{format}`), the month, when and from which
  database revision it was written, and each file with its rows, size and SHA-256.
- `MANIFEST.sig`: HMAC-SHA256 of the exact bytes of `MANIFEST.json`, in hex, with the id
  of the key (the first 16 hex digits of the SHA-256 of the key).
- `schema.json`: for each `.jsonl` file, its table, its columns (name, JSON type,
  encoding, whether it may be null, which table a column refers to) and the time that
  placed its rows in this month.
- `<name>.jsonl`: one JSON object per line and per row, keys being the column names,
  in the order of the `id` column. Times are ISO 8601 in UTC; bytes (the analysers' raw
  transmissions) are base64; decimal numbers are strings (`"5.1"`), never rounded.

A row appears in the month of its own time (a message when it was received, a result when
it was stored, a decision when it was made...). A row that could still change appears in
the month it was closed in: a corrective action when closed, a review when reviewed, a
message to the LIS when the LIS accepted it. Ids are the database's: a row of another
month refers to rows of earlier archives by them.

## Checking it

    lis-middleware archive verify DIR --key KEYFILE

or by hand, with the key kept apart from the archives:

    openssl dgst -sha256 -hmac "$(cat KEYFILE)" MANIFEST.json   # = signature in MANIFEST.sig
    python3 -c 'import json; [print(f["sha256"] + "  " + f["name"]) \\
        for f in json.load(open("MANIFEST.json"))["files"]]' | sha256sum -c

## Reading it

    python3 -c 'import json,sys; [print(json.loads(l)["text"]) for l in open("messages.jsonl")]'
    jq -r '.data' raw_transmissions.jsonl | head -1 | base64 -d
"""


class _HashingFile:
    """A file written once, its SHA-256 and size counted as it goes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.digest = hashlib.sha256()
        self.size = 0
        self._out: IO[bytes] = path.open("xb")

    def write(self, data: bytes) -> None:
        self._out.write(data)
        self.digest.update(data)
        self.size += len(data)

    def close(self) -> None:
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()


@dataclass(frozen=True)
class Written:
    """One archive written and checked in its destinations."""

    period: Month
    directories: list[Path]
    manifest_sha256: str
    row_count: int


def _write_file(directory: Path, name: str, data: bytes) -> dict[str, Any]:
    out = _HashingFile(directory / name)
    out.write(data)
    out.close()
    return {"name": name, "size": out.size, "sha256": out.digest.hexdigest()}


def _write_rows(directory: Path, name: str, rows: Iterable[Any]) -> dict[str, Any]:
    out = _HashingFile(directory / name)
    count = 0
    for row in rows:
        line = {key: _value(value) for key, value in row._mapping.items()}
        out.write(json.dumps(line, separators=(",", ":")).encode("ascii") + b"\n")
        count += 1
    out.close()
    return {"name": name, "rows": count, "size": out.size, "sha256": out.digest.hexdigest()}


def write_month(
    conn: Connection, directory: Path, month: Month, key: bytes, created_at: datetime
) -> tuple[bytes, int]:
    """Writes the archive of ``month`` into ``directory`` (new, empty) from what ``conn``
    reads in its transaction; gives the manifest's bytes and the rows written."""
    files = []
    for record in RECORD_TABLES:
        stream = recorded_archives.period_rows(conn, record, month)
        written = _write_rows(directory, f"{record.name}.jsonl", stream)
        files.append({"table": record.table.name} | written)
    schema = {
        "format": FORMAT,
        "files": {f"{record.name}.jsonl": describe(record) for record in RECORD_TABLES},
    }
    files.append(_write_file(directory, SCHEMA, _json(schema)))
    readme = _README.format(
        period=month,
        start=month.start.isoformat(),
        end=month.end.isoformat(),
        created=created_at.isoformat(),
        format=FORMAT,
    )
    files.append(_write_file(directory, README, readme.encode("utf-8")))
    engine = conn.engine
    manifest = {
        "format": FORMAT,
        "period": str(month),
        "from": month.start.isoformat(),
        "to": month.end.isoformat(),
        "created_at": created_at.isoformat(),
        "database": engine.dialect.name,
        "revision": conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar(),
        "key_id": key_id(key),
        "files": files,
    }
    manifest_bytes = _json(manifest)
    _write_file(directory, MANIFEST, manifest_bytes)
    signature = {
        "algorithm": "HMAC-SHA256",
        "key_id": key_id(key),
        "signature": sign(key, manifest_bytes),
    }
    _write_file(directory, SIGNATURE, _json(signature))
    fsync_path(directory)
    return manifest_bytes, sum(int(f.get("rows", 0)) for f in files)


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode("ascii")


def _copy(source: Path, target: Path) -> None:
    """``source``'s files into the new directory ``target``, each synced to its medium."""
    target.mkdir()
    for path in sorted(source.iterdir()):
        with path.open("rb") as src, (target / path.name).open("xb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
            dst.flush()
            os.fsync(dst.fileno())
    fsync_path(target)


def _partial(destination: Path, month: Month) -> Path:
    """Where an archive is written before it is complete; a crash leaves only this,
    never a final directory missing files."""
    partial = destination / f".{month}.partial"
    if partial.exists():
        shutil.rmtree(partial)  # ours, from a run that did not finish
    return partial


# ---------------------------------------------------------------------- checking one


def verify(directory: Path, key: bytes) -> list[str]:
    """What is wrong with the archive in ``directory``, first problem first (the
    signature, then each file in the manifest's order); empty when it checks out."""
    try:
        manifest_bytes = (directory / MANIFEST).read_bytes()
    except OSError:
        return [f"{directory / MANIFEST}: missing"]
    try:
        signed = json.loads((directory / SIGNATURE).read_bytes())
        signature = str(signed["signature"])
    except OSError:
        return [f"{directory / SIGNATURE}: missing"]
    except (ValueError, KeyError, TypeError):
        return [f"{directory / SIGNATURE}: not a signature"]
    if not hmac.compare_digest(signature, sign(key, manifest_bytes)):
        problem = f"{directory / MANIFEST}: signature does not match: the manifest was altered"
        if signed.get("key_id") != key_id(key):
            problem += f", or it was signed with key {signed.get('key_id')}, not {key_id(key)}"
        return [problem]
    try:
        manifest = json.loads(manifest_bytes)
        listed = [(str(f["name"]), int(f["size"]), str(f["sha256"])) for f in manifest["files"]]
    except (ValueError, KeyError, TypeError):
        return [f"{directory / MANIFEST}: not a manifest of this format"]
    problems = []
    for name, size, sha256 in listed:
        path = directory / name
        if Path(name).name != name:
            problems.append(f"{directory / MANIFEST}: names a file outside the archive: {name}")
        elif not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != size or file_sha256(path) != sha256:
            problems.append(f"{path}: altered (its SHA-256 is not the manifest's)")
    known = {name for name, _, _ in listed} | {MANIFEST, SIGNATURE}
    problems += [
        f"{path}: not in the manifest"
        for path in sorted(directory.iterdir())
        if path.name not in known
    ]
    return problems


def archive_directories(directory: Path) -> list[Path]:
    """``directory`` when it holds an archive, else the archives directly inside it."""
    if (directory / MANIFEST).exists():
        return [directory]
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if (p / MANIFEST).exists())


def ids(directory: Path, record: RecordTable, batch: int = 500) -> Iterator[list[int]]:
    """The ids of ``record``'s rows this archive holds, ``batch`` at a time, read as a
    stream from its file."""
    chunk: list[int] = []
    with (directory / f"{record.name}.jsonl").open("rb") as lines:
        for line in lines:
            chunk.append(int(json.loads(line)["id"]))
            if len(chunk) == batch:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def check_recorded(archive: ArchiveRecord, key: bytes) -> list[str]:
    """Every copy of a recorded archive: its manifest the one recorded, its signature and
    every file as the manifest says."""
    if archive.key_id != key_id(key):
        return [f"archive {archive.period}: signed with key {archive.key_id}, not {key_id(key)}"]
    problems = []
    for directory in archive.directories():
        manifest = directory / MANIFEST
        if not manifest.exists():
            problems.append(f"{manifest}: missing")
            continue
        if file_sha256(manifest) != archive.manifest_sha256:
            problems.append(f"{manifest}: not the manifest recorded when the archive was written")
            continue
        problems += verify(directory, key)
    return problems


# ------------------------------------------------------------------------ archiving


def archive_month(
    engine: Engine,
    destinations: list[Path],
    month: Month,
    key: bytes,
    now: datetime,
    by: str,
) -> Written:
    """Writes ``month``'s archive into each destination (``DEST/YYYY-MM``), checks every
    copy, and records it. Refused for a month not over at ``now``, a month already
    archived, or a destination already holding that month."""
    if month.end > now:
        raise ArchiveError(f"{month} is not over yet: only closed months are archived")
    if len({d.resolve() for d in destinations}) != len(destinations):
        raise ArchiveError("the destinations must be different directories")
    with engine.connect() as conn:
        done = {a.period: a for a in recorded_archives.recorded(conn)}
    if month in done:
        where = ", ".join(str(d) for d in done[month].destinations)
        raise ArchiveError(f"{month} is already archived (in {where})")
    finals = [destination / str(month) for destination in destinations]
    for final in finals:
        if final.exists():
            # Not recorded: left by a run that stopped before checking both copies.
            raise ArchiveError(
                f"{final} exists but is not recorded as an archive: an archive is never "
                "overwritten; move it away and archive the month again"
            )
    for destination in destinations:
        destination.mkdir(parents=True, exist_ok=True)

    first = _partial(destinations[0], month)
    first.mkdir()
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # Every file from one snapshot: a decision's result is in the archive with it.
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            manifest, rows = write_month(conn, first, month, key, now)
    first.rename(finals[0])
    fsync_path(destinations[0])
    for destination, final in zip(destinations[1:], finals[1:], strict=True):
        partial = _partial(destination, month)
        _copy(finals[0], partial)
        partial.rename(final)
        fsync_path(destination)
    for final in finals:
        problems = verify(final, key)
        if problems:
            raise ArchiveError(problems[0])
    digest = hashlib.sha256(manifest).hexdigest()
    with engine.connect() as conn:
        conn.execution_options(write=True)
        with conn.begin():
            recorded_archives.record(
                conn, month, [d.resolve() for d in destinations], digest, key_id(key), rows, now, by
            )
            audit(
                conn,
                now,
                by,
                "archive.write",
                str(month),
                {"rows": rows, "copies": [str(f) for f in finals]},
            )
    return Written(month, finals, digest, rows)


def months_to_archive(engine: Engine, now: datetime) -> list[Month]:
    """Every month over at ``now``, from the oldest record's, not archived yet."""
    with engine.connect() as conn:
        oldest = earliest(conn)
        done = {a.period for a in recorded_archives.recorded(conn)}
    if oldest is None:
        return []
    last_closed = Month.of(Month.of(now).start - timedelta(seconds=1))
    return [
        m for m in recorded_archives.months_between(Month.of(oldest), last_closed) if m not in done
    ]


__all__ = [
    "ArchiveError",
    "Written",
    "archive_directories",
    "archive_month",
    "check_recorded",
    "ids",
    "key_id",
    "load_key",
    "months_to_archive",
    "verify",
]
