"""The engine's QC state as rows: a ``qc_tests`` row per instrument and test (a
:class:`TestQc`), a ``qc_lots`` row per control lot on it (a :class:`LotQc`).

They are read and written in the transaction that stores the result which changes them,
so the state is always what the database says: nothing to rebuild at start or after a
rollback, and a daemon that shares the database sees what another did. On PostgreSQL the
rows are read ``FOR UPDATE``: two daemons changing one test's state (one storing a
result, the other closing its corrective action) take turns rather than overwrite each
other. Each read is one indexed lookup per instrument, whatever the history.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Connection, DateTime, Insert, Table, bindparam, select

from middleware.engine import westgard
from middleware.engine.qc import (
    NO_LOT_QC,
    NO_QC,
    RESULTS_FOR_OWN_LIMITS,
    LevelState,
    LimitsProposal,
    LotQc,
    QcGate,
    Statistics,
    TestQc,
)
from middleware.engine.rules import Target
from middleware.store.direct import Direct
from middleware.store.schema import pending_conversions, qc_lots, qc_tests
from middleware.store.sql import new_only, upsert_in, utc

TestKey = tuple[str, str]  # instrument, test
LotKey = tuple[str, str, str]  # instrument, test, lot


# --- reading -------------------------------------------------------------------------------


def _by_instrument(keys: Iterable[tuple[str, ...]]) -> dict[str, set[str]]:
    wanted: dict[str, set[str]] = {}
    for key in keys:
        wanted.setdefault(key[0], set()).add(key[1])
    return wanted


def _locking(conn: Connection, query: Any) -> Any:
    return query.with_for_update() if conn.dialect.name == "postgresql" else query


# In the order of their keys: two transactions locking rows of the same tests lock them
# in the same order, and the second waits. Rows made afterwards, and the units of one
# batch, are locked later: a deadlock left is ended by PostgreSQL, and the store writer
# runs the unit it ended again.
_TESTS_QUERY = (
    select(qc_tests)
    .where(
        qc_tests.c.instrument == bindparam("instrument"),
        qc_tests.c.test_code.in_(bindparam("tests", expanding=True)),
    )
    .order_by(qc_tests.c.test_code)
)
# Every message reads them: on the driver's cursor (see store.direct).
_TESTS = Direct(_TESTS_QUERY)
_TESTS_FOR_UPDATE = Direct(_TESTS_QUERY.with_for_update())


#: updated_at of a row made empty, before anything was kept in it.
_NEVER = datetime(1970, 1, 1, tzinfo=UTC)


def kept(table: Table) -> ColumnElement[bool]:
    """The state rows something was kept in: on PostgreSQL a row is made empty for each
    test and lot a message names, to be locked (:func:`_lockable`), and what is shown of
    the QC must be the same as on SQLite, which makes none."""
    return table.c.updated_at > _NEVER


_MAKE_EMPTY = {table.name: Direct(new_only("postgresql", table)) for table in (qc_tests, qc_lots)}


def _lockable(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Make rows that a read FOR UPDATE on PostgreSQL did not find exist, to be read
    again: a row that does not exist yet locks nothing, and two transactions would each
    write their own first state, the second over the first. A row another transaction
    is making makes this one wait for it, and then read what it made. Only the missing
    ones: making every row first cost a statement per row and message."""
    if rows:
        _MAKE_EMPTY[table.name].executemany(conn, rows)


def load_tests(conn: Connection, keys: Iterable[TestKey]) -> dict[TestKey, TestQc]:
    """The stored state of each instrument and test wanted; one not stored yet is absent
    (on PostgreSQL it is made empty, and locked like the others)."""
    wanted = sorted(set(keys))
    found = _read_tests(conn, wanted)
    if conn.dialect.name == "postgresql" and len(found) < len(wanted):
        missing = [key for key in wanted if key not in found]
        _lockable(conn, qc_tests, [_test_row(key, NO_QC, _NEVER) for key in missing])
        found |= _read_tests(conn, missing)
    return found


def kept_tests(conn: Connection, instrument: str, tests: Iterable[str]) -> set[str]:
    """Those of ``tests`` whose QC state is kept for ``instrument``; nothing is made."""
    wanted = sorted(set(tests))
    if not wanted:
        return set()
    query = select(qc_tests.c.test_code).where(
        qc_tests.c.instrument == instrument, qc_tests.c.test_code.in_(wanted)
    )
    return set(conn.execute(query).scalars())


