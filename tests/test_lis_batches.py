"""The LIS sender claims and records in batches: one store write for many messages, and
whatever stops a batch (no answer, a lost connection, a claim about to run out, the
daemon stopping) leaves every entry's attempts equal to the times it went out, with its
claim free for the next sender at once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, select
from sqlalchemy.event import listen, remove

from middleware import delivery
from middleware.delivery import LisSender
from middleware.domain import Measurement, Result
from middleware.hl7.results import Reported, oru_r01
from middleware.settings import LisConfig
from middleware.store import Store, outbox
from middleware.store.schema import outbox as outbox_table
from middleware.store.schema import outbox_log
from middleware.store.sql import utc, utcnow
from tests.lis_peer import LisPeer

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def _oru(control_id: str, specimen: str) -> str:
    result = Result(specimen, "GLU", "GLU", Measurement.parse("5.2"), instrument="chem-1")
    return oru_r01(control_id, T0, specimen, None, [Reported(result)])


def _fill(conn: Connection, first: int, count: int, specimens: int | None = None) -> None:
    for n in range(first, first + count):
        specimen = f"S{n % specimens if specimens else n:03d}"
        control_id = f"C{n:03d}"
        outbox.enqueue(conn, specimen, "chem-1", control_id, _oru(control_id, specimen), T0)


async def _queue(store: Store, first: int, count: int) -> None:
    await store.write(lambda conn: _fill(conn, first, count))


def _rows(store: Store) -> dict[str, tuple[str, int, str | None]]:
    """Control id: state, attempts, claimed by."""
    rows = store.read(
        lambda c: c.execute(
            select(
                outbox_table.c.control_id,
                outbox_table.c.state,
                outbox_table.c.attempts,
                outbox_table.c.claimed_by,
            )
        ).all()
    )
    return {control_id: (state, attempts, owner) for control_id, state, attempts, owner in rows}


def _events(store: Store) -> dict[str, list[str]]:
    """Control id: its log events in order."""
    rows = store.read(
        lambda c: c.execute(
            select(outbox_table.c.control_id, outbox_log.c.event)
            .join(outbox_table, outbox_table.c.id == outbox_log.c.outbox_id)
            .order_by(outbox_log.c.id)
        ).all()
    )
    found: dict[str, list[str]] = {}
    for control_id, event in rows:
        found.setdefault(control_id, []).append(event)
    return found


async def _until(condition: object, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


async def _connected(sender: LisSender, store: Store, lis: LisPeer) -> asyncio.Task[None]:
    """The sender running, its connection to the LIS up: the first entry, C000, queued
    and delivered (the sender claims one entry at a time until it has a connection)."""
    await _queue(store, 0, 1)
    task = asyncio.create_task(sender.run())
    try:
        await lis.wait_for(1)
        await _until(lambda: _rows(store)["C000"][0] == "delivered")
    except BaseException:
        await _stop(task)
        raise
    return task


def _all_delivered(store: Store) -> bool:
    return all(state == "delivered" for state, _, _ in _rows(store).values())


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _sent_as_often_as_counted(store: Store, lis: LisPeer) -> None:
    """Every entry's attempts are the times the LIS received it, and its log's sends less
    its withdrawals say the same."""
    received = Counter(r.control_id for r in lis.received)
    for control_id, (_, attempts, _) in _rows(store).items():
        events = _events(store).get(control_id, [])
        assert attempts == received[control_id], control_id
        assert events.count("sent") - events.count("withdrawn") == attempts, (control_id, events)


def _taken_over(conn: Connection, entry_id: int, until: datetime) -> None:
    """node-b claims the entry, as its claim does once node-a's has run out."""
    conn.execute(
        outbox_table.update()
        .where(outbox_table.c.id == entry_id)
        .values(claimed_by="node-b", claimed_until=until)
    )


