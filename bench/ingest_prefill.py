"""A database that already holds history, for the ingest bench: N patient results of the
bench's mix, written straight into the tables the daemon writes, with plain SQL.

The schema comes from the daemon's own migrations (``Store(url)`` opened once and
closed); the rows are what the daemon would have stored for the same messages, as far as
a benchmark needs them:

- every message in ``messages`` (settled) with its bytes in ``raw_transmissions``
  (outcome ``message``), and each transfer's closing EOT as a raw row of its own
  (outcome ``control``), as the pipeline keeps them;
- ``specimens``, patient ``results``, ``control_results`` (the generic driver's reading:
  material = sample id = lot, no lot or level of its own);
- a ``qc_evaluations`` row per control result (all accepted: the mix keeps QC in
  control);
- ``decisions`` as the shipped rules would make them for these values: release, with
  notes outside the reference range; hold for a critical value or a failed delta check,
  followed half an hour later by a person's release (except in the last two hours, which
  stay in ``open_holds``); bracketed tests (K, NA) held until the next QC of their
  analyser and then released.

Times are spread backwards from now at ``per_day`` patient results a day. The QC state
rows (``qc_tests``, ``qc_lots``) are not written: the daemon makes each as its first
result comes, and their size does not depend on the history.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ingest_mix import EOT, Kind, Limits, Patients, Plan, Sample, Stream, Value, frames

from middleware.engine.rules import Rules
from middleware.store import Store
from middleware.store.ingest import content_hash
from middleware.store.schema import metadata

REVIEW_AFTER = timedelta(minutes=30)
UNREVIEWED = timedelta(hours=2)

COLUMNS: dict[str, tuple[str, ...]] = {
    "messages": (
        "id", "instrument", "connection", "sender", "content_sha256", "record_count", "text",
        "received_at", "problems", "settled_at",
    ),
    "raw_transmissions": (
        "id", "connection", "instrument", "direction", "received_at", "data", "sha256",
        "size", "message_id", "duplicate", "connection_id", "stream_offset",
        "last_received_at", "outcome",
    ),
    "specimens": (
        "id", "specimen_id", "patient_id", "specimen_type", "container", "collected_at",
        "received_at", "analysed_at", "first_message_id",
    ),
    "results": (
        "id", "message_id", "specimen_id", "patient_id", "test_code", "instrument_test_code",
        "value_text", "units", "reference_range", "abnormal_flags", "instrument_flags",
        "status", "operator", "instrument", "module", "comments", "dilution", "value_number",
        "censor", "sequence", "completed_at", "stored_at",
    ),
    "decisions": (
        "id", "result_id", "instrument", "test_code", "specimen_id", "action", "reasons",
        "findings", "urgent", "comments", "decided_at", "decided_by",
    ),
    "qc_evaluations": (
        "id", "control_result_id", "instrument", "test_code", "run", "level", "z",
        "target_mean", "target_sd", "provisional", "status", "violations", "warnings",
        "evaluated_at",
    ),
    "open_holds": ("result_id", "instrument", "test_code", "held_since"),
    "qc_events": ("id", "instrument", "test_code", "kind", "at", "recorded_by"),
}  # fmt: skip
COLUMNS["control_results"] = (*COLUMNS["results"], "control_material", "lot", "level")
#: Insert order (references first).
ORDER = (
    "messages",
    "raw_transmissions",
    "specimens",
    "results",
    "control_results",
    "decisions",
    "qc_evaluations",
    "open_holds",
    "qc_events",
)


@dataclass(slots=True)
class Prefilled:
    results: int = 0
    controls: int = 0
    messages: int = 0
    decisions: int = 0
    open_holds: int = 0
    seconds: float = 0.0
    next_patients: dict[str, int] = field(default_factory=dict)
    span_days: float = 0.0


class _Rows:
    """Rows waiting for the next batch, and the ids handed out so far."""

    def __init__(self, postgres: bool) -> None:
        self.postgres = postgres
        self.tables: dict[str, list[tuple[Any, ...]]] = {t: [] for t in ORDER}
        self.ids: dict[str, int] = {t: 0 for t in ORDER}

    def next_id(self, table: str) -> int:
        self.ids[table] += 1
        return self.ids[table]

    def ts(self, moment: datetime) -> str:
        # As SQLAlchemy stores a DateTime on SQLite; with the zone on PostgreSQL.
        text = moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        return text + "+00" if self.postgres else text

    def pending(self) -> int:
        return sum(len(rows) for rows in self.tables.values())


def _finding(code: str, message: str, action: str = "hold", urgent: bool = False) -> dict[str, Any]:
    return {"code": code, "message": message, "action": action, "urgent": urgent, "comment": ""}


class History:
    """Writes the bench's mix as the daemon would have stored it."""

    def __init__(self, rows: _Rows, rules: Rules, end: datetime) -> None:
        self.rows = rows
        self.end = end
        self.delta = {d.test: d for d in rules.delta_checks}
        self.previous: dict[tuple[str, str], tuple[float, datetime]] = {}
        self.bracketed_waiting: dict[str, list[tuple[int, str, str, str]]] = {}
        self.control_specimens: set[str] = set()
        self.offsets: dict[str, int] = {}
        self.connection_ids: dict[str, str] = {}
        self.counts = Prefilled()

    def write(self, sample: Sample) -> None:
        rows, plan = self.rows, sample.plan
        received = sample.completed + timedelta(seconds=2)
        stored = received + timedelta(milliseconds=50)
        records = sample.records()
        text = "\r".join(records)
        raw = b"\x05" + b"".join(frames(records))
        message_id = rows.next_id("messages")
        connection = f"{plan.name}/127.0.0.1:40{plan.index:03d}"
        connection_id = self.connection_ids.setdefault(
            plan.name, hashlib.sha256(plan.name.encode()).hexdigest()[:16]
        )
        offset = self.offsets.get(plan.name, 0)
        self.offsets[plan.name] = offset + len(raw) + 1
        ts = rows.ts
        rows.tables["messages"].append(
            (message_id, plan.name, connection, plan.sender, content_hash(plan.name, text),
             len(records), text, ts(received), "", ts(received + timedelta(milliseconds=100)))
        )  # fmt: skip
        raw_rows = rows.tables["raw_transmissions"]
        raw_rows.append(
            (rows.next_id("raw_transmissions"), connection, plan.name, "in", ts(received), raw,
             hashlib.sha256(raw).hexdigest(), len(raw), message_id, False, connection_id,
             offset, ts(received + timedelta(milliseconds=40)), "message")
        )  # fmt: skip
        eot_at = ts(received + timedelta(milliseconds=120))
        raw_rows.append(
            (rows.next_id("raw_transmissions"), connection, plan.name, "in", eot_at, EOT,
             hashlib.sha256(EOT).hexdigest(), 1, None, False, connection_id, offset + len(raw),
             eot_at, "control")
        )  # fmt: skip
        self.counts.messages += 1
        if sample.control is None:
            self._patient(sample, message_id, stored)
        else:
            self._control(sample, message_id, stored)

    def _specimen(self, sample: Sample, message_id: int) -> None:
        person = sample.person
        self.rows.tables["specimens"].append(
            (self.rows.next_id("specimens"), sample.specimen_id,
             person.patient_id if person else "", sample.plan.kind.specimen_type, "",
             self.rows.ts(sample.collected) if sample.collected else None, None, None,
             message_id)
        )  # fmt: skip

    def _result_row(
        self,
        table: str,
        sample: Sample,
        message_id: int,
        stored: datetime,
        i: int,
        v: Value,
        reference: str,
        patient: str,
    ) -> tuple[Any, ...]:
        ts = self.rows.ts
        return (
            self.rows.next_id(table), message_id, sample.specimen_id, patient, v.spec.code,
            v.spec.code, v.text, v.spec.units, reference, v.flag, "", "F", "", sample.plan.name,
            "", "", "", v.text, "", i, ts(sample.completed), ts(stored),
        )  # fmt: skip

    def _patient(self, sample: Sample, message_id: int, stored: datetime) -> None:
        rows, plan, person = self.rows, sample.plan, sample.person
        assert person is not None
        self._specimen(sample, message_id)
        kind = plan.kind
        for i, v in enumerate(sample.values, start=1):
            limits = v.spec.by_sex[person.sex]
            row = self._result_row(
                "results", sample, message_id, stored, i, v,
                f"{limits.low:g}-{limits.high:g}", person.patient_id,
            )  # fmt: skip
            rows.tables["results"].append(row)
            result_id = row[0]
            self.counts.results += 1
            findings = self._findings(sample, v, limits)
            held = any(f["action"] == "hold" for f in findings)
            code = v.spec.code
            if code in kind.bracketed:
                waits = "bracketed QC: waits for the QC that closes its run"
                findings.append(_finding("awaiting-closing-qc", waits))
            self._decide(result_id, sample, code, findings, stored, "engine")
            if code in kind.bracketed and not held:
                self.bracketed_waiting.setdefault(plan.name, []).append(
                    (result_id, code, sample.specimen_id, plan.name)
                )
            if held:
                if self.end - stored > UNREVIEWED:
                    kept = [f | {"action": "release"} for f in findings if f["action"] == "hold"]
                    self._decide(result_id, sample, code, kept, stored + REVIEW_AFTER, "reviewer")
                else:
                    rows.tables["open_holds"].append((result_id, plan.name, code, rows.ts(stored)))
                    self.counts.open_holds += 1
            if code in self.delta:
                self.previous[(person.patient_id, code)] = (v.number, sample.completed)

    def _findings(self, sample: Sample, v: Value, limits: Limits) -> list[dict[str, Any]]:
        out = []
        shown = f"{v.spec.code} {v.text}"
        if v.flag in ("LL", "HH"):
            message = f"the analyser marked the result {v.flag}"
            out.append(_finding(f"flag:{v.flag}", message, urgent=True))
        if v.spec.ruled:
            high, low = limits.critical_high, limits.critical_low
            if high is not None and v.number >= high:
                message = f"{shown} at or above the critical limit {high}"
                out.append(_finding("critical-high", message, urgent=True))
            if low is not None and v.number <= low:
                message = f"{shown} at or below the critical limit {low}"
                out.append(_finding("critical-low", message, urgent=True))
            reference = f"({limits.low}-{limits.high})"
            if v.number > limits.high:
                message = f"above the reference range {reference}"
                out.append(_finding("above-reference", message, "release"))
            if v.number < limits.low:
                message = f"below the reference range {reference}"
                out.append(_finding("below-reference", message, "release"))
        check = self.delta.get(v.spec.code)
        person = sample.person
        if check is None or person is None:
            return out
        before = self.previous.get((person.patient_id, v.spec.code))
        window = timedelta(hours=float(check.window_hours))
        if before is None or sample.completed - before[1] > window:
            return out
        change = v.number - before[0]
        if check.absolute is not None and abs(change) > float(check.absolute):
            message = f"changed by {change:+.2f} since {before[0]} (limit {check.absolute})"
            out.append(_finding("delta", message))
        elif check.percent is not None and before[0]:
            percent = abs(change) / abs(before[0]) * 100
            if percent > float(check.percent):
                message = f"changed by {percent:.0f}% since {before[0]} (limit {check.percent}%)"
                out.append(_finding("delta", message))
        return out

    def _decide(
        self,
        result_id: int,
        sample: Sample,
        code: str,
        findings: list[dict[str, Any]],
        at: datetime,
        by: str,
    ) -> None:
        rows = self.rows
        held = any(f["action"] == "hold" for f in findings)
        rows.tables["decisions"].append(
            (rows.next_id("decisions"), result_id, sample.plan.name, code, sample.specimen_id,
             "hold" if held else "release",
             ",".join(f["code"] for f in findings if f["action"] != "release"),
             json.dumps(findings), any(f["urgent"] for f in findings), "", rows.ts(at), by)
        )  # fmt: skip
        self.counts.decisions += 1

    def _control(self, sample: Sample, message_id: int, stored: datetime) -> None:
        rows, plan, control = self.rows, sample.plan, sample.control
        assert control is not None
        if sample.specimen_id not in self.control_specimens:
            self.control_specimens.add(sample.specimen_id)
            self._specimen(sample, message_id)
        for i, v in enumerate(sample.values, start=1):
            row = self._result_row("control_results", sample, message_id, stored, i, v, "", "")
            rows.tables["control_results"].append((*row, sample.specimen_id, "", ""))
            self.counts.controls += 1
            mean, sd = control.targets[v.spec.code]
            rows.tables["qc_evaluations"].append(
                (rows.next_id("qc_evaluations"), row[0], plan.name, v.spec.code,
                 f"{plan.name}/{v.spec.code}/{sample.qc_run + 1}", control.level,
                 f"{v.z:.4f}", f"{mean:g}", f"{sd:g}", True, "accept", "", "", rows.ts(stored))
            )  # fmt: skip
        # The closing QC of a bracketed run releases the patients waiting for it (once the
        # last level is in).
        if control is plan.kind.controls[-1]:
            for result_id, code, specimen_id, _ in self.bracketed_waiting.pop(plan.name, []):
                rows.tables["decisions"].append(
                    (rows.next_id("decisions"), result_id, plan.name, code, specimen_id,
                     "release", "", "[]", False, "", rows.ts(stored), "engine")
                )  # fmt: skip
                self.counts.decisions += 1