def _read_tests(conn: Connection, wanted: list[TestKey]) -> dict[TestKey, TestQc]:
    found: dict[TestKey, TestQc] = {}
    query = _TESTS_FOR_UPDATE if conn.dialect.name == "postgresql" else _TESTS
    for instrument, tests in sorted(_by_instrument(wanted).items()):
        for row in query.rows(conn, {"instrument": instrument, "tests": sorted(tests)}):
            found[(row.instrument, row.test_code)] = PARSED_TESTS.read(row, _test_qc)
    return found


_LOTS_QUERY = (
    select(qc_lots)
    .where(
        qc_lots.c.instrument == bindparam("instrument"),
        qc_lots.c.test_code.in_(bindparam("tests", expanding=True)),
        qc_lots.c.lot.in_(bindparam("lots", expanding=True)),
    )
    .order_by(qc_lots.c.test_code, qc_lots.c.lot)
)
_LOTS = Direct(_LOTS_QUERY)
_LOTS_FOR_UPDATE = Direct(_LOTS_QUERY.with_for_update())


def load_lots(conn: Connection, keys: Iterable[LotKey]) -> dict[LotKey, LotQc]:
    """The stored state of each control lot wanted; one not stored yet is absent (on
    PostgreSQL it is made empty, and locked like the others)."""
    wanted = set(keys)
    found = _read_lots(conn, wanted)
    if conn.dialect.name == "postgresql" and len(found) < len(wanted):
        missing = wanted - found.keys()
        _lockable(conn, qc_lots, [_lot_row(key, NO_LOT_QC, _NEVER) for key in sorted(missing)])
        found |= _read_lots(conn, missing)
    return found


def _read_lots(conn: Connection, wanted: set[LotKey]) -> dict[LotKey, LotQc]:
    found: dict[LotKey, LotQc] = {}
    query = _LOTS_FOR_UPDATE if conn.dialect.name == "postgresql" else _LOTS
    for instrument, tests in sorted(_by_instrument(wanted).items()):
        lots = sorted({lot for i, _, lot in wanted if i == instrument})
        params = {"instrument": instrument, "tests": sorted(tests), "lots": lots}
        for row in query.rows(conn, params):
            key = (row.instrument, row.test_code, row.lot)
            if key in wanted:
                found[key] = PARSED_LOTS.read(row, _lot_qc)
    return found


def lots_of(conn: Connection, instrument: str, test: str) -> dict[LotKey, LotQc]:
    """Every control lot kept for an instrument and test."""
    query = select(qc_lots).where(qc_lots.c.instrument == instrument, qc_lots.c.test_code == test)
    return {
        (row.instrument, row.test_code, row.lot): PARSED_LOTS.read(row, _lot_qc)
        for row in conn.execute(_locking(conn, query))
    }


def proposals(conn: Connection) -> list[LimitsProposal]:
    """Q3: control lots with 20 results in 20 runs whose own limits are not approved yet."""
    rows = conn.execute(
        select(qc_lots)
        .where(qc_lots.c.approved_mean.is_(None), qc_lots.c.results >= RESULTS_FOR_OWN_LIMITS)
        .order_by(qc_lots.c.instrument, qc_lots.c.test_code, qc_lots.c.lot)
    )
    out = []
    for row in rows:
        proposal = QcGate.proposal(
            row.instrument, row.test_code, row.lot, PARSED_LOTS.read(row, _lot_qc)
        )
        if proposal is not None:
            out.append(proposal)
    return out


# --- writing -------------------------------------------------------------------------------


def _saving(dialect: str, table: Table) -> Insert:
    """INSERT ... ON CONFLICT (key) DO UPDATE, built once per database and table."""
    statement = upsert_in(dialect, table)
    keys = [c.name for c in table.primary_key.columns]
    return statement.on_conflict_do_update(
        index_elements=keys,
        set_={c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys},
    )


#: Every QC message writes them: on the driver's cursor (see store.direct).
_SAVE = {
    table.name: Direct(functools.partial(_saving, table=table)) for table in (qc_tests, qc_lots)
}


def save_tests(conn: Connection, states: Mapping[TestKey, TestQc], at: datetime) -> None:
    if states:
        ordered = sorted(states.items())
        rows = [_test_row(key, state, at) for key, state in ordered]
        _SAVE[qc_tests.name].executemany(conn, rows)
        for row, (_, state) in zip(rows, ordered, strict=True):
            PARSED_TESTS.written(row, state)