@contextmanager
def _statements_run(conn: Connection) -> Iterator[list[str]]:
    """The kind (SELECT, UPDATE...) of each statement run on ``conn`` meanwhile."""
    kinds: list[str] = []

    def counted(*args: object) -> None:
        kinds.append(str(args[2]).split()[0])

    listen(conn, "before_cursor_execute", counted)
    try:
        yield kinds
    finally:
        remove(conn, "before_cursor_execute", counted)


def test_a_claim_takes_the_oldest_entries_one_per_specimen(store: Store) -> None:
    hold = timedelta(seconds=30)
    with store.engine.begin() as conn:
        _fill(conn, 0, 6, specimens=3)  # S000: C000, C003; S001: C001, C004; ...
        first = outbox.claim(conn, "node-a", T0, hold, limit=2)
        second = outbox.claim(conn, "node-b", T0, hold, limit=10)
        again = outbox.claim(conn, "node-a", T0, hold, limit=10)
    assert [e.control_id for e in first] == ["C000", "C001"]
    assert [e.control_id for e in second] == ["C002"]  # each specimen's next waits
    assert [e.control_id for e in again] == ["C000", "C001"]  # its own claims again
    with store.engine.begin() as conn:
        entry = first[0]
        assert outbox.sent(conn, entry.id, "node-a", entry.message, T0, hold)
        for _ in range(2):  # the second time no longer held: changes nothing but the log
            outbox.release_claim(
                conn, entry.id, "node-a", "withdrawn", "not sent", T0, taken_back=True
            )
    assert _rows(store)["C000"] == ("pending", 0, None)
    assert _events(store)["C000"] == ["sent", "withdrawn", "withdrawn"]


def test_a_claim_to_send_records_the_batch_sent_in_three_statements(store: Store) -> None:
    hold = timedelta(seconds=30)
    with store.engine.begin() as conn:
        _fill(conn, 0, 40)
        with _statements_run(conn) as statements:
            claimed = outbox.claim(conn, "node-a", T0, hold, limit=50, sending=True)
    # The choice, the claim with the attempt, the log: not a statement per entry.
    assert statements == ["SELECT", "UPDATE", "INSERT"]
    assert len(claimed) == 40 and {e.attempts for e in claimed} == {1}
    assert {_rows(store)[e.control_id][:2] for e in claimed} == {("pending", 1)}
    assert {tuple(events) for events in _events(store).values()} == {("sent",)}
    with store.engine.begin() as conn:
        sent_at = conn.execute(select(outbox_table.c.last_sent_at)).scalars().all()
    assert {utc(at) for at in sent_at} == {T0}


async def test_a_batch_of_messages_costs_a_store_write_not_three_each(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "POLL_SECONDS", 3600.0)  # woken by the commits alone
    lis = LisPeer()
    config = LisConfig(host="127.0.0.1", port=await lis.start(), ack_timeout=5)
    sender = LisSender(config, store, "node")
    store.writer.listeners.append(sender.committed)
    task = await _connected(sender, store, lis)
    try:
        commits = store.writer.commits
        began = time.monotonic()
        await _queue(store, 1, 40)  # the connection is up: these go as one batch
        await lis.wait_for(41)
        await _until(lambda: _all_delivered(store))
        # queued, then claimed and recorded as sent, then the answers, a write at most
        # each RECORD_EVERY while the batch goes on (the old way took three per message)
        spans = (time.monotonic() - began) / delivery.RECORD_EVERY
        assert 3 <= store.writer.commits - commits <= 3 + spans + 1
    finally:
        await _stop(task)
        await lis.stop()
    assert [r.control_id for r in lis.received] == [f"C{n:03d}" for n in range(41)]
    _sent_as_often_as_counted(store, lis)
    assert set(_events(store)["C020"]) == {"sent", "answered"}