def prefill(
    url: str,
    plans: Sequence[Plan],
    kinds: dict[str, Kind],
    rules: Rules,
    patients: Patients,
    results: int,
    per_day: int,
    batch: int = 10_000,
    say: Callable[[str], None] = print,
) -> Prefilled:
    """Fill the (new, empty) database at ``url`` with ``results`` patient results."""
    started = time.perf_counter()
    Store(url).close()  # the daemon's migrations
    postgres = url.startswith("postgresql")
    rows = _Rows(postgres)
    end = datetime.now(UTC) - timedelta(minutes=1)
    per_step = sum(len(p.panel) for p in plans)
    steps = max(1, math.ceil(results / per_step))
    span = timedelta(days=results / per_day)
    tick = span / steps
    history = History(rows, rules, end)
    streams = [
        Stream(p, patients, random.Random(1000 + p.index), f"H{p.index:02d}-") for p in plans
    ]
    have_open_holds = "open_holds" in metadata.tables
    connection, placeholder = _connect(url)
    try:
        if not postgres:
            connection.execute("PRAGMA synchronous=OFF")
            connection.execute("PRAGMA foreign_keys=OFF")
        start = end - span
        for stream in streams:
            for sample in stream.qc(lambda: start - timedelta(minutes=5)):
                history.write(sample)
        done = 0
        step = 0
        while done < results:
            base = start + tick * step
            for stream in streams:
                if done >= results:
                    break
                at = base + tick * (stream.plan.index / (len(streams) + 1))
                history.write(stream.patient(at))
                done += len(stream.plan.panel)
                if stream.samples % stream.qc_every == 0:
                    after = at + tick / (2 * len(streams) + 2)
                    for sample in stream.qc(lambda: after):  # noqa: B023
                        history.write(sample)
            step += 1
            if rows.pending() >= batch:
                _flush(connection, placeholder, rows, have_open_holds)
        for stream in streams:
            if stream.samples % stream.qc_every:
                for sample in stream.qc(lambda: end - timedelta(seconds=30)):
                    history.write(sample)
        _flush(connection, placeholder, rows, have_open_holds)
        if postgres:
            _fix_sequences(connection)
        else:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
    counts = history.counts
    counts.seconds = time.perf_counter() - started
    counts.next_patients = dict(patients.next)
    counts.span_days = span.total_seconds() / 86400
    say(
        f"  prefill: {counts.results:,} patient and {counts.controls:,} control results, "
        f"{counts.messages:,} messages, {counts.decisions:,} decisions over "
        f"{counts.span_days:.1f} days, in {counts.seconds:.1f} s"
    )
    return counts


