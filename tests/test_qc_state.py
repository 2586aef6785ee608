"""The QC state kept in the store: the engine decides the same with or without restarts,
whatever the age of what it remembers; a rolled-back write leaves no state behind; two
daemons on one database act on each other's QC."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, select, text

import drivers
from middleware.assessment import QC_STATE_CONVERSION, QcBook, assess_message, convert_history
from middleware.astm.records import decode_message
from middleware.engine import qc as engine_qc
from middleware.engine import westgard
from middleware.engine.engine import Engine
from middleware.engine.qc import LevelState, LotQc, QcGate, Statistics
from middleware.engine.rules import Rules, Target, load_rules
from middleware.store import Store, ingest, qc_state, reading
from middleware.store.database import migrate, open_engine
from middleware.store.ingest import Delivery, store_delivery
from middleware.store.schema import (
    messages,
    pending_conversions,
    qc_evaluations,
    qc_lots,
    qc_tests,
)
from middleware.store.sql import utc
from middleware.web.roles import Role
from tests import credentials
from tests.conftest import ROOT, _postgres_admin_url
from tests.daemon import DaemonProcess, connect, free_port, query
from tests.messages import patient, qc
from tests.peer import StreamPeer, send_message
from tests.test_api import wait_until_listening
from tests.test_server_settings import _for_new_sessions

RULES = load_rules(ROOT / "rules")
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
TP_LOTS = ("CC-45781", "CC-45782")  # total protein, default rule set (10x among its rules)


def _tp_target(rules: Rules, lot: str) -> tuple[Decimal, Decimal]:
    for material in rules.control_materials:
        for found in material.lots:
            if found.lot == lot:
                target = found.targets["TP"]
                return Decimal(target.mean), Decimal(target.sd)
    raise AssertionError(lot)


def _tp_qc(at: datetime, z_1: Decimal, z_2: Decimal) -> list[str]:
    stamp = f"{at:%Y%m%d%H%M%S}"
    lines = ["H|\\^&|||CHEM-1|||||||Q|LIS2-A2", "P|1"]
    for number, (lot, z) in enumerate(zip(TP_LOTS, (z_1, z_2), strict=True), start=1):
        mean, sd = _tp_target(RULES, lot)
        lines += [f"O|{number}|{lot}||^^^TP|R", f"R|1|^^^TP|{mean + z * sd}|g/L||N||F||||{stamp}"]
    return [*lines, "L|1|N"]


def _tp_patient(specimen: str, value: str, at: datetime) -> list[str]:
    return [
        "H|\\^&|||CHEM-1|||||||P|LIS2-A2",
        "P|1||PAT-" + specimen,
        f"O|1|{specimen}||^^^TP|R",
        f"R|1|^^^TP|{value}|g/L||N||F||||{at:%Y%m%d%H%M%S}",
        "L|1|N",
    ]


def _days() -> list[tuple[datetime, list[str]]]:
    """Twelve days of total protein: each morning both levels, level 1 a third of an SD
    above its mean, level 2 just below its own, then a patient. Level 1's tenth result
    on the same side completes 10x, over a window that started nine days before."""
    out = []
    for day in range(12):
        morning = T0 + timedelta(days=day)
        out.append((morning, _tp_qc(morning, Decimal("0.33"), Decimal("-0.1"))))
        later = morning + timedelta(hours=1)
        out.append((later, _tp_patient(f"S{day}", "70", later)))
    return out


def _store(conn: Connection, engine: Engine, lines: list[str], now: datetime) -> ingest.Stored:
    driver = drivers.get("generic", None, "chem-1")
    reading = driver.read(decode_message(lines).records).in_timezone(UTC)
    delivery = Delivery("c", "chem-1", b"raw", now, "\r".join(lines), len(lines), reading)
    stored = store_delivery(conn, delivery, now)
    assess_message(conn, engine, stored, reading, now)
    return stored


def _outcomes(store: Store) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    def read(conn: Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        evaluations = conn.execute(
            select(
                qc_evaluations.c.run,
                qc_evaluations.c.level,
                qc_evaluations.c.status,
                qc_evaluations.c.violations,
            ).order_by(qc_evaluations.c.id)
        )
        decisions = [
            (row["specimen_id"], row["action"], row["reasons"])
            for row in reading.latest_decisions(conn)
        ]
        return [tuple(row) for row in evaluations], decisions

    return store.read(read)


def _run(url: str, restart: bool) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    store = Store(url)
    try:
        for now, lines in _days():
            if restart:  # a new process: a new store and a new engine, nothing else
                store.close()
                _forget_parsed_states()
                store = Store(url)
            engine = Engine(load_rules(ROOT / "rules")) if restart else ENGINE
            asyncio.run(_write(store, partial(_store, engine=engine, lines=lines, now=now)))
        return _outcomes(store)
    finally:
        store.close()


ENGINE = Engine(RULES)


def _forget_parsed_states() -> None:
    """What a new process starts without: every state row is parsed from its text."""
    qc_state.PARSED_TESTS.clear()
    qc_state.PARSED_LOTS.clear()


async def _write(store: Store, work: Callable[[Connection], object]) -> object:
    return await store.write(work)


def test_after_restarts_the_engine_decides_as_without_them(
    tmp_path: Path, database_url: str
) -> None:
    expected = _run(f"sqlite:///{tmp_path / 'reference.db'}", restart=False)
    evaluations, decisions = expected
    # each level's tenth result on its side, nine days after the first, completes 10x
    rejected = [e for e in evaluations if e[2] == "reject"]
    assert rejected[:2] == [
        ("chem-1/TP/10", "1", "reject", "10x"),
        ("chem-1/TP/10", "2", "reject", "10x"),
    ]
    held = {specimen: reasons for specimen, action, reasons in decisions if action == "hold"}
    assert list(held) == ["S9", "S10", "S11"]
    assert held["S9"] == "corrective-action-open,qc-rejected:10x"
    assert _run(database_url, restart=True) == expected


def test_a_rolled_back_batch_leaves_no_qc_state_behind(tmp_path: Path, database_url: str) -> None:
    lines = _tp_qc(T0, Decimal("0.5"), Decimal("0.5"))

    def state(store: Store) -> tuple[object, object]:
        keys = [("chem-1", "TP")]
        return store.read(
            lambda conn: (
                qc_state.load_tests(conn, keys),
                qc_state.load_lots(conn, [("chem-1", "TP", lot) for lot in TP_LOTS]),
            )
        )

    once = Store(f"sqlite:///{tmp_path / 'once.db'}")
    asyncio.run(_write(once, lambda conn: _store(conn, ENGINE, lines, T0)))
    subject = Store(database_url)

    def bad(conn: Connection) -> None:
        conn.execute(text("INSERT INTO nowhere VALUES (1)"))

    async def batch() -> list[object]:
        return await asyncio.gather(
            subject.write(lambda conn: _store(conn, ENGINE, lines, T0)),
            subject.write(bad),
            return_exceptions=True,
        )

    try:
        stored, failed = asyncio.run(batch())
        assert isinstance(stored, ingest.Stored) and isinstance(failed, Exception)
        # The good unit ran twice (in the failed batch, then alone); its QC counts once.
        expected = state(once)
        assert expected[0] and len(expected[1]) == 2  # type: ignore[arg-type]
        assert state(subject) == expected
        rows = subject.read(lambda c: c.execute(select(qc_lots.c.results)).scalars().all())
        assert rows == [1, 1]
        assert subject.read(lambda c: len(c.execute(select(qc_tests)).all())) == 1
    finally:
        once.close()
        subject.close()


def test_a_database_kept_before_qc_state_gets_the_same_state_once(
    tmp_path: Path, database_url: str
) -> None:
    store = Store(database_url)
    try:
        for now, lines in _days():
            asyncio.run(_write(store, partial(_store, engine=ENGINE, lines=lines, now=now)))

        def everything(conn: Connection) -> tuple[list[tuple[Any, ...]], ...]:
            return tuple(
                sorted(tuple(row)[:-1] for row in conn.execute(select(table)))
                for table in (qc_tests, qc_lots)
            )

        live = store.read(everything)
        assert live[0] and live[1]

        def as_before(conn: Connection) -> None:
            conn.execute(qc_tests.delete())
            conn.execute(qc_lots.delete())
            conn.execute(pending_conversions.insert(), {"name": QC_STATE_CONVERSION, "since": T0})

        asyncio.run(_write(store, as_before))
        replayed = asyncio.run(_write(store, partial(convert_history, engine=ENGINE)))
        assert replayed == 24
        assert store.read(everything) == live
        # once: the next start finds nothing to do
        assert asyncio.run(_write(store, partial(convert_history, engine=ENGINE))) is None
    finally:
        store.close()


def test_the_migration_asks_for_the_conversion_only_where_messages_are_kept(
    tmp_path: Path, empty_database_url: str
) -> None:
    empty = open_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    engine = open_engine(empty_database_url)
    try:
        migrate(empty)
        with empty.connect() as conn:
            assert not qc_state.conversion_pending(conn, QC_STATE_CONVERSION)
        migrate(engine, "0006")
        with engine.begin() as conn:
            conn.execute(
                messages.insert(),
                {"instrument": "chem-1", "connection": "c", "content_sha256": "x",
                 "record_count": 2, "text": "H|\\^&\rL|1|N", "received_at": T0},
            )  # fmt: skip
        migrate(engine)
        with engine.connect() as conn:
            assert qc_state.conversion_pending(conn, QC_STATE_CONVERSION)
    finally:
        empty.dispose()
        engine.dispose()


def test_qc_states_kept_before_runs_closed_otherwise_are_carried_over(
    empty_database_url: str,
) -> None:
    engine = open_engine(empty_database_url)
    try:
        migrate(engine, "0018")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO qc_tests (instrument, test_code, run_number, last_was_patient, "
                    "levels, void_reason, corrective_action_reason, last_in_control_at, locked, "
                    "westgard, basis, epoch, updated_at) VALUES ('chem-1', 'GLU', 4, :closed, "
                    "'{}', '', '', :at, '', :westgard, '', 0, :at)"
                ),
                {"closed": True, "at": T0, "westgard": json.dumps({"bands": [], "run": None})},
            )
        migrate(engine)
        with engine.connect() as conn:
            state = qc_state.load_tests(conn, [("chem-1", "GLU")])[("chem-1", "GLU")]
        assert (state.run_number, state.run_closed) == (4, True)
        # A failure reviews from the last time QC was in control, as it did before.
        assert state.accepted_run_at == state.last_in_control_at == T0
        assert state.corrective_action_run == ""
    finally:
        engine.dispose()


def test_a_corrective_action_closed_on_one_daemon_releases_holds_another_owns(
    tmp_path: Path, database_url: str
) -> None:
    ports = {name: (free_port(), free_port()) for name in ("a", "b")}
    daemons = {}
    for name, instrument in (("a", "chem-1"), ("b", "chem-2")):
        (tmp_path / name).mkdir()
        analyser_port, api_port = ports[name]
        daemons[name] = DaemonProcess(
            tmp_path / name,
            [{"name": instrument, "transport": "tcp-server", "host": "127.0.0.1",
              "port": analyser_port}],
            database_url=database_url, node_name=f"node-{name}", rules_dir=str(ROOT / "rules"),
            api={"host": "127.0.0.1", "port": api_port},
        )  # fmt: skip

    async def analyser(port: int, *messages: list[bytes]) -> None:
        peer = StreamPeer(*await connect(port))
        for message in messages:
            await send_message(peer, message)
        await peer.close()

    for daemon in daemons.values():
        daemon.start()
    try:
        wait_until_listening(ports["b"][1])
        chem_1 = ports["a"][0]
        # on daemon a's instrument: QC in control, then 1-3s, then a patient held for it
        asyncio.run(analyser(chem_1, qc("5.2", "15.6"), qc("5.7", "15.6"), patient("S1", "5.0")))
        [(action_id,)] = query(database_url, "SELECT id FROM corrective_actions")
        close = f"http://127.0.0.1:{ports['b'][1]}/api/corrective-actions/{action_id}/close"
        body = {"action_taken": "new calibration"}
        bob = credentials.bearer(database_url, Role.TECHNICIAN, "bob")
        early = httpx.post(close, json=body, headers=bob, timeout=10)
        assert early.status_code == 409 and "not in control again" in early.json()["detail"]
        asyncio.run(analyser(chem_1, qc("5.25", "15.5")))  # the re-run, on daemon a
        closed = httpx.post(close, json=body, headers=bob, timeout=10)  # closed on daemon b
        assert closed.status_code == 200, closed.text
        assert len(closed.json()["released"]) == 1
        # daemon a decides the next patient under the state daemon b changed
        asyncio.run(analyser(chem_1, patient("S2", "5.1")))
    finally:
        for daemon in daemons.values():
            assert daemon.stop() == 0
    decisions = query(
        database_url,
        "SELECT r.specimen_id, d.action, d.reasons, d.decided_by FROM decisions d "
        "JOIN results r ON r.id = d.result_id ORDER BY d.id",
    )
    assert decisions == [
        ("S1", "hold", "corrective-action-open,qc-rejected:1-3s", "engine"),
        ("S1", "hold", "corrective-action-open", "engine"),  # its QC in control again
        ("S1", "release", "", "engine"),
        ("S2", "release", "", "engine"),
    ]


# --- the rows hold the state exactly -------------------------------------------------------


@pytest.fixture
def sqlite_and_postgres(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[Store]]:
    """One store of each kind for all the examples of a property (``database_url`` would
    make a database per example); PostgreSQL when the tests have it."""
    urls = [f"sqlite:///{tmp_path / 'rows.db'}"]
    if _postgres_admin_url() is not None:
        urls.append(request.getfixturevalue("postgres_url"))
    stores = [Store(url) for url in urls]
    yield stores
    for store in stores:
        store.close()
    if len(urls) > 1:
        import psycopg

        with psycopg.connect(urls[1], autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")


_texts = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)
_moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
_bands = st.lists(st.integers(-4, 4), max_size=12).map(tuple)
_zs = st.lists(st.fractions(max_denominator=10**6).filter(lambda z: abs(z) < 10**9), max_size=7)
_windows = st.builds(westgard.Window, _bands, _zs.map(tuple))
_keys = st.tuples(_texts, _texts)
_runs = st.builds(
    westgard.Run,
    _texts,
    _bands,
    st.lists(st.tuples(_keys, _windows), max_size=3).map(tuple),
    st.lists(_keys, max_size=2).map(tuple),
    st.lists(_keys, max_size=2).map(tuple),
    st.booleans(),
    st.booleans(),
    st.integers(0, 10**6),
)
_levels = st.builds(
    LevelState,
    _moments,
    _texts,
    st.sampled_from(["reject", "warning", "accept"]),
    st.lists(st.sampled_from(westgard.RULES), max_size=3).map(tuple),
)
_tests = st.builds(
    engine_qc.TestQc,
    run_number=st.integers(0, 10**9),
    run_closed=st.booleans(),
    levels=st.dictionaries(_texts, _levels, max_size=3),
    void_reason=_texts,
    void_at=st.none() | _moments,
    corrective_action_since=st.none() | _moments,
    corrective_action_reason=_texts,
    corrective_action_run=_texts,
    last_in_control_at=st.none() | _moments,
    accepted_run_at=st.none() | _moments,
    locked=_texts,
    lots_in_use=st.none() | st.frozensets(_texts, max_size=3),
    stream=st.builds(westgard.Stream, _bands, st.none() | _runs),
    basis=_texts,
    epoch=st.integers(0, 10**6),
)
_sums = st.fractions(max_denominator=10**8).filter(lambda f: abs(f) < 10**12)
_statistics = st.builds(Statistics, st.integers(0, 10**6), _sums, _sums)
_lots = st.builds(
    LotQc,
    material=_texts,
    window=_windows,
    statistics=_statistics,
    runs=st.lists(_texts, max_size=20).map(tuple),
    cycle=_statistics,
    over_limit_cycles=st.integers(0, 100),
    approved=st.none()
    | st.builds(
        Target,
        mean=st.decimals(-(10**6), 10**6, places=4),
        sd=st.decimals(Decimal("0.0001"), 10**6, places=4),
    ),
    epoch=st.integers(0, 10**6),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(test=_tests, lot=_lots)
def test_qc_state_rows_give_back_exactly_the_state_written(
    sqlite_and_postgres: list[Store], test: engine_qc.TestQc, lot: LotQc
) -> None:
    for store in sqlite_and_postgres:

        def load(conn: Connection) -> tuple[object, object]:
            return (
                qc_state.load_tests(conn, [("i", "t")])[("i", "t")],
                qc_state.load_lots(conn, [("i", "t", "l")])[("i", "t", "l")],
            )

        with store.engine.connect() as conn:
            qc_state.save_tests(conn, {("i", "t"): test}, T0)
            qc_state.save_lots(conn, {("i", "t", "l"): lot}, T0)
            remembered = load(conn)
            # The states written are kept by their rows' content: that is exact only if
            # the text parses back to the very state.
            _forget_parsed_states()
            parsed = load(conn)
            conn.rollback()
        assert parsed == remembered == (test, lot)


def test_a_state_row_changed_behind_the_writer_is_read_as_it_is(database_url: str) -> None:
    """Another daemon's write, or this one's rolled back: the row's content is what the
    state is read from, never what this process last wrote or read."""
    store = Store(database_url)
    test_key, lot_key = ("chem-1", "TP"), ("chem-1", "TP", "CC-45781")
    first = replace(engine_qc.NO_QC, run_number=1, corrective_action_since=T0)
    lot = replace(engine_qc.NO_LOT_QC, material="chem-control", over_limit_cycles=1)

    def save(test: engine_qc.TestQc, lot: LotQc) -> Callable[[Connection], None]:
        def work(conn: Connection) -> None:
            qc_state.save_tests(conn, {test_key: test}, T0)
            qc_state.save_lots(conn, {lot_key: lot}, T0)

        return work

    def load(conn: Connection) -> tuple[engine_qc.TestQc, LotQc]:
        return (
            qc_state.load_tests(conn, [test_key])[test_key],
            qc_state.load_lots(conn, [lot_key])[lot_key],
        )

    def rolled_back(conn: Connection) -> None:
        save(replace(first, run_number=2), replace(lot, over_limit_cycles=2))(conn)
        raise RuntimeError("the commit failed")

    try:
        asyncio.run(_write(store, save(first, lot)))
        test, lot_now = store.read(load)
        assert test is first and lot_now is lot  # kept as written, not parsed again
        with pytest.raises(RuntimeError):
            asyncio.run(_write(store, rolled_back))
        assert store.read(load) == (first, lot)

        def elsewhere(conn: Connection) -> None:
            conn.execute(qc_tests.update().values(run_number=7))
            conn.execute(qc_lots.update().values(over_limit_cycles=3))

        asyncio.run(_write(store, elsewhere))
        test, lot_now = store.read(load)
        assert (test.run_number, lot_now.over_limit_cycles) == (7, 3)
    finally:
        store.close()


def test_recent_states_keep_no_more_than_their_room() -> None:
    recent: qc_state.RecentStates[str] = qc_state.RecentStates(qc_lots, 2)
    for n in range(3):
        recent.put((n,), f"state {n}")
    assert recent.get((0,)) is None
    assert recent.get((1,)) == "state 1"  # now the most recent
    recent.put((3,), "state 3")
    assert (recent.get((2,)), recent.get((1,)), recent.get((3,))) == (None, "state 1", "state 3")


def test_two_transactions_making_a_lots_first_state_take_turns(database_url: str) -> None:
    """The same for a control lot's state: two controls of a new lot, in two write
    transactions; the second counts on the first's result."""
    key = ("chem-1", "NEW", "LOT-9")
    store = Store(database_url)
    first_wrote = threading.Event()

    def count(then: Callable[[], None] = lambda: None) -> None:
        with store.engine.connect() as conn:
            conn.execution_options(write=True)
            with conn.begin():
                book = QcBook.read(conn, [])
                book.read_lots(conn, [key])
                before = book.lot(key)
                book.change_lots(
                    key[:2],
                    {key[2]: replace(before, over_limit_cycles=before.over_limit_cycles + 1)},
                )
                book.write(conn, T0)
                then()

    def second() -> None:
        first_wrote.wait(5)
        count()

    try:
        threads = [
            threading.Thread(target=count, args=(lambda: (first_wrote.set(), time.sleep(0.5)),)),
            threading.Thread(target=second),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        [state] = store.read(lambda conn: qc_state.load_lots(conn, [key])).values()
        # A state already stored is read and locked, and nothing is made for it again.
        made = store.read(lambda conn: conn.execute(select(qc_lots.c.updated_at)).scalars().all())
    finally:
        store.close()
    assert state.over_limit_cycles == 2
    assert [utc(at) for at in made] == [T0]


@pytest.mark.parametrize("server_default", ["", "repeatable read"])
def test_two_transactions_making_a_tests_first_state_take_turns(
    database_url: str, server_default: str
) -> None:
    """A message's QC and an operator's calibration, in two write transactions (two
    daemons' writers), on a test with no state yet: the second waits for the first and
    builds on what it wrote, never writing over it. Also where lab IT made another
    isolation the server's default: under it the second would fail, finding a row its
    snapshot does not show."""
    if server_default:
        if not database_url.startswith("postgresql"):
            pytest.skip("a server default of PostgreSQL's")
        _for_new_sessions(database_url, "default_transaction_isolation", f"'{server_default}'")
    key = ("chem-1", "NEW")
    store = Store(database_url)
    first_wrote = threading.Event()

    def write(change: Callable[[QcBook], None], then: Callable[[], None] = lambda: None) -> None:
        with store.engine.connect() as conn:
            conn.execution_options(write=True)  # as the store writer's transactions
            with conn.begin():
                book = QcBook.read(conn, [key])
                change(book)
                book.write(conn, T0)
                then()

    def message() -> None:
        level = LevelState(T0, "chem-1/NEW/1", "accept", ())
        write(
            lambda book: book.change(key, replace(book.test(key), levels={"1": level})),
            then=lambda: (first_wrote.set(), time.sleep(0.5)),  # open when the other comes
        )

    def calibration() -> None:
        first_wrote.wait(5)
        write(lambda book: book.change(key, QcGate.void(book.test(key), "calibration", T0)))

    try:
        threads = [threading.Thread(target=message), threading.Thread(target=calibration)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        [state] = store.read(lambda conn: qc_state.load_tests(conn, [key])).values()
    finally:
        store.close()
    assert list(state.levels) == ["1"] and state.void_reason == "calibration"