def test_a_batch_of_answers_is_recorded_in_three_statements_each_only_on_its_own_claim(
    store: Store,
) -> None:
    hold = timedelta(seconds=30)
    with store.engine.begin() as conn:
        _fill(conn, 0, 4)
        c0, c1, c2, c3 = outbox.claim(conn, "node-a", T0, hold, limit=4, sending=True)
    later = T0 + timedelta(minutes=1)
    with store.engine.begin() as conn:
        _taken_over(conn, c2.id, later + hold)  # node-a's claim of C002 ran out
    answers = [
        outbox.Answering(c0.id, outbox.DELIVERED, "MSA|AA|C000", "", later),
        outbox.Answering(c1.id, outbox.STOPPED, "MSA|AE|C001", "AE: unknown test", later),
        outbox.Answering(c2.id, outbox.DELIVERED, "MSA|AA|C002", "", later),
        outbox.Answering(c3.id, outbox.DEAD, "MSA|AR|C003", "AR: refused", later),
        outbox.Answering(c0.id, outbox.DELIVERED, "MSA|AA|C000", "", later),  # again
    ]
    with store.engine.begin() as conn, _statements_run(conn) as statements:
        kept = outbox.answered_all(conn, "node-a", answers)
    # Which are still ours, their new states, the log: not two statements per answer.
    assert statements == ["SELECT", "UPDATE", "INSERT"]
    assert kept == [True, True, False, True, False]
    rows = _rows(store)
    assert rows["C000"] == ("delivered", 1, None)
    assert rows["C001"] == ("stopped", 1, None)
    assert rows["C002"] == ("pending", 1, "node-b")  # node-b's answer is to come
    assert rows["C003"] == ("dead", 1, None)
    events = _events(store)
    assert events["C000"] == ["sent", "answered", "answered-late"]
    assert events["C002"] == ["sent", "answered-late"]
    with store.engine.begin() as conn:
        details = dict(conn.execute(select(outbox_table.c.control_id, outbox_table.c.detail)).all())
    assert details["C001"] == "AE: unknown test" and details["C003"] == "AR: refused"


def test_a_batch_cut_short_is_taken_back_in_a_few_statements(store: Store) -> None:
    hold = timedelta(seconds=30)
    with store.engine.begin() as conn:
        _fill(conn, 0, 4)
        c0, c1, c2, c3 = outbox.claim(conn, "node-a", T0, hold, limit=4, sending=True)
        _taken_over(conn, c3.id, T0 + 2 * hold)  # meanwhile
    later = T0 + timedelta(seconds=5)
    releases = [
        outbox.Releasing(c0.id, "timeout", "no answer in 5 s", later),  # went out
        outbox.Releasing(c1.id, "withdrawn", "not sent", later, taken_back=True),
        outbox.Releasing(c2.id, "withdrawn", "not sent", later, taken_back=True),
        outbox.Releasing(c3.id, "withdrawn", "not sent", later, taken_back=True),
    ]
    with store.engine.begin() as conn, _statements_run(conn) as statements:
        outbox.release_claims(conn, "node-a", releases)
    assert statements == ["UPDATE", "UPDATE", "INSERT"]
    rows = _rows(store)
    assert rows["C000"] == ("pending", 1, None)  # its attempt stands: it went out
    assert rows["C001"] == rows["C002"] == ("pending", 0, None)
    assert rows["C003"] == ("pending", 1, "node-b")  # not ours: left as it is
    events = _events(store)
    assert events["C000"] == ["sent", "timeout"]
    assert events["C001"] == events["C003"] == ["sent", "withdrawn"]