def _connect(url: str) -> tuple[Any, str]:
    if url.startswith("postgresql"):
        import psycopg

        return psycopg.connect(url), "%s"
    path = url.removeprefix("sqlite:///")
    return sqlite3.connect(path), "?"


def _flush(connection: Any, placeholder: str, rows: _Rows, have_open_holds: bool) -> None:
    """One transaction for everything waiting."""
    cursor = connection.cursor()
    for table in ORDER:
        pending = rows.tables[table]
        if not pending:
            continue
        if table == "open_holds" and not have_open_holds:
            pending.clear()
            continue
        columns = COLUMNS[table]
        sql = (
            f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join([placeholder] * len(columns))})"
        )
        cursor.executemany(sql, pending)
        pending.clear()
    connection.commit()


def _fix_sequences(connection: Any) -> None:
    """Rows were written with their ids: the id sequences must go on after them."""
    for table in ORDER:
        if table == "open_holds":
            continue
        connection.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table} "
            "HAVING max(id) IS NOT NULL"
        )
    connection.commit()
    connection.autocommit = True
    # What autovacuum would have done long since in a database that grew to this size.
    connection.execute("VACUUM ANALYZE")
    # And written it all out: the run should not pay for flushing the prefill.
    connection.execute("CHECKPOINT")
