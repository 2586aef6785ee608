"""The commands that work on the daemon's database refuse, in one line, a SQLite database
that is not there rather than make a new, empty one beside the daemon's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from middleware.store import Store
from tests.messages import patient
from tests.record_store import store_message, write_config

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)

COMMANDS = [
    ("held",),
    ("reagents", "trace", "LOT1"),
    ("outbox", "list"),
    ("outbox", "retry", "1", "--by", "lab-it"),
    ("backup", "{tmp}/backup"),
    ("purge", "--dry-run"),
    ("archive", "{tmp}/a", "{tmp}/b"),
    ("users", "list"),
    ("users", "add", "alice", "--role", "biologist", "--password-stdin"),
    ("tokens", "add", "lis-bridge", "--role", "lab-it"),
    ("audit", "verify"),
]


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIDDLEWARE_")}
    return subprocess.run(
        [sys.executable, "-m", "middleware", *args],
        cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: " ".join(argv[:2]))
def test_a_command_refuses_a_sqlite_database_not_there(
    tmp_path: Path, argv: tuple[str, ...]
) -> None:
    # As config/example.yaml says it: state_dir relative to the file, which is not where
    # the daemon's database is.
    etc = tmp_path / "etc" / "lis-middleware"
    etc.mkdir(parents=True)
    (etc / "middleware.yaml").write_text("state_dir: ../state\n")
    words = [word.format(tmp=tmp_path) for word in argv]
    done = cli(*words, "--config", str(etc / "middleware.yaml"), stdin=PASSWORD + "\n")
    command = " ".join(word for word in argv[:2] if not word.startswith(("{", "-", "L", "1")))
    database = (tmp_path / "etc" / "state" / "middleware.db").resolve()
    assert done.stderr == (
        f"lis-middleware {command}: no database at {database}: is state_dir right? "
        "(the daemon creates it at its first start)\n"
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["etc"]  # nothing made
    assert sorted(p.name for p in (tmp_path / "etc").iterdir()) == ["lis-middleware"]


def test_held_says_its_times_in_utc_and_stops_quietly_when_its_reader_goes(
    database_url: str, tmp_path: Path
) -> None:
    store = Store(database_url)
    for n in range(3):
        store_message(store, patient(f"P-{n}", "5.0"), NOW)  # no QC yet: held
    store.close()
    config = str(write_config(tmp_path, database_url))
    done = cli("held", "--config", config, "--format", "json")
    assert done.returncode == 0, done.stderr
    listed = [json.loads(line) for line in done.stdout.splitlines()]
    assert listed and {row["held_since"] for row in listed} == {NOW.isoformat()}
    for argv in (["held", "--format", "json"], ["purge", "--dry-run", "--format", "json"]):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIDDLEWARE_")}
        reader_gone = subprocess.Popen(
            [sys.executable, "-m", "middleware", *argv, "--config", config],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert reader_gone.stdout is not None and reader_gone.stderr is not None
        reader_gone.stdout.close()
        err = reader_gone.stderr.read().decode()
        assert reader_gone.wait(60) == 141, err
        assert "Traceback" not in err
