"""Archives (D10): a closed month's records on two media, signed, checked, readable with
nothing but a JSON reader; on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from middleware.archive import (
    ArchiveError,
    archive_month,
    key_id,
    load_key,
    months_to_archive,
    verify,
)
from middleware.cli import main
from middleware.store import Store
from middleware.store.archives import Month, recorded
from middleware.store.database import HEAD
from tests.record_store import count, store_month, write_config

MARCH = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
MAY = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
KEY = b"0123456789abcdef0123456789abcdef"


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = Store(database_url)
    store_month(opened, MARCH, "MAR")
    store_month(opened, MAY, "MAY", "5.3")
    yield opened
    opened.close()


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_month_is_written_to_both_media_readable_and_recorded(
    store: Store, tmp_path: Path
) -> None:
    a, b = tmp_path / "media-a", tmp_path / "media-b"
    written = archive_month(store.engine, [a, b], Month(2026, 3), KEY, NOW, "alice")
    assert written.directories == [a / "2026-03", b / "2026-03"]
    assert verify(a / "2026-03", KEY) == [] and verify(b / "2026-03", KEY) == []
    for name in ("MANIFEST.json", "MANIFEST.sig", "schema.json", "FORMAT.md", "results.jsonl"):
        assert (a / "2026-03" / name).read_bytes() == (b / "2026-03" / name).read_bytes()

    # The month's rows, and only them, each table in its file.
    folder = a / "2026-03"
    messages = _lines(folder / "messages.jsonl")
    assert (
        len(messages) == count(store, "SELECT count(*) FROM messages WHERE text LIKE '%MAR-%'") + 1
    )
    results = _lines(folder / "results.jsonl")
    assert sorted(r["specimen_id"] for r in results) == ["MAR-1", "MAR-2"]
    assert all(str(r["stored_at"]).startswith("2026-03-02T08:0") for r in results)
    raw = _lines(folder / "raw_transmissions.jsonl")
    assert {base64.b64decode(str(r["data"])).decode() for r in raw} == {
        str(m["text"]) for m in messages
    }
    assert len(_lines(folder / "decisions.jsonl")) == 2
    assert len(_lines(folder / "qc_evaluations.jsonl")) == 2
    [delivered] = _lines(folder / "outbox.jsonl")  # the one the LIS accepted; not the other
    assert delivered["state"] == "delivered"
    assert [e["action"] for e in _lines(folder / "audit_log.jsonl")] == ["rules.reload"]

    manifest = json.loads((folder / "MANIFEST.json").read_text())
    assert manifest["period"] == "2026-03" and manifest["revision"] == HEAD
    assert manifest["key_id"] == key_id(KEY)
    listed = {f["name"]: f for f in manifest["files"]}
    assert listed["results.jsonl"]["rows"] == 2
    schema = json.loads((folder / "schema.json").read_text())
    columns = {c["name"]: c for c in schema["files"]["raw_transmissions.jsonl"]["columns"]}
    assert columns["data"]["encoding"].startswith("base64")
    assert schema["files"]["specimens.jsonl"]["month_by"].startswith("messages.received_at")

    [kept] = store.read(recorded)
    assert kept.period == Month(2026, 3) and kept.row_count == written.row_count
    assert kept.destinations == (a.resolve(), b.resolve()) and kept.verified_at is not None
    assert count(store, "SELECT count(*) FROM audit_log WHERE action = 'archive.write'") == 1


def test_open_months_and_months_archived_are_refused(store: Store, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    with pytest.raises(ArchiveError, match="not over yet"):
        archive_month(store.engine, [a, b], Month(2026, 6), KEY, NOW, "alice")
    archive_month(store.engine, [a, b], Month(2026, 3), KEY, NOW, "alice")
    with pytest.raises(ArchiveError, match="already archived"):
        archive_month(store.engine, [tmp_path / "c", tmp_path / "d"], Month(2026, 3), KEY, NOW, "x")
    # Every closed month from the oldest record's, not archived yet: April is empty and
    # still archived, so that the months archived follow each other.
    assert months_to_archive(store.engine, NOW) == [Month(2026, 4), Month(2026, 5)]


def test_an_altered_file_and_a_tampered_manifest_fail_verify(
    store: Store, tmp_path: Path, database_url: str
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    archive_month(store.engine, [a, b], Month(2026, 3), KEY, NOW, "alice")
    key_file = tmp_path / "archive.key"
    key_file.write_bytes(KEY + b"\n")
    config = write_config(tmp_path, database_url, archive={"key_file": "archive.key"})

    assert main(["archive", "verify", str(a / "2026-03"), "--config", str(config)]) == 0

    results = a / "2026-03" / "results.jsonl"
    results.write_bytes(results.read_bytes().replace(b"5.0", b"6.0"))
    assert verify(a / "2026-03", KEY) == [f"{results}: altered (its SHA-256 is not the manifest's)"]
    (b / "2026-03" / "decisions.jsonl").unlink()
    assert verify(b / "2026-03", KEY) == [f"{b / '2026-03' / 'decisions.jsonl'}: missing"]

    # A manifest made to agree with an altered file no longer matches its signature.
    manifest_path = b / "2026-03" / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"] = [f for f in manifest["files"] if f["name"] != "decisions.jsonl"]
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    [problem] = verify(b / "2026-03", KEY)
    assert problem.startswith(f"{manifest_path}: signature does not match")


def test_archive_verify_names_the_file_and_exits_1(
    store: Store, tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "archive.key"
    key_file.write_bytes(KEY)
    config = write_config(tmp_path, database_url, archive={"key_file": str(key_file)})
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["archive", str(a), str(b), "--period", "2026-03", "--config", str(config)]) == 0
    capsys.readouterr()
    altered = b / "2026-03" / "raw_transmissions.jsonl"
    altered.write_bytes(altered.read_bytes()[:-10])
    assert main(["archive", "verify", str(b), "--key", str(key_file)]) == 1
    assert f"{altered}: altered" in capsys.readouterr().out
    signature = a / "2026-03" / "MANIFEST.sig"
    signature.write_text(signature.read_text().replace('"signature": "', '"signature": "0'))
    assert main(["archive", "verify", str(a / "2026-03"), "--key", str(key_file)]) == 1
    assert "signature does not match" in capsys.readouterr().out


def test_a_key_is_made_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match=r"archive\.key"):  # checking makes none
        load_key(None, tmp_path / "state")
    key = load_key(None, tmp_path / "state", create=True)
    path = tmp_path / "state" / "archive.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) == 64 and load_key(None, tmp_path / "state", create=True) == key
    assert load_key(None, tmp_path / "state") == key


def test_the_operations_guide_names_every_file_of_an_archive() -> None:
    from middleware.store.records import RECORD_TABLES

    guide = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    [row] = [line for line in guide.splitlines() if line.startswith("| `<table>.jsonl` |")]
    assert ", ".join(f"`{record.name}`" for record in RECORD_TABLES) in row
