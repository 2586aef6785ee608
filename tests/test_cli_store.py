"""The commands that work on the daemon's database refuse, in one line, a SQLite database
that is not there rather than make a new, empty one beside the daemon's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"

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