def save_lots(conn: Connection, states: Mapping[LotKey, LotQc], at: datetime) -> None:
    if states:
        ordered = sorted(states.items())
        rows = [_lot_row(key, state, at) for key, state in ordered]
        _SAVE[qc_lots.name].executemany(conn, rows)
        for row, (_, state) in zip(rows, ordered, strict=True):
            PARSED_LOTS.written(row, state)


def conversion_pending(conn: Connection, name: str) -> bool:
    """Whether the conversion is still to do; on PostgreSQL the row is locked, so that a
    daemon starting at the same time waits, and then finds it done."""
    query = select(pending_conversions.c.name).where(pending_conversions.c.name == name)
    return conn.execute(_locking(conn, query)).first() is not None


def conversion_done(conn: Connection, name: str) -> None:
    conn.execute(pending_conversions.delete().where(pending_conversions.c.name == name))


# --- rows and states -------------------------------------------------------------------------


State = TypeVar("State")


class RecentStates(Generic[State]):
    """The states of a table's rows recently read or written, by the rows' content (every
    column but the key and ``updated_at``), up to ``size``.

    Every message reads the state rows of its tests and every control writes those of its
    lots; parsing them again (JSON, exact fractions written as text) took about a third
    of a QC message's time under the profiler. Keyed by everything the state is made
    from, an entry cannot go stale: a row another daemon changed, or one whose write
    rolled back, has other content and is parsed. States are immutable, so one object
    serves every reader; the writer and the readers of the API share the entries, hence
    the lock."""

    def __init__(self, table: Table, size: int) -> None:
        self._size = size
        left_out = {c.name for c in table.primary_key.columns} | {"updated_at"}
        self._columns = [c.name for c in table.columns if c.name not in left_out]
        self._times = [
            i for i, name in enumerate(self._columns) if isinstance(table.c[name].type, DateTime)
        ]
        self._states: OrderedDict[tuple[object, ...], State] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[object, ...]) -> State | None:
        with self._lock:
            state = self._states.get(key)
            if state is not None:
                self._states.move_to_end(key)
            return state

    def put(self, key: tuple[object, ...], state: State) -> None:
        with self._lock:
            self._states[key] = state
            self._states.move_to_end(key)
            if len(self._states) > self._size:
                self._states.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._states.clear()

    def _content(self, values: Mapping[str, Any]) -> tuple[object, ...]:
        found = [values[c] for c in self._columns]
        for i in self._times:  # SQLite gives times back without their zone; written, they have it.
            found[i] = utc(found[i])
        return tuple(found)

    def read(self, row: Any, parse: Callable[[Any], State]) -> State:
        """The state of a row read from the table: parsed only if not seen before."""
        key = self._content(row._mapping)
        state = self.get(key)
        if state is None:
            state = parse(row)
            self.put(key, state)
        return state

    def written(self, row: Mapping[str, Any], state: State) -> None:
        self.put(self._content(row), state)


#: Room for a laboratory's streams (an instrument and test, a control lot on it) several
#: times over, each written state taking an entry: about 1.4 kB each, 11 MB when full.
#: Least recently used go first; one of those read again is parsed again.
PARSED_TESTS: RecentStates[TestQc] = RecentStates(qc_tests, 4096)
PARSED_LOTS: RecentStates[LotQc] = RecentStates(qc_lots, 4096)


def _window(data: dict[str, Any]) -> westgard.Window:
    return westgard.Window(tuple(data["bands"]), tuple(Fraction(z) for z in data["zs"]))


def _window_data(window: westgard.Window) -> dict[str, Any]:
    return {"bands": list(window.bands), "zs": [str(z) for z in window.zs]}


def _stream(data: dict[str, Any]) -> westgard.Stream:
    run = data.get("run")
    if run is None:
        return westgard.Stream(tuple(data["bands"]))
    return westgard.Stream(
        tuple(data["bands"]),
        westgard.Run(
            run_id=run["id"],
            bands=tuple(run["bands"]),
            materials=tuple(
                ((material, lot), _window(window)) for material, lot, window in run["materials"]
            ),
            above=tuple((m, lot) for m, lot in run["above"]),
            below=tuple((m, lot) for m, lot in run["below"]),
            screen_open=run["screen_open"],
            rejected=run["rejected"],
            results=run["results"],
        ),
    )