@pytest.mark.parametrize("failure", ["hang-up", "silence"])
async def test_a_batch_cut_short_sends_the_rest_later_and_counts_only_what_went(
    store: Store, failure: str
) -> None:
    lis = LisPeer()
    config = LisConfig(
        host="127.0.0.1", port=await lis.start(), ack_timeout=1.0,
        backoff={"base": 0.1, "ceiling": 0.2},
    )  # fmt: skip
    # the 5th message gets a closed connection, or no answer within the ACK timeout
    if failure == "hang-up":
        lis.hang_up_at = {5}
    else:
        lis.unanswered = {5}
    task = await _connected(LisSender(config, store, "node"), store, lis)
    try:
        await _queue(store, 1, 10)
        await _until(lambda: _all_delivered(store))
    finally:
        await _stop(task)
        await lis.stop()
    received = Counter(r.control_id for r in lis.received)
    assert set(received) == {f"C{n:03d}" for n in range(11)}
    [(again, twice)] = [(c, n) for c, n in received.items() if n > 1]
    assert twice == 2  # the one cut off, sent again with its control id
    _sent_as_often_as_counted(store, lis)
    events = _events(store)
    assert events[again][:2] == ["sent", "disconnected" if failure == "hang-up" else "timeout"]
    behind = [c for c, e in events.items() if "withdrawn" in e]
    assert behind, "the rest of the batch was taken back"
    assert all(_rows(store)[c][1] == 1 for c in behind)


async def test_two_closes_apart_keep_one_connection_for_many_messages(store: Store) -> None:
    """A LIS that hangs up twice, with messages answered on a kept connection between,
    is not one that closes after each answer: the sender keeps its connection."""
    lis = LisPeer(hang_up_at={3, 8})
    config = LisConfig(
        host="127.0.0.1", port=await lis.start(), ack_timeout=1.0,
        backoff={"base": 0.1, "ceiling": 0.2},
    )  # fmt: skip
    sender = LisSender(config, store, "node")
    task = await _connected(sender, store, lis)
    try:
        for n in range(1, 12):  # one at a time: each batch a message
            await _queue(store, n, 1)
            await _until(lambda: _all_delivered(store))
    finally:
        await _stop(task)
        await lis.stop()
    _sent_as_often_as_counted(store, lis)
    assert not sender._one_message_a_connection


async def test_a_batch_stops_before_a_claim_could_run_out_under_its_answer(
    store: Store,
) -> None:
    """A slow LIS: each message goes only while its claim (2 x 1 s + 5 s) outlasts an
    answer's wait (1 s) and the margin (5 s); the rest are taken back and claimed again."""
    lis = LisPeer(delay=0.4)
    config = LisConfig(host="127.0.0.1", port=await lis.start(), ack_timeout=1.0)
    task = await _connected(LisSender(config, store, "node"), store, lis)
    try:
        await _queue(store, 1, 8)
        await _until(lambda: _all_delivered(store))
    finally:
        await _stop(task)
        await lis.stop()
    assert sorted(r.control_id for r in lis.received) == [f"C{n:03d}" for n in range(9)]
    _sent_as_often_as_counted(store, lis)
    events = _events(store)
    assert any("withdrawn" in e for e in events.values())
    assert all(e[-1] == "answered" for e in events.values())


async def test_a_stopped_sender_frees_its_claims_for_the_next_at_once(store: Store) -> None:
    lis = LisPeer()
    config = LisConfig(host="127.0.0.1", port=await lis.start(), ack_timeout=5)
    task = await _connected(LisSender(config, store, "node-a"), store, lis)
    try:
        lis.answer = ""
        await _queue(store, 1, 5)
        await lis.wait_for(2)  # C001 on the wire, unanswered; C002-C005 claimed behind it
        await asyncio.sleep(0.1)
    finally:
        await _stop(task)
    rows = _rows(store)
    assert rows["C001"] == ("pending", 1, None)
    assert [rows[f"C{n:03d}"] for n in range(2, 6)] == [("pending", 0, None)] * 4
    events = _events(store)
    assert events["C001"] == ["sent", "interrupted"]
    assert events["C002"] == ["sent", "withdrawn"]
    # another daemon sends them now, not when a claim runs out
    lis.answer = "AA"
    other = asyncio.create_task(LisSender(config, store, "node-b").run())
    try:
        await lis.wait_for(7, timeout=config.ack_timeout)
        await _until(lambda: _all_delivered(store))
    finally:
        await _stop(other)
        await lis.stop()
    _sent_as_often_as_counted(store, lis)


