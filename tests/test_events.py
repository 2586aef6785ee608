"""Events to an MQTT broker: told only after the commit, published under the prefix, no
patient identity in them, counted when dropped, and the daemon unaffected by a broker
that goes away and comes back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import jsonschema
import pytest
from sqlalchemy import Connection, text

from middleware.events import Event, EventPublisher, broker_of, events_of, topic_level
from middleware.store import Store, notices
from middleware.store.writer import Committed
from tests.broker import Broker, Subscriber
from tests.conftest import ROOT
from tests.daemon import DaemonProcess, connect, free_port, query
from tests.messages import patient, qc
from tests.peer import StreamPeer, send_message

AT = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def _documented_schemas() -> list[dict[str, Any]]:
    """The JSON Schemas of docs/events.md, the promise made to subscribers."""
    doc = (ROOT / "docs" / "events.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", doc, flags=re.S)
    return [schema for schema in map(json.loads, blocks) if "$schema" in schema]


def _conforms(payload: dict[str, Any], schemas: list[dict[str, Any]]) -> bool:
    for schema in schemas:
        try:
            jsonschema.validate(payload, schema)
        except jsonschema.ValidationError:
            continue
        return True
    return False


def _decided(result_id: int, action: str = "hold") -> notices.ResultDecided:
    return notices.ResultDecided(
        result_id, "chem-1", "S1", "GLU", action, ("critical-value",), True, "engine", AT
    )


# --- told after the commit, never for a rollback -----------------------------------------


async def test_notices_are_told_after_the_commit_and_never_for_a_rollback(
    database_url: str,
) -> None:
    store = Store(database_url)
    heard: list[Committed] = []
    store.writer.listeners.append(heard.append)

    def kept(conn: Connection) -> None:
        conn.execute(text("SELECT 1"))
        notices.tell(conn, _decided(1))

    def failing(conn: Connection) -> None:
        notices.tell(conn, _decided(2))
        raise RuntimeError("the unit fails after telling")

    try:
        await store.write(kept)
        with pytest.raises(RuntimeError):
            await store.write(failing)
        # Queued together, the three share a batch that rolls back; the two good ones
        # are then committed one by one and told once each.
        futures = [store.write_soon(kept), store.write_soon(failing), store.write_soon(kept)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert isinstance(results[1], RuntimeError)
        await asyncio.sleep(0.05)  # the listener is called soon after the futures resolve
    finally:
        await asyncio.to_thread(store.close)
    told = [n.result_id for c in heard for n in c.notices if isinstance(n, notices.ResultDecided)]
    assert told == [1, 1, 1]
    assert all(c.seconds >= 0 and c.units >= 1 for c in heard)


def test_events_carry_no_patient_and_name_their_topic() -> None:
    (held,) = events_of(_decided(7))
    assert held.topic == "results/held"
    assert held.payload["specimen"] == "S1" and held.payload["reasons"] == ["critical-value"]
    assert not {"patient", "patient_id", "name", "value"} & set(held.payload)
    (released,) = events_of(_decided(8, "release"))
    assert released.topic == "results/released"
    evaluated = notices.QcEvaluated(
        "chem-1", "HBA1C/IFCC", "chem-1/HBA1C/IFCC/3", "1", "reject", ("1-3s",), (), "3.1", AT
    )
    (event,) = events_of(evaluated)
    # A test code with a slash stays one topic level, and never acts as a wildcard.
    assert event.topic == "qc/chem-1/HBA1C%2FIFCC"
    assert topic_level("A+B#") == "A%2BB%23"
    (outbox,) = events_of(notices.OutboxChanged(3, "answered", "delivered", AT))
    assert outbox.topic == "lis/outbox" and outbox.payload["state"] == "delivered"


# --- the publisher against a real broker -------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    own = Broker(tmp_path)
    own.start()
    yield own
    own.stop()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _prefix() -> str:
    return f"test-{secrets.token_hex(4)}"


async def test_events_reach_the_shared_broker() -> None:
    url = os.environ.get("MIDDLEWARE_TEST_MQTT_URL")
    if not url:
        pytest.skip("MIDDLEWARE_TEST_MQTT_URL is not set: no MQTT broker to test against")
    address = urlsplit(url)
    prefix = _prefix()
    publisher = EventPublisher(broker_of(url), prefix, "events-test")
    async with Subscriber(address.hostname or "", address.port or 1883, prefix).listening() as sub:
        task = asyncio.create_task(publisher.run())
        try:
            publisher.publish(Event("results/held", {"event": "result-decided", "result_id": 9}))
            assert (await sub.wait_for("results/held"))["result_id"] == 9
            assert (await sub.wait_for("daemons/events-test/status"))["state"] == "online"
            await publisher.stop()
            assert await sub.wait_for("daemons/events-test/status", state="stopped")
        finally:
            await _cancel(task)
    assert publisher.published >= 2 and publisher.dropped == 0


async def test_events_beyond_the_queue_are_dropped_and_counted_while_the_broker_is_away(
    tmp_path: Path,
) -> None:
    away = Broker(tmp_path)  # its port is free: nothing listens yet
    counted: list[str] = []
    publisher = EventPublisher(
        broker_of(away.url), "lab", "node-a", queue_limit=5, on_count=counted.append
    )
    task = asyncio.create_task(publisher.run())
    try:
        publisher.publish(Event("instruments/an1/status", {"state": "listening"}, retain=True))
        for n in range(10):
            publisher.publish(Event("results/held", {"result_id": n}))
        assert publisher.dropped == 6 and counted.count("dropped") == 6
        away.start()
        async with Subscriber("127.0.0.1", away.port, "lab").listening() as sub:
            # Retained, so heard whenever the publisher's reconnection (a second or so
            # after the broker came) falls.
            status = await sub.wait_for("instruments/an1/status")
            assert status["state"] == "listening"
            await asyncio.wait_for(publisher.connected.wait(), 10)
            await publisher.stop()
        # Once connected: the daemon's status, the retained instrument status again, then
        # what waited (that status and the 4 results that fitted), then "stopped".
        assert publisher.published == 8 and publisher.dropped == 6
    finally:
        await _cancel(task)
        away.stop()


# --- the daemon with a broker that stops and comes back ----------------------------------


def _daemon(tmp_path: Path, database_url: str, broker_url: str, prefix: str) -> DaemonProcess:
    return DaemonProcess(
        tmp_path,
        [{"name": "chem-1", "transport": "tcp-server", "host": "127.0.0.1",
          "port": free_port()}],
        database_url=database_url, rules_dir=str(ROOT / "rules"), figures_interval=0.5,
        events={"url": broker_url, "prefix": prefix, "client_id": "node-a"},
    )  # fmt: skip


async def _send(daemon: DaemonProcess, *messages: list[bytes]) -> None:
    peer = StreamPeer(*await connect(daemon.ports[0]))
    for message in messages:
        await send_message(peer, message)  # each waits for its ACK
    await peer.close()


def _stored(database_url: str, specimen: str) -> list[Any]:
    return query(database_url, "SELECT id FROM results WHERE specimen_id = :s", s=specimen)


async def test_the_daemon_publishes_what_it_commits_and_goes_on_when_the_broker_stops(
    tmp_path: Path, database_url: str, broker: Broker
) -> None:
    prefix = _prefix()
    daemon = _daemon(tmp_path, database_url, broker.url, prefix)
    async with Subscriber("127.0.0.1", broker.port, prefix).listening() as sub:
        daemon.start()
        try:
            await sub.wait_for("instruments/chem-1/status", state="listening")
            await _send(daemon, qc("5.20", "15.60"), patient("S-1", "5.4"), patient("S-2", "31.0"))
            await sub.wait_for("instruments/chem-1/status", state="connected")
            evaluation = await sub.wait_for("qc/chem-1/GLU", event="qc-evaluated")
            assert evaluation["status"] == "accept"
            released = await sub.wait_for("results/released", specimen="S-1")
            assert released["test"] == "GLU" and "patient" not in released
            held = await sub.wait_for("results/held", specimen="S-2")
            assert "critical" in ",".join(held["reasons"])
            await sub.wait_for("lis/outbox", event="outbox-figures")
            assert (await sub.wait_for("daemons/node-a/status"))["state"] == "online"

            schemas = _documented_schemas()
            assert len(schemas) == 6
            for topic, payload, _ in sub.received:
                assert _conforms(payload, schemas), (topic, payload)

            broker.stop()
            # The analyser is answered as before while the broker is away.
            await _send(daemon, patient("S-3", "5.1"))
            assert _stored(database_url, "S-3")
        except BaseException:
            print(daemon.log.read_text()[-3000:])
            raise
    try:
        broker.start()
        # A new subscriber on the restarted broker (which kept nothing) hears the daemon
        # again: its statuses, published anew, and what it commits from now on.
        async with Subscriber("127.0.0.1", broker.port, prefix).listening() as sub:
            await sub.wait_for("daemons/node-a/status", timeout=40, state="online")
            status = await sub.wait_for("instruments/chem-1/status")
            assert status["state"] == "disconnected"
            await _send(daemon, patient("S-4", "5.2"))
            await sub.wait_for("results/released", specimen="S-4")
        assert daemon.stop() == 0
    except BaseException:
        print(daemon.log.read_text()[-3000:])
        raise
    assert "event broker lost" in daemon.log.read_text()


async def test_an_hl7_analysers_connection_state_is_published(
    tmp_path: Path, broker: Broker
) -> None:
    prefix, port = _prefix(), free_port()
    daemon = DaemonProcess(
        tmp_path,
        [{"name": "elite", "transport": "tcp-server", "host": "127.0.0.1", "port": port,
          "driver": "mindray_hl7"}],
        events={"url": broker.url, "prefix": prefix},
    )  # fmt: skip
    async with Subscriber("127.0.0.1", broker.port, prefix).listening() as sub:
        daemon.start()
        try:
            await sub.wait_for("instruments/elite/status", state="listening")
            _, writer = await connect(port)
            connected = await sub.wait_for("instruments/elite/status", state="connected")
            assert connected["connections"] == 1
            writer.close()
            gone = await sub.wait_for("instruments/elite/status", state="disconnected")
            assert gone["connections"] == 0
        finally:
            assert daemon.stop() == 0
        await sub.wait_for("instruments/elite/status", state="stopped")


async def test_the_daemons_status_topic_is_its_node_name_across_restarts(
    tmp_path: Path, broker: Broker
) -> None:
    """Without a client_id, a dashboard watching ``daemons/<node>/status`` sees the daemon
    come and go, restart after restart, and no new retained topic is left at each."""
    prefix = _prefix()
    daemon = DaemonProcess(
        tmp_path,
        [{"name": "chem-1", "transport": "tcp-server", "host": "127.0.0.1",
          "port": free_port()}],
        node_name="lab-node-7", events={"url": broker.url, "prefix": prefix},
    )  # fmt: skip
    async with Subscriber("127.0.0.1", broker.port, prefix).listening() as sub:
        for _ in range(2):
            daemon.start()
            await sub.wait_for("daemons/lab-node-7/status", state="online")
            assert daemon.stop() == 0
            await sub.wait_for("daemons/lab-node-7/status", state="stopped")
        topics = {topic for topic, _, _ in sub.received if topic.startswith("daemons/")}
    assert topics == {"daemons/lab-node-7/status"}


async def test_an_offline_said_over_a_running_daemon_does_not_stand(broker: Broker) -> None:
    """The will of a run that died comes a keepalive and a half after it, over the new
    run's "online": the daemon says its status again, every status_every seconds."""
    prefix = _prefix()
    publisher = EventPublisher(
        broker_of(broker.url), prefix, "node-a/2/x", name="node-a", status_every=0.5
    )
    async with Subscriber("127.0.0.1", broker.port, prefix).listening() as sub:
        task = asyncio.create_task(publisher.run())
        try:
            await sub.wait_for("daemons/node-a/status", state="online")
            stale = {"event": "daemon-status", "state": "offline"}
            async with aiomqtt.Client("127.0.0.1", broker.port) as other:
                await other.publish(
                    f"{prefix}/daemons/node-a/status", json.dumps(stale), qos=1, retain=True
                )
            await sub.wait_for("daemons/node-a/status", state="offline")
            said_before = len(sub.received)

            async def said_again() -> None:
                while not any(
                    topic == "daemons/node-a/status" and payload["state"] == "online"
                    for topic, payload, _ in sub.received[said_before:]
                ):
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(said_again(), 5)
            await publisher.stop()
            await sub.wait_for("daemons/node-a/status", state="stopped")
        finally:
            await _cancel(task)