def _stream_data(stream: westgard.Stream) -> dict[str, Any]:
    run = stream.run
    return {
        "bands": list(stream.bands),
        "run": None
        if run is None
        else {
            "id": run.run_id,
            "bands": list(run.bands),
            "materials": [[m, lot, _window_data(w)] for (m, lot), w in run.materials],
            "above": [list(key) for key in run.above],
            "below": [list(key) for key in run.below],
            "screen_open": run.screen_open,
            "rejected": run.rejected,
            "results": run.results,
        },
    }


def _test_qc(row: Any) -> TestQc:
    levels = {
        name: LevelState(
            datetime.fromisoformat(level["at"]),
            level["run"],
            level["status"],
            tuple(level["violations"]),
            datetime.fromisoformat(level["measured"]) if level.get("measured") else None,
            level.get("unusable", ""),
        )
        for name, level in json.loads(row.levels).items()
    }
    in_use = None if row.lots_in_use is None else frozenset(json.loads(row.lots_in_use))
    return TestQc(
        run_number=row.run_number,
        run_closed=row.run_closed,
        levels=levels,
        void_reason=row.void_reason,
        void_at=utc(row.void_at),
        corrective_action_since=utc(row.corrective_action_since),
        corrective_action_reason=row.corrective_action_reason,
        corrective_action_run=row.corrective_action_run,
        last_in_control_at=utc(row.last_in_control_at),
        accepted_run_at=utc(row.accepted_run_at),
        locked=row.locked,
        lots_in_use=in_use,
        stream=_stream(json.loads(row.westgard)),
        basis=row.basis,
        epoch=row.epoch,
    )


def _test_row(key: TestKey, state: TestQc, at: datetime) -> dict[str, Any]:
    levels = {
        name: {
            "at": level.at.isoformat(),
            "run": level.run,
            "status": level.status,
            "violations": list(level.violations),
            "measured": level.measured_at.isoformat() if level.measured_at else None,
            **({"unusable": level.unusable} if level.unusable else {}),
        }
        for name, level in state.levels.items()
    }
    return {
        "instrument": key[0],
        "test_code": key[1],
        "run_number": state.run_number,
        "run_closed": state.run_closed,
        "levels": json.dumps(levels, sort_keys=True),
        "void_reason": state.void_reason,
        "void_at": state.void_at,
        "corrective_action_since": state.corrective_action_since,
        "corrective_action_reason": state.corrective_action_reason,
        "corrective_action_run": state.corrective_action_run,
        "last_in_control_at": state.last_in_control_at,
        "accepted_run_at": state.accepted_run_at,
        "locked": state.locked,
        "lots_in_use": None if state.lots_in_use is None else json.dumps(sorted(state.lots_in_use)),
        "westgard": json.dumps(_stream_data(state.stream)),
        "basis": state.basis,
        "epoch": state.epoch,
        "updated_at": at,
    }


def _lot_qc(row: Any) -> LotQc:
    approved = None
    if row.approved_mean is not None and row.approved_sd is not None:
        approved = Target(mean=Decimal(row.approved_mean), sd=Decimal(row.approved_sd))
    return LotQc(
        material=row.material,
        window=_window(json.loads(row.window)),
        statistics=Statistics(row.results, Fraction(row.total), Fraction(row.squares)),
        runs=tuple(json.loads(row.runs)),
        cycle=Statistics(row.cycle_results, Fraction(row.cycle_total), Fraction(row.cycle_squares)),
        over_limit_cycles=row.over_limit_cycles,
        approved=approved,
        epoch=row.epoch,
    )


def _lot_row(key: LotKey, state: LotQc, at: datetime) -> dict[str, Any]:
    return {
        "instrument": key[0],
        "test_code": key[1],
        "lot": key[2],
        "material": state.material,
        "window": json.dumps(_window_data(state.window)),
        "results": state.statistics.n,
        "total": str(state.statistics.total),
        "squares": str(state.statistics.squares),
        "runs": json.dumps(list(state.runs)),
        "cycle_results": state.cycle.n,
        "cycle_total": str(state.cycle.total),
        "cycle_squares": str(state.cycle.squares),
        "over_limit_cycles": state.over_limit_cycles,
        "approved_mean": str(state.approved.mean) if state.approved else None,
        "approved_sd": str(state.approved.sd) if state.approved else None,
        "epoch": state.epoch,
        "updated_at": at,
    }
