"""``lis-middleware run``: every configured analyser connection in one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

import drivers
from middleware import open_files
from middleware.astm.link import LinkSettings, Role
from middleware.control import Control, EngineNotRunning, RulesRefused
from middleware.delivery import LisSender
from middleware.engine.engine import Engine
from middleware.events import EventPublisher, broker_of, instrument_event
from middleware.hl7_ingest import Hl7Instrument
from middleware.metrics import Metrics
from middleware.monitor import InstrumentState, Monitor
from middleware.orders_in import OrderReceiver
from middleware.pipeline import ConnectionPipeline
from middleware.service import Notifier
from middleware.settings import ApiConfig, InstrumentConfig, Settings
from middleware.store import Store, leases
from middleware.store.database import risky_settings
from middleware.store.leases import Held
from middleware.store.sql import utcnow
from middleware.store.writer import StoreBusy
from middleware.transport.channel import (
    ChannelEvent,
    ConnectionClosed,
    EventHandler,
    LinkChannel,
)
from middleware.transport.reconnect import Backoff, Reconnecting
from middleware.transport.serial import SerialConnection, SerialSettings
from middleware.transport.tcp import TcpClient, TcpServer
from middleware.transport.tls import (
    client_context,
    instrument_context,
    server_context,
    server_name,
)
from middleware.worklist_push import WorklistDownloader
from middleware.zones import without_summer_time, zone_or_host

log = structlog.get_logger("middleware.daemon")


def configure_logging(level: str = "info", form: str = "auto") -> None:
    if form == "auto":
        form = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if form == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=lambda *_: _LogLines(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library (the MQTT client's "pending publish
    # calls", uvicorn's, asyncio's): their lines take the same form, not plain text between
    # JSON objects. From warning up, as Python's last-resort handler gave them before.
    handler = _LibraryLines(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                # A server error's traceback (uvicorn's), as text: the log is where it is.
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(logging.WARNING, getattr(logging, level.upper(), logging.INFO)))


class _LibraryLines(logging.StreamHandler):  # type: ignore[type-arg]
    """The standard library's lines, lost rather than raised when the stream is gone (as
    :class:`_LogLines`)."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