async def test_a_sender_restarted_after_a_failed_write_records_what_it_had(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answers of a batch wait in the sender for the write that records them: when
    that write fails (here every write that records an answer, for a while), the sender's
    task ends, is started again, and records them then; nothing is sent twice."""
    lis = LisPeer()
    config = LisConfig(host="127.0.0.1", port=await lis.start(), ack_timeout=5)
    sender = LisSender(config, store, "node")
    broken = False
    real_answered = outbox.answered_all

    def answered_all(*args: object) -> list[bool]:
        if broken:
            raise OSError("disk I/O error")
        return real_answered(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(outbox, "answered_all", answered_all)
    task = await _connected(sender, store, lis)
    try:
        broken = True
        await _queue(store, 1, 3)
        await lis.wait_for(4)
        [ended] = await asyncio.gather(task, return_exceptions=True)
        assert isinstance(ended, OSError)
        rows = _rows(store)
        assert [rows[f"C00{n}"] for n in (1, 2, 3)] == [("pending", 1, "node")] * 3
        broken = False
        task = asyncio.create_task(sender.run())
        await _until(lambda: _all_delivered(store))
    finally:
        await _stop(task)
        await lis.stop()
    assert len(lis.received) == 4  # nothing sent twice
    _sent_as_often_as_counted(store, lis)


def test_the_batch_fits_in_a_claim() -> None:
    """The first entry of a batch always goes: a claim outlasts one answer's wait and the
    margin for the shortest ACK timeout."""
    for timeout in (0.5, 1.0, 10.0, 60.0):
        hold = timedelta(seconds=2 * timeout + 5)
        assert timedelta(seconds=timeout) + delivery.CLAIM_MARGIN <= hold


def test_a_busy_store_makes_the_batches_longer_within_a_claim() -> None:
    # an idle writer: the least batch
    assert delivery.batch_size(0.002, 0.003, 30.0) == delivery.BATCH
    # a claim that waited 0.6 s behind the analysers, 3 ms a message: 1.2 s of sending
    assert delivery.batch_size(0.6, 0.003, 30.0) == 400
    # never more than fits in the claim's time, nor the most
    assert delivery.batch_size(0.6, 0.003, 0.9) == 300
    assert delivery.batch_size(30.0, 0.003, 30.0) == delivery.MAX_BATCH
    # a slow LIS on a claim that fits few: still the least, the claim stops it in time
    assert delivery.batch_size(0.6, 0.5, 1.0) == delivery.BATCH
    assert delivery.batch_size(0.6, 0.0, 30.0) == delivery.BATCH


async def test_while_analysers_keep_the_writer_busy_the_sender_claims_more_at_once(
    store: Store,
) -> None:
    lis = LisPeer()
    config = LisConfig(host="127.0.0.1", port=await lis.start(), ack_timeout=5)
    sender = LisSender(config, store, "node")
    store.writer.listeners.append(sender.committed)

    async def analysers() -> None:
        # Each write holds the store's one writer 0.3 s, as a burst of messages does:
        # a claim waits behind it.
        while True:
            await store.write(lambda _conn: time.sleep(0.3))

    task = await _connected(sender, store, lis)
    busy = asyncio.create_task(analysers())
    try:
        await _queue(store, 1, 400)
        await _until(lambda: _all_delivered(store), timeout=60)
    finally:
        busy.cancel()
        await asyncio.gather(busy, return_exceptions=True)
        await _stop(task)
        await lis.stop()
    _sent_as_often_as_counted(store, lis)
    assert sorted(r.control_id for r in lis.received) == [f"C{n:03d}" for n in range(401)]
    # the claims, by the time each recorded its entries sent
    sent_at = store.read(
        lambda c: (
            c.execute(select(outbox_log.c.at).where(outbox_log.c.event == "sent")).scalars().all()
        )
    )
    claims = sorted(Counter(sent_at).values(), reverse=True)
    assert claims[0] > delivery.BATCH, claims


async def test_answers_are_recorded_while_their_batch_goes_on(store: Store) -> None:
    """A daemon killed mid-batch sends again only what it had not yet recorded as
    answered: the LIS's answers are committed as they come, not when the batch ends."""
    lis = LisPeer(unanswered={31})  # the batch stops there, waiting for an answer
    config = LisConfig(host="127.0.0.1", port=await lis.start(), ack_timeout=30)
    sender = LisSender(config, store, "node")
    task = await _connected(sender, store, lis)
    try:
        await _queue(store, 1, 40)
        await lis.wait_for(31)
        delivered = {f"C{n:03d}" for n in range(30)}
        await _until(
            lambda: (
                {c for c, (state, _, _) in _rows(store).items() if state == "delivered"}
                == delivered
            ),
            timeout=5,
        )
        assert not task.done()  # still waiting for the 31st answer
    finally:
        await _stop(task)
        await lis.stop()


def test_on_postgresql_a_claim_runs_out_by_the_databases_clock(store: Store) -> None:
    """A daemon whose clock is a minute ahead does not take, and send again, what another
    claimed a moment ago: on PostgreSQL, shared by nodes, claims are judged by its clock;
    SQLite is shared by the daemons of one host, on one clock."""
    hold = timedelta(seconds=30)
    now = utcnow()
    with store.engine.begin() as conn:
        _fill(conn, 0, 1)
        assert len(outbox.claim(conn, "node-a", now, hold, sending=True)) == 1
    with store.engine.begin() as conn:
        taken = outbox.claim(conn, "node-b", now + timedelta(minutes=1), hold, sending=True)
    postgresql = store.engine.dialect.name == "postgresql"
    assert [e.control_id for e in taken] == ([] if postgresql else ["C000"])


def test_what_a_dead_daemon_claimed_is_logged_lapsed_before_it_goes_again(
    store: Store,
) -> None:
    """A daemon killed mid-batch had logged its whole batch sent (one attempt each) before
    the first went out: the daemon taking the entries after its claim ran out logs that
    those sends may or may not have happened, rather than leave them standing as made."""
    with store.engine.begin() as conn:
        _fill(conn, 0, 4)
        taken = outbox.claim(conn, "node-a/1", utcnow(), timedelta(milliseconds=10), 3, True)
        assert len(taken) == 3
        # Claimed while the LIS was down, nothing logged sent: no send to doubt.
        assert len(outbox.claim(conn, "node-a/1", utcnow(), timedelta(milliseconds=10), 4)) == 4
    time.sleep(0.2)  # node-a died: its claim runs out (on PostgreSQL by the server's clock)
    with store.engine.begin() as conn:
        again = outbox.claim(conn, "node-b/2", utcnow(), timedelta(seconds=30), 4, True)
        # The one owner's own claims taken again are no lapse.
        mine = outbox.claim(conn, "node-b/2", utcnow(), timedelta(seconds=30), 4, True)
    assert [e.attempts for e in again] == [2, 2, 2, 1] and len(mine) == 4
    rows = store.read(
        lambda c: c.execute(
            select(outbox_table.c.control_id, outbox_log.c.event, outbox_log.c.detail)
            .join(outbox_table, outbox_table.c.id == outbox_log.c.outbox_id)
            .order_by(outbox_log.c.id)
        ).all()
    )
    c000 = [(event, detail) for control_id, event, detail in rows if control_id == "C000"]
    assert c000 == [
        ("sent", ""),
        ("lapsed", "claimed by node-a/1, which left no answer nor release: its last send may "
                   "have gone out or not"),
        ("sent", ""),
        ("sent", ""),
    ]  # fmt: skip
    c003 = [event for control_id, event, _ in rows if control_id == "C003"]
    assert c003 == ["sent", "sent"]
