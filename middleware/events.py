"""Events to an MQTT broker: what the store committed, the instruments' states and the
LIS outbox's figures, as JSON under a configurable prefix (docs/events.md).

Events come from the store writer's commits (store/notices.py), so nothing is announced
that was rolled back. The broker is never on the path of an analyser's ACK: events wait
in a bounded queue, and while the broker is away those beyond the bound are dropped and
counted. Retained topics (each instrument's status, the daemon's own) are published
again at every reconnection, so a subscriber always ends up with the current state.
No event carries a patient's name, identifier or a result's value.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiomqtt
import structlog

from middleware.store.figures import Figures
from middleware.store.notices import (
    CorrectiveActionChanged,
    Notice,
    OutboxChanged,
    QcEvaluated,
    ResultDecided,
)
from middleware.store.writer import Committed
from middleware.transport.reconnect import Backoff

log = structlog.get_logger("middleware.events")

#: The topic a decision's action is published under, below ``results/``.
RESULT_TOPICS = {"hold": "held", "release": "released", "reject": "rejected"}


@dataclass(frozen=True, slots=True)
class Event:
    topic: str
    """Below the prefix."""
    payload: dict[str, Any]
    retain: bool = False


def topic_level(name: str) -> str:
    """A name as one topic level: ``/``, ``+``, ``#`` and ``%`` percent-encoded, so that a
    test code such as ``HBA1C/IFCC`` stays one level and never acts as a wildcard."""
    return quote(name, safe=" !$&'()*,;=:@-._~")


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def events_of(notice: Notice) -> list[Event]:
    """The events a committed change is published as."""
    if isinstance(notice, ResultDecided):
        return [
            Event(
                f"results/{RESULT_TOPICS.get(notice.action, notice.action)}",
                {
                    "event": "result-decided",
                    "result_id": notice.result_id,
                    "instrument": notice.instrument,
                    "specimen": notice.specimen_id,
                    "test": notice.test_code,
                    "action": notice.action,
                    "reasons": list(notice.reasons),
                    "urgent": notice.urgent,
                    "by": notice.decided_by,
                    "at": _time(notice.at),
                },
            )
        ]
    if isinstance(notice, QcEvaluated):
        return [
            Event(
                f"qc/{topic_level(notice.instrument)}/{topic_level(notice.test_code)}",
                {
                    "event": "qc-evaluated",
                    "instrument": notice.instrument,
                    "test": notice.test_code,
                    "run": notice.run,
                    "level": notice.level,
                    "status": notice.status,
                    "violations": list(notice.violations),
                    "warnings": list(notice.warnings),
                    "z": notice.z,
                    "at": _time(notice.at),
                },
            )
        ]
    if isinstance(notice, CorrectiveActionChanged):
        return [
            Event(
                f"qc/{topic_level(notice.instrument)}/{topic_level(notice.test_code)}",
                {
                    "event": f"corrective-action-{notice.change}",
                    "instrument": notice.instrument,
                    "test": notice.test_code,
                    "corrective_action_id": notice.action_id,
                    "detail": notice.detail,
                    "by": notice.by,
                    "at": _time(notice.at),
                },
            )
        ]
    if isinstance(notice, OutboxChanged):
        return [
            Event(
                "lis/outbox",
                {
                    "event": f"outbox-{notice.change}",
                    "entry_id": notice.entry_id,
                    "state": notice.state,
                    "at": _time(notice.at),
                },
            )
        ]
    return []


def figures_event(figures: Figures, now: datetime) -> Event:
    oldest = figures.oldest_pending_at
    return Event(
        "lis/outbox",
        {
            "event": "outbox-figures",
            "pending": figures.outbox.get("pending", 0),
            "stopped": figures.outbox.get("stopped", 0),
            "dead": figures.outbox.get("dead", 0),
            "oldest_pending_seconds": round((now - oldest).total_seconds(), 3) if oldest else 0,
            "at": _time(now),
        },
    )


def instrument_event(
    instrument: str, state: str, connections: int, now: datetime, **detail: Any
) -> Event:
    """An instrument's status, retained: ``listening``, ``connecting``, ``connected``,
    ``disconnected`` or ``stopped``."""
    return Event(
        f"instruments/{topic_level(instrument)}/status",
        {
            "event": "instrument-status",
            "instrument": instrument,
            "state": state,
            "connections": connections,
            "at": _time(now),
            **detail,
        },
        retain=True,
    )


@dataclass(frozen=True, slots=True)
class Broker:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: ssl.SSLContext | None


def broker_of(url: str, tls: ssl.SSLContext | None = None) -> Broker:
    address = urlsplit(url)
    secure = address.scheme == "mqtts"
    if secure and tls is None:
        tls = ssl.create_default_context()
    return Broker(
        host=address.hostname or "localhost",
        port=address.port or (8883 if secure else 1883),
        username=unquote(address.username) if address.username else None,
        password=unquote(address.password) if address.password else None,
        tls=tls if secure else None,
    )


class EventPublisher:
    """Publishes events to one broker for as long as :meth:`run` runs."""

    def __init__(
        self,
        broker: Broker,
        prefix: str,
        client_id: str,
        *,
        name: str | None = None,
        qos: int = 1,
        queue_limit: int = 1000,
        on_count: Callable[[str], None] | None = None,
        backoff: Backoff | None = None,
        status_every: float = 60.0,
    ) -> None:
        self.broker = broker
        self.prefix = prefix
        self.client_id = client_id
        self.name = name or client_id
        """The daemon's name in its status topic: the same across its restarts, which
        the broker's client id of each run need not be."""
        self.qos = qos
        self._queue: asyncio.Queue[Event] = asyncio.Queue(queue_limit)
        self._retained: dict[str, Event] = {}
        """The latest of each retained topic: one per instrument and the daemon's own."""
        self._on_count = on_count
        self._backoff = backoff or Backoff(initial=1.0, maximum=30.0)
        self._status_every = status_every
        """Seconds between two publications of the daemon's status while connected: the
        will of a run that died (the broker fires it a keepalive and a half after) may
        have said "offline" over this run's "online"; it does not stand longer."""
        self.connected = asyncio.Event()
        self.published = 0
        self.dropped = 0
        self._in_flight = 0

    @property
    def status_topic(self) -> str:
        return f"{self.prefix}/daemons/{topic_level(self.name)}/status"

    def publish(self, event: Event) -> None:
        """Queue ``event``; never waits. Dropped (and counted) when the queue is full."""
        if event.retain:
            self._retained[event.topic] = event
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._count("dropped")

    def committed(self, committed: Committed) -> None:
        """A store writer listener: each committed change as its events."""
        for notice in committed.notices:
            for event in events_of(notice):
                self.publish(event)

    def _count(self, outcome: str) -> None:
        if outcome == "dropped":
            self.dropped += 1
        else:
            self.published += 1
        if self._on_count is not None:
            self._on_count(outcome)

    def _will(self) -> aiomqtt.Will:
        payload = json.dumps({"event": "daemon-status", "state": "offline"})
        return aiomqtt.Will(self.status_topic, payload, qos=1, retain=True)

    async def run(self) -> None:
        """Connect, publish, reconnect after any loss, until cancelled."""
        while True:
            next_delay = self._backoff.delays()  # from the start again after a session
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                where = f"{self.broker.host}:{self.broker.port}"
                if self.connected.is_set():
                    log.warning("event broker lost", error=str(exc), broker=where)
                else:
                    log.warning("event broker not reached", error=str(exc), broker=where)
            finally:
                self.connected.clear()
            await asyncio.sleep(next_delay())

    async def _session(self) -> None:
        b = self.broker
        async with aiomqtt.Client(
            b.host, b.port, username=b.username, password=b.password,
            identifier=self.client_id, will=self._will(), tls_context=b.tls, timeout=10,
        ) as client:  # fmt: skip
            log.info("event broker connected", broker=f"{b.host}:{b.port}")
            online = {"event": "daemon-status", "state": "online"}
            await self._send(client, Event(self._daemon_topic, online, retain=True))
            # Anything retained may have changed while away: the latest of each goes
            # first (queued copies that follow only repeat it).
            for event in list(self._retained.values()):
                await self._send(client, event)
            self.connected.set()
            loop = asyncio.get_running_loop()
            said = loop.time()
            while True:
                batch = []
                with contextlib.suppress(TimeoutError):
                    wait = max(0.0, said + self._status_every - loop.time())
                    batch.append(await asyncio.wait_for(self._queue.get(), wait))
                while not self._queue.empty() and len(batch) < 100:
                    batch.append(self._queue.get_nowait())
                if any(e.topic == self._daemon_topic for e in batch):
                    said = loop.time()  # its own status goes (its "stopped"): not raced
                elif loop.time() - said >= self._status_every:
                    batch.insert(0, Event(self._daemon_topic, online, retain=True))
                    said = loop.time()
                # Sent together: QoS 1 waits for each PUBACK, one round trip apiece.
                self._in_flight = len(batch)
                try:
                    outcomes = await asyncio.gather(
                        *(self._send(client, e) for e in batch), return_exceptions=True
                    )
                finally:
                    self._in_flight = 0
                failures = [o for o in outcomes if isinstance(o, BaseException)]
                for _ in failures:
                    self._count("dropped")
                if failures:
                    raise failures[0]

    @property
    def _daemon_topic(self) -> str:
        return self.status_topic.removeprefix(f"{self.prefix}/")

    async def _send(self, client: aiomqtt.Client, event: Event) -> None:
        payload = json.dumps(event.payload, separators=(",", ":"))
        await client.publish(
            f"{self.prefix}/{event.topic}", payload, qos=self.qos, retain=event.retain
        )
        self._count("published")

    async def stop(self, timeout: float = 2.0) -> None:
        """The daemon stops: its retained status says so (rather than the broker's
        "offline" for a daemon that vanished), after what is queued, if the broker is
        there to take it within ``timeout``."""
        self.publish(Event(self._daemon_topic, {"event": "daemon-status", "state": "stopped"}))
        if not self.connected.is_set():
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (not self._queue.empty() or self._in_flight) and loop.time() < deadline:
            await asyncio.sleep(0.02)
