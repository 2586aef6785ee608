"""Connections that open themselves again after a loss, with growing delays."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from middleware.astm.link import LinkSettings
from middleware.transport.channel import EventHandler, LinkChannel

log = structlog.get_logger("middleware.transport")

ChannelCallback = Callable[[LinkChannel], Awaitable[None] | None]


async def serve(channel: LinkChannel, on_connect: ChannelCallback | None) -> None:
    """Tell whoever wants to know about the new connection, then run it."""
    if on_connect is not None:
        result = on_connect(channel)
        if result is not None:
            await result
    await channel.run()


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnection delays: ``initial`` times ``multiplier`` after each failure, up to
    ``maximum``, each varied at random by up to ``jitter`` (a fraction)."""

    initial: float = 1.0
    maximum: float = 60.0
    jitter: float = 0.1
    multiplier: float = 2.0

    def delays(self) -> Callable[[], float]:
        current = self.initial

        def next_delay() -> float:
            nonlocal current
            delay = current
            current = min(current * self.multiplier, self.maximum)
            return delay * (1 + random.uniform(-self.jitter, self.jitter))

        return next_delay


class Reconnecting:
    """Opens a stream, serves it with a link channel, and on any loss opens it again."""

    #: What a failed open raises besides OSError (serial adds its own).
    open_errors: tuple[type[Exception], ...] = (OSError,)

    def __init__(
        self,
        name: str,
        settings: LinkSettings | None = None,
        handler: EventHandler | None = None,
        *,
        backoff: Backoff | None = None,
        on_connect: ChannelCallback | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.handler = handler
        self.backoff = backoff or Backoff()
        self.on_connect = on_connect
        self.channel: LinkChannel | None = None
        self.connected = asyncio.Event()
        self.connections = 0

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        return {}

    async def run(self) -> None:
        """Serve until cancelled."""
        next_delay = self.backoff.delays()
        while True:
            try:
                reader, writer = await self.open()
            except self.open_errors as exc:
                delay = next_delay()
                log.warning("cannot open", connection=self.name, error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                continue
            next_delay = self.backoff.delays()
            self.connections += 1
            channel = LinkChannel(reader, writer, self.settings, self.handler, name=self.name)
            self.channel = channel
            self.connected.set()
            channel.log.info("connected", **self.describe())
            try:
                await serve(channel, self.on_connect)
            except self.open_errors as exc:
                channel.log.warning("connection failed", error=str(exc))
            finally:
                self.connected.clear()
                self.channel = None
            delay = next_delay()
            log.info("reconnecting", connection=self.name, retry_in=delay)
            await asyncio.sleep(delay)
