"""``lis-middleware run``: every configured analyser connection in one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import replace
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import Connection

import drivers
from drivers import DriverOptions
from middleware.assessment import rebuild
from middleware.astm.link import LinkSettings, Role
from middleware.engine.engine import Engine
from middleware.engine.rules import Rules, load_rules
from middleware.engine.rules import diff as rules_diff
from middleware.pipeline import ConnectionPipeline
from middleware.settings import InstrumentConfig, Settings
from middleware.store import Store
from middleware.store.repository import audit, utcnow
from middleware.transport.serial import SerialConnection, SerialSettings
from middleware.transport.tcp import TcpClient, TcpServer
from middleware.yamlfile import FileError

log = structlog.get_logger("middleware.daemon")

#: How far back the QC state is replayed at start: longer than any validity window in use,
#: and enough for the Westgard windows of a test run a few times a day.
REBUILD_WINDOW = timedelta(days=7)


def restore(conn: Connection, engine: Engine) -> int:
    """The engine's QC state as the store holds it (at start, and after a rollback)."""
    engine.forget()
    return rebuild(conn, engine, utcnow() - REBUILD_WINDOW)


def configure_logging(level: str = "info", form: str = "json") -> None:
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
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def link_settings(config: InstrumentConfig, driver: drivers.Driver) -> LinkSettings:
    settings = driver.link_settings()
    changes: dict[str, Any] = {
        "role": Role.HOST,
        "tolerances": config.tolerances.over(settings.tolerances),
        # Persist before acknowledging: the frame ending a message waits for the store.
        "defer_final_ack": True,
    }
    if config.reply_timeout is not None:
        changes["reply_timeout"] = config.reply_timeout
    if config.frame_timeout is not None:
        changes["frame_timeout"] = config.frame_timeout
    return replace(settings, **changes)


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rules: Rules | None = None
        self.engine: Engine | None = None
        self.store: Store | None = None
        self.servers: dict[str, TcpServer] = {}
        self.pipelines: dict[str, ConnectionPipeline] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = await asyncio.to_thread(Store, self.settings.database)
        log.info("store open", database=_safe_url(self.settings.database))
        if self.settings.rules_dir is not None and not await self.reload_rules("daemon start"):
            raise SystemExit(2)
        for config in self.settings.instruments:
            if config.enabled:
                await self._start_instrument(config, self.store)
        log.info("daemon running", instruments=len(self.pipelines))

    async def _start_instrument(self, config: InstrumentConfig, store: Store) -> None:
        options = DriverOptions(test_map=dict(config.test_map),
                                control_pattern=config.control_pattern)  # fmt: skip
        driver = drivers.get(config.driver, options, config.name)
        pipeline = ConnectionPipeline(
            config.name,
            driver,
            store,
            encoding=config.encoding,
            engine=self.engine,
            timezone=ZoneInfo(config.timezone) if config.timezone else None,
        )
        self.pipelines[config.name] = pipeline
        settings = link_settings(config, driver)
        if config.transport == "tcp-server":
            assert config.port is not None
            server = TcpServer(config.host, config.port, settings, pipeline, name=config.name)
            await server.start()
            self.servers[config.name] = server
        elif config.transport == "tcp-client":
            assert config.port is not None
            client = TcpClient(config.host, config.port, settings, pipeline, name=config.name)
            self._tasks.append(asyncio.create_task(client.run()))
        else:
            assert config.serial is not None
            line = SerialSettings(**config.serial.model_dump())
            serial = SerialConnection(line, settings, pipeline, name=config.name)
            self._tasks.append(asyncio.create_task(serial.run()))
        log.info("instrument configured", instrument=config.name, driver=config.driver,
                 transport=config.transport)  # fmt: skip

    async def reload_rules(self, actor: str) -> bool:
        """Load the rule files again; keep the rules in force when they are refused.
        An accepted change is recorded in the audit log with who, when and the diff."""
        directory = self.settings.rules_dir
        if directory is None or self.store is None:
            return False
        try:
            rules = await asyncio.to_thread(load_rules, directory)
        except FileError as exc:
            log.error("rules refused; the rules in force stay", directory=str(directory),
                      problems=exc.problems, kept=self.rules is not None)  # fmt: skip
            return False
        change = rules_diff(self.rules, rules)
        if change:
            detail = {"sources": rules.sources, "diff": change}
            await self.store.write(
                lambda conn: audit(conn, actor, "rules.load", str(directory), detail)
            )
        self.rules = rules
        if self.engine is None:
            engine = self.engine = Engine(rules)
            replayed = await self.store.read_async(lambda conn: restore(conn, engine))
            log.info("QC state rebuilt from the store", controls=replayed)
            self.store.writer.on_rollback = lambda conn: restore(conn, engine)
        else:
            # Swapped in the writer's thread, between two messages, never during one.
            engine = self.engine
            await self.store.write(lambda _conn: engine.replace_rules(rules))
        log.info("rules in force", summary=rules.summary(), changed=bool(change), by=actor)
        return True

    async def stop(self) -> None:
        for server in self.servers.values():
            await server.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.store is not None:
            await asyncio.to_thread(self.store.close)
        log.info("daemon stopped")


def _safe_url(url: str) -> str:
    """The database URL without its password, for logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}@{host}"
    return url


async def serve(settings: Settings) -> None:
    daemon = Daemon(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    reloads: set[asyncio.Task[bool]] = set()

    def on_hangup() -> None:
        task = asyncio.create_task(daemon.reload_rules(f"SIGHUP to pid {os.getpid()}"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        await daemon.start()
        await stopping.wait()
    finally:
        await daemon.stop()