class _LogLines(structlog.PrintLogger):
    """Log lines to a stream that may go away (a journald stream closed, a pipe whose
    reader ended): a line that cannot be written is lost, never raised into the thread
    that logged it, which may be the store writer."""

    def msg(self, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            super().msg(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def link_settings(config: InstrumentConfig, driver: drivers.Driver) -> LinkSettings:
    settings = driver.link_settings()
    changes: dict[str, Any] = {
        "role": Role.HOST,
        "tolerances": config.tolerances.over(settings.tolerances),
        "max_frame_bytes": config.max_frame_bytes,
        "max_message_bytes": config.max_message_bytes,
    }
    if config.reply_timeout is not None:
        changes["reply_timeout"] = config.reply_timeout
    if config.frame_timeout is not None:
        changes["frame_timeout"] = config.frame_timeout
    if config.contention_backoff is not None:
        changes["host_contention_backoff"] = config.contention_backoff
    return replace(settings, **changes)


class InstrumentsHeld(Exception):
    """Instruments of this configuration are served by another live daemon."""

    def __init__(self, held: list[Held]) -> None:
        super().__init__(
            "; ".join(
                f"instrument {h.instrument} is served by daemon {h.owner} "
                f"(lease renewed {h.renewed_at:%Y-%m-%d %H:%M:%S} UTC)"
                for h in held
            )
        )
        self.held = held


class LeaseLost(Exception):
    """Another daemon took this one's instruments (its lease was not renewed in time)."""


def _boot_id() -> str:
    """This host's boot, as the kernel names it (8 hex digits; "" where it says none):
    two machines given one host name (a cloned VM) are told apart by it."""
    try:
        text = Path("/proc/sys/kernel/random/boot_id").read_text()
    except OSError:
        return ""
    digits = text.strip().replace("-", "")[:8]
    return digits if len(digits) == 8 else ""


#: Named in each daemon's owner, after its process id: ``node/pid/<boot><random>``.
BOOT = _boot_id()


def _process_gone(owner: str, node: str) -> bool:
    """A holder of this node, in this host's present boot, whose process no longer runs:
    its leases are free at once. A holder of the same name on another machine (or from
    before a reboot) is not judged by the processes here: its leases run out."""
    holder, _, rest = owner.partition("/")
    pid, _, mark = rest.partition("/")
    if holder != node or not pid.isdecimal() or not BOOT or not mark.startswith(BOOT):
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.node = settings.node_name or socket.gethostname()
        self.owner = f"{self.node}/{os.getpid()}/{BOOT}{secrets.token_hex(4)}"
        """Names this daemon in the instrument leases of a shared database."""
        self.lease_lost = asyncio.Event()
        self.control = Control(settings, node=self.owner)
        """The rules, the engine and the operator commands; the daemon gives it its store."""
        self.store: Store | None = None
        self.servers: dict[str, TcpServer] = {}
        self.connections: dict[str, dict[LinkChannel, ConnectionPipeline]] = {}
        """Per instrument, its live connections, each with its own pipeline."""
        self.downloaders: dict[str, WorklistDownloader] = {}
        """Per analyser taking a downloaded worklist."""
        self._tasks: list[asyncio.Task[None]] = []
        self.orders: OrderReceiver | None = None
        """Takes the LIS's orders, when configured."""
        self._outgoing: list[Reconnecting] = []
        self.hl7: dict[str, Hl7Instrument] = {}
        """Instruments that speak HL7 over MLLP, each with its connections."""
        self.metrics = Metrics()
        self.events: EventPublisher | None = None
        """Publishes to the MQTT broker, when one is configured."""
        self.monitor: Monitor | None = None
        """The store's figures and the daemon's readiness, once the store is open."""

    @property
    def engine(self) -> Engine | None:
        """The rules engine the pipelines of new connections decide with."""
        return self.control.engine

    async def start(self) -> None:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = await asyncio.to_thread(
            Store, self.settings.database, self.settings.database_lock_timeout
        )
        log.info("store open", database=_safe_url(self.settings.database))
        for risky in await self.store.read_async(risky_settings):
            log.warning(
                "database setting puts results at risk",
                setting=risky.name,
                value=risky.value,
                consequence=risky.consequence,
            )
        self.control.store = self.store
        self._observe(self.store)
        # The instruments first: a daemon refused them must not put its rules in force
        # for the daemons that serve them.
        await self._claim_instruments(self.store)
        rules_dir = self.settings.rules_dir
        if rules_dir is not None:
            if not rules_dir.is_dir():
                refused = [f"rules_dir {rules_dir} is not a directory"]
            else:
                refused = await self.reload_rules("daemon start")
            if refused:
                # No rules are in force yet, and without them the daemon does not serve.
                log.error(f"not started: {refused[0]}", problems=refused)
                await self.store.write(lambda conn: leases.release(conn, self.owner))
                raise SystemExit(2)
        for config in self.settings.instruments:
            if config.enabled:
                await self._start_instrument(config, self.store)
        lis = self.settings.lis
        if lis is not None:
            sender = LisSender(lis, self.store, self.owner)
            self.store.writer.listeners.append(sender.committed)
            self._tasks.append(asyncio.create_task(_keep_running(sender.run, task="lis sender")))
            if lis.orders_port is not None:
                tls = server_context(lis.orders_tls) if lis.orders_tls is not None else None
                downloads = {
                    c.name: frozenset(c.worklist.tests)
                    for c in self.settings.instruments
                    if c.enabled and c.worklist is not None
                }
                self.orders = OrderReceiver(
                    self.store, tls=tls, allow=lis.orders_allow, downloads=downloads,
                    on_taken=self._orders_taken,
                    sender=(lis.sending_application, lis.sending_facility),
                    zone=self.settings.zone,
                )  # fmt: skip
                await self.orders.start(lis.orders_host, lis.orders_port)
        if self.monitor is not None:
            self.monitor.serving = True
        # The zone says when lots expire and how analysers' times are read: said once.
        zone = zone_or_host(self.settings.zone)
        if without_summer_time(zone):
            log.warning("the host's zone is a fixed offset: summer and winter time are not "
                        "told apart; name the laboratory's zone in the timezone setting",
                        offset=str(zone.utcoffset(None)))  # fmt: skip
        log.info("daemon running", instruments=len(self.connections), owner=self.owner,
                 zone=str(zone))  # fmt: skip

    def _observe(self, store: Store) -> None:
        """Metrics, events and figures from what the store commits."""
        store.writer.listeners.append(self.metrics.committed)
        config = self.settings.events
        if config is not None:
            tls = client_context(config.tls, "TLS to the event broker") if config.tls else None
            # Named by its node, the same at every start; each run its own client id,
            # so that two daemons of one node do not push each other off the broker.
            self.events = EventPublisher(
                broker_of(config.url, tls), config.prefix, config.client_id or self.owner,
                name=config.client_id or self.node,
                qos=config.qos, queue_limit=config.queue_limit,
                on_count=lambda outcome: self.metrics.events.labels(outcome).inc(),
            )  # fmt: skip
            store.writer.listeners.append(self.events.committed)
            self._tasks.append(asyncio.create_task(_keep_running(self.events.run, task="events")))
        self.monitor = Monitor(
            store, self.metrics, events=self.events, interval=self.settings.figures_interval,
            stuck=lambda: self.stuck(time.monotonic(), 0.0),
        )  # fmt: skip
        self._tasks.append(asyncio.create_task(_keep_running(self.monitor.run, task="figures")))

    def instrument_states(self) -> list[InstrumentState]:
        """Every instrument served, with its open connections, for the status page."""
        states = []
        for config in self.settings.instruments:
            if not config.enabled:
                continue
            live = self._live(config.name)
            waiting = "listening" if config.transport == "tcp-server" else "connecting"
            states.append(
                InstrumentState(
                    config.name,
                    config.transport,
                    config.speaks,
                    "connected" if live else waiting,
                    live,
                )
            )
        return states

    def _live(self, name: str) -> int:
        """An instrument's open connections, of either protocol."""
        hl7 = self.hl7.get(name)
        return len(self.connections.get(name, {})) + (len(hl7.live) if hl7 is not None else 0)

    def instrument_status(self, name: str, state: str, **detail: Any) -> None:
        """An instrument's connection state, for the metrics and the retained event. A
        connection that ends leaves the instrument connected while another is open."""
        live = self._live(name)
        if state == "disconnected" and live:
            state = "connected"
        self.metrics.connections.labels(name).set(live)
        if self.events is not None:
            self.events.publish(instrument_event(name, state, live, utcnow(), **detail))

    @property
    def _served(self) -> list[str]:
        return [c.name for c in self.settings.instruments if c.enabled]

    async def _claim_instruments(self, store: Store) -> None:
        """No instrument is served by two daemons: take their leases, or refuse to start."""
        names, lease = self._served, self.settings.lease_seconds
        held = await store.write(
            lambda conn: leases.claim(
                conn, self.owner, names, utcnow(), lease, partial(_process_gone, node=self.node)
            )
        )
        if held:
            raise InstrumentsHeld(held)
        self._tasks.append(asyncio.create_task(self._renew_leases(store)))

    async def _renew_leases(self, store: Store) -> None:
        """Every ``lease_seconds`` / 3: renew the leases, and apply the rules another
        daemon on the same database put in force."""
        names = self._served
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            try:
                lost = await store.write(
                    lambda conn: leases.renew(conn, self.owner, names, utcnow())
                )
            except Exception as exc:
                # The database is away; the lease runs out only if it stays away.
                log.warning("instrument leases not renewed", error=repr(exc))
                continue
            if lost:
                log.error("instruments taken over by another daemon; stopping", lost=lost)
                self.lease_lost.set()
                return
            try:
                await self.control.follow_rules()
            except Exception as exc:
                log.warning("rules in force not checked", error=repr(exc))

    def _serving(self, conn: Connection, instrument: str) -> None:
        """In the transaction that keeps a message: refused once another daemon took the
        instrument (this one was frozen past its lease), before it knows it."""
        leases.check_serving(conn, self.owner, instrument)

    def _driver(self, config: InstrumentConfig) -> drivers.Driver:
        return drivers.get(config.driver, config.driver_options, config.name)

    def _orders_taken(self) -> None:
        for downloader in self.downloaders.values():
            downloader.wake()

    def _replace_older(self, name: str) -> None:
        """The analyser came back while its old socket looked open: the old connections
        of the instrument, of either protocol, are closed, and what they left unfinished
        is kept as quarantined."""
        hl7 = self.hl7.get(name)
        for older in [*self.connections.get(name, {}), *(hl7.live if hl7 is not None else ())]:
            older.log.warning("replaced by a newer connection of the instrument")
            older.close()

    def _attach(self, config: InstrumentConfig, store: Store, channel: LinkChannel) -> None:
        """A new connection gets a pipeline of its own; nothing of another connection,
        of this instrument or any other, is ever visible to it."""
        live = self.connections.setdefault(config.name, {})
        if config.connections == "newest":
            self._replace_older(config.name)
        pipeline = ConnectionPipeline(
            config.name,
            self._driver(config),
            store,
            encoding=config.encoding,
            engine=self.engine,
            lis=self.control.lis,
            timezone=config.zone,
            max_message_bytes=config.max_message_bytes,
            metrics=self.metrics,
            serving=self._serving,
        )
        channel.handler = self._forget_when_closed(config.name, channel, pipeline)
        live[channel] = pipeline
        self.instrument_status(config.name, "connected", peer=channel.name)
        if config.name in self.downloaders:
            self.downloaders[config.name].wake()  # what waited for the analyser goes now

    def _forget_when_closed(
        self, name: str, channel: LinkChannel, pipeline: ConnectionPipeline
    ) -> EventHandler:
        async def handler(ch: LinkChannel, event: ChannelEvent) -> None:
            try:
                await pipeline(ch, event)
            finally:
                live = self.connections.get(name, {})
                if isinstance(event, ConnectionClosed) and live.pop(channel, None) is not None:
                    self.instrument_status(name, "disconnected", reason=event.reason)

        return handler

    async def _start_instrument(self, config: InstrumentConfig, store: Store) -> None:
        self.connections.setdefault(config.name, {})
        hl7: Hl7Instrument | None = None
        if config.speaks in ("hl7", "auto"):
            name = config.name
            hl7 = Hl7Instrument(
                config, store, lambda: self.engine, lambda: self.control.lis, self.metrics,
                on_status=lambda state, **detail: self.instrument_status(name, state, **detail),
                serving=self._serving,
            )  # fmt: skip
            self.hl7[config.name] = hl7
        if config.speaks == "hl7":
            assert hl7 is not None
            await hl7.start()
            log.info("instrument configured", instrument=config.name, driver=config.driver,
                     transport=config.transport, protocol="hl7")  # fmt: skip
            return
        settings = link_settings(config, self._driver(config))
        if config.worklist is not None:
            name = config.name
            downloader = WorklistDownloader(
                name, self._driver(config), store,
                lambda: list(self.connections.get(name, {})), config.encoding,
                timezone=config.zone,
            )  # fmt: skip
            self.downloaders[name] = downloader
            self._tasks.append(
                asyncio.create_task(_keep_running(downloader.run, instrument=name, task="worklist"))
            )

        def attach(channel: LinkChannel) -> None:
            self._attach(config, store, channel)

        if config.transport == "tcp-server":
            assert config.port is not None
            server = TcpServer(
                config.host, config.port, settings, name=config.name, on_connect=attach,
                tls=instrument_context(config), allow=config.allow,
                hl7=hl7.accept if hl7 is not None else None,
                replace_older=(
                    (lambda: self._replace_older(config.name))
                    if config.connections == "newest" else None
                ),
            )  # fmt: skip
            await server.start()
            self.servers[config.name] = server
            self.instrument_status(config.name, "listening")
        elif config.transport == "tcp-client":
            assert config.port is not None
            client = TcpClient(
                config.host, config.port, settings, name=config.name, on_connect=attach,
                tls=instrument_context(config), server_name=server_name(config),
            )  # fmt: skip
            self._outgoing.append(client)
            kept = _keep_running(client.run, instrument=config.name)
            self._tasks.append(asyncio.create_task(kept))
            self.instrument_status(config.name, "connecting")
        else:
            assert config.serial is not None
            line = SerialSettings(**config.serial.model_dump())
            serial = SerialConnection(line, settings, name=config.name, on_connect=attach)
            self._outgoing.append(serial)
            kept = _keep_running(serial.run, instrument=config.name)
            self._tasks.append(asyncio.create_task(kept))
            self.instrument_status(config.name, "connecting")
        log.info(
            "instrument configured",
            instrument=config.name,
            driver=config.driver,
            transport=config.transport,
            protocol=config.speaks,
        )

    async def reload_rules(self, actor: str) -> list[str]:
        """At start and on SIGHUP: the problems that refused the rule files, none when
        they are in force."""
        try:
            await self.control.reload_rules(actor)
        except RulesRefused as refused:
            return refused.problems
        except EngineNotRunning as exc:
            return [str(exc)]
        return []

    def stuck(self, now: float, limit: float) -> str | None:
        """Why the daemon can no longer keep what analysers send, None while it can (the
        service watchdog is fed only then). A write may wait its lock timeout for a lock
        and that is not stuck, whatever ``limit`` says."""
        if self.store is None:
            return None
        return self.store.writer.stuck(now, max(limit, _grace(self.settings)))

    async def stop(self) -> None:
        # Connections are closed, not cancelled: each keeps what it received (waiting for
        # a store lock if need be) before its task ends. All of them at once, so that
        # the stop takes one grace however many instruments there are.
        grace = _grace(self.settings)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        closing = [c.channel for c in self._outgoing if c.channel is not None]
        for channel in closing:
            channel.close()
        await asyncio.gather(
            *([self.orders.close()] if self.orders is not None else []),
            *(server.close(grace) for server in self.servers.values()),
            *(instrument.close(grace) for instrument in self.hl7.values()),
        )
        while loop.time() < deadline and any(
            channel in live for channel in closing for live in self.connections.values()
        ):
            await asyncio.sleep(0.05)
        if self.events is not None:
            for name in self._served:
                self.instrument_status(name, "stopped")
            await self.events.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.store is not None:
            if not self.lease_lost.is_set():
                # Bounded: a writer that cannot commit must not hold the stop; the leases
                # then run out by themselves.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        self.store.write(lambda conn: leases.release(conn, self.owner)),
                        _LEASE_RELEASE_SECONDS,
                    )
            await asyncio.to_thread(self.store.close)
        log.info("daemon stopped")


_LEASE_RELEASE_SECONDS = 5.0


def _grace(settings: Settings) -> float:
    """How long a connection may take to keep what it holds at stop: a store write may
    wait its lock timeout for a lock."""
    return settings.database_lock_timeout + 5


def stop_seconds(settings: Settings) -> float:
    """The longest :meth:`Daemon.stop` takes, which the service manager's stop timeout
    must allow: the connections' grace, the events' last publications (2 s), the leases'
    release, and the store writer's last batch (``StoreWriter.close``, 10 s)."""
    return _grace(settings) + 2 + _LEASE_RELEASE_SECONDS + 10


async def _keep_running(
    run: Callable[[], Awaitable[None]], backoff: Backoff | None = None, **about: str
) -> None:
    """A daemon task (an instrument's connection, the LIS sender, the events, the figures)
    must not stop silently: whatever ends it is logged with ``about`` (``instrument=`` or
    ``task=``), and it starts again after a growing delay."""
    next_delay = (backoff or Backoff()).delays()
    while True:
        try:
            await run()
            reason = "ended"
        except asyncio.CancelledError:
            raise
        except OperationalError as exc:
            if not _database_away(exc):
                log.exception("task failed", **about)
                reason = repr(exc)
            else:
                # The database busy (a lock held past the lock timeout) or out of reach:
                # what the task waits for, not a fault of its code; said without a traceback.
                log.warning("task stopped by the database", error=str(exc.orig), **about)
                reason = "database busy or out of reach"
        except StoreBusy as exc:
            log.warning("task stopped by the database", error=str(exc), **about)
            reason = "database busy or out of reach"
        except Exception as exc:
            log.exception("task failed", **about)
            reason = repr(exc)
        delay = next_delay()
        log.error("task restarts", reason=reason, retry_in=delay, **about)
        await asyncio.sleep(delay)


#: PostgreSQL's codes for a lock not had in time and a server going or gone.
_AWAY_CODES = frozenset({"55P03", "57P01", "57P02", "57P03"})


def _database_away(exc: OperationalError) -> bool:
    """A lock held past the lock timeout, or the server out of reach: not a broken table
    or a disk error, which must show their traceback."""
    if exc.connection_invalidated:
        return True
    code = getattr(exc.orig, "sqlstate", None)
    if code is not None:
        return code in _AWAY_CODES or code.startswith("08")
    return "database is locked" in str(exc.orig) or "database table is locked" in str(exc.orig)


def _safe_url(url: str) -> str:
    """The database URL without its password, for logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}@{host}"
    return url


def set_aside_what_start_up_made() -> None:
    """What start-up made (modules, the schema, the rules, the API's routes) lives as long
    as the daemon. Left to the garbage collector, each full collection walked it all and
    stopped every connection and the store writer for about a tenth of a second; set
    aside, a full collection walks only what was made since (docs/performance.md)."""
    gc.collect()
    gc.freeze()


async def serve(settings: Settings) -> None:
    notifier = Notifier()
    # Bound before any analyser connection opens: a port in use stops the start cleanly,
    # and so does a certificate that cannot be used.
    api_tls = api_context(settings.api)
    api_socket = _api_socket(settings.api) if settings.api else None
    open_files.raise_limit(len(settings.instruments))
    daemon = Daemon(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    reloads: set[asyncio.Task[list[str]]] = set()

    def on_hangup() -> None:
        task = asyncio.create_task(daemon.reload_rules(f"SIGHUP to pid {os.getpid()}"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    api: asyncio.Task[None] | None = None
    try:
        notifier.status("starting: opening the store and the instruments' ports")
        await daemon.start()
        if api_socket is not None:
            serving = asyncio.Event()
            api = asyncio.create_task(serve_api(daemon, api_socket, serving, api_tls))
            await _until_serving(api, serving)
        set_aside_what_start_up_made()
        notifier.ready(f"serving {len(daemon.connections)} instrument(s)", daemon.stuck)
        ends = [asyncio.ensure_future(e.wait()) for e in (stopping, daemon.lease_lost)]
        await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        for end in ends:
            end.cancel()
    finally:
        notifier.stopping("stopping: finishing the commits under way")
        if api is not None:
            api.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await api
        if api_socket is not None:
            api_socket.close()
        await daemon.stop()
        await notifier.close("stopped")
    if daemon.lease_lost.is_set():
        raise LeaseLost("another daemon took over this daemon's instruments")


def _api_socket(config: ApiConfig) -> socket.socket:
    # The web framework is imported only by a daemon that serves the API: it is a third of
    # a start's work, and an instrument's daemon needs none of it.
    from middleware.web.api import bind_api_socket

    return bind_api_socket(config.host, config.port)


async def _until_serving(api: asyncio.Task[None], serving: asyncio.Event) -> None:
    """Until the API answers, or its task ended without (its error comes out at stop)."""
    started = asyncio.ensure_future(serving.wait())
    await asyncio.wait({api, started}, return_when=asyncio.FIRST_COMPLETED)
    started.cancel()


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def api_context(config: ApiConfig | None) -> ssl.SSLContext | None:
    """The TLS the API is configured with (HTTPS), or None; a :class:`TlsError` names a
    certificate or key that cannot be used."""
    if config is None or config.tls is None:
        return None
    return server_context(config.tls, "TLS on the control API")


async def serve_api(
    daemon: Daemon,
    sock: socket.socket,
    serving: asyncio.Event | None = None,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Serve the control API on ``sock`` (over ``tls`` when given); ``serving`` is set
    once it answers."""
    import uvicorn

    from middleware.web.api import create_app, server_config

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # The daemon owns SIGTERM, SIGINT and SIGHUP; uvicorn must not take them.
            yield

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if serving is not None and self.started:
                serving.set()

    config = server_config(
        create_app(
            daemon.control,
            lambda: daemon.connections,
            daemon.monitor,
            live=daemon.instrument_states,
        )
    )
    if tls is not None:
        config.load()  # uvicorn makes its context from files; ours is made as the others
        config.ssl = tls
    host, port = sock.getsockname()[:2]
    log.info("control API listening", host=host, port=port, https=tls is not None)
    if tls is None and not _loopback(str(host)):
        log.warning(
            "control API listening beyond this machine without TLS: passwords and session "
            "cookies cross the network in clear (configure api.tls)",
            host=host,
        )
    await Server(config).serve(sockets=[sock])
