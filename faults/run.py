"""``make faults``: the fault cases of faults/cases.py, each on SQLite and PostgreSQL
where it applies, and a table of what became of every result.

    .venv/bin/python faults/run.py [CASE ...] [--only sqlite|postgresql] [--kills 100]
        [--outage 120] [--seed 1] [--keep]

Each case runs the real daemon (its own process, a new database) against simulated
analysers and a simulated LIS, commits its fault during the stream, lets everything
recover, then accounts for every patient result the analysers had acknowledged:
delivered to the LIS as sent, held (by the rules, or a message the LIS refused and that
waits for a person), quarantined with its raw bytes, or lost. Lost, duplicated (accepted
by the LIS under two control ids, or stored twice) and altered (the LIS got another
value) must be 0; the exit status is 1 otherwise. PostgreSQL comes from
``MIDDLEWARE_TEST_POSTGRES_URL`` (its cases are skipped without it); the case
``postgres-restart`` restarts the local cluster with pg_ctlcluster, ``disk-full`` mounts a
small loop file system (root). Work directories are removed unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from faults.cases import CASES, Options  # noqa: E402
from faults.rig import Outcome  # noqa: E402
from middleware.daemon import configure_logging  # noqa: E402


@contextlib.contextmanager
def database(kind: str, workdir: Path) -> Iterator[str | None]:
    """A new database of ``kind`` for one case; None when PostgreSQL is not given."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'middleware.db'}"
        return
    admin = os.environ.get("MIDDLEWARE_TEST_POSTGRES_URL")
    if not admin:
        yield None
        return
    import psycopg

    name = f"mw_faults_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin.rpartition('/')[0]}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_case(name: str, kind: str, args: argparse.Namespace) -> tuple[Outcome, float]:
    case, _ = CASES[name]
    workdir = Path(tempfile.mkdtemp(prefix=f"faults-{name}-{kind}-"))
    started = time.monotonic()
    try:
        with database(kind, workdir) as url:
            if url is None:
                outcome = Outcome(name, kind, note="skipped: no MIDDLEWARE_TEST_POSTGRES_URL")
            else:
                options = Options(workdir, kind, url, args.kills, args.outage, args.seed)
                outcome = asyncio.run(case(options))
    except Exception as exc:  # a case that breaks is a line of the table, not the end
        traceback.print_exc()
        outcome = Outcome(name, kind, error=f"{type(exc).__name__}: {exc}")
    finally:
        if args.keep:
            print(f"  kept: {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return outcome, time.monotonic() - started


COLUMNS = ("case", "database", "sent", "delivered", "held", "quarantined", "lost",
           "duplicated", "altered", "QC stored/sent", "seconds", "note")  # fmt: skip


def row(outcome: Outcome, seconds: float) -> list[str]:
    note = outcome.note
    if outcome.error:
        note = f"FAILED: {outcome.error}" + (f"; {note}" if note else "")
    counts = (outcome.sent, outcome.delivered, outcome.held, outcome.quarantined,
              outcome.lost, outcome.duplicated, outcome.altered)  # fmt: skip
    return [outcome.case, outcome.database, *(f"{n:,}" for n in counts), outcome.controls,
            f"{seconds:.0f}", note]  # fmt: skip


def table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("cases", nargs="*", metavar="CASE", help=", ".join(CASES))
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    parser.add_argument("--kills", type=int, default=100, help="SIGKILLs of the sigkill case")
    parser.add_argument("--outage", type=float, default=120.0, help="seconds the LIS is down")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep each case's work directory")
    args = parser.parse_args()
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case {', '.join(unknown)}; known: {', '.join(CASES)}")
    # The simulators' own link logs: only what goes wrong on their side.
    configure_logging("error", "console")
    rows = []
    failed = False
    for name in args.cases or CASES:
        for kind in CASES[name][1]:
            if args.only not in (None, kind):
                continue
            print(f"{name} on {kind} ...", flush=True)
            outcome, seconds = run_case(name, kind, args)
            rows.append(row(outcome, seconds))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
            failed |= outcome.failed
    print()
    print(table(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
