"""ASTM over TCP: a server analysers connect to, and a client that connects out to them."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Awaitable, Callable, Sequence

import structlog

from middleware.astm.link import LinkSettings
from middleware.sniff import opens_mllp, undecided
from middleware.transport.channel import ByteStream, EventHandler, LinkChannel
from middleware.transport.reconnect import Backoff, ChannelCallback, Reconnecting, serve
from middleware.transport.tls import peer_allowed

log = structlog.get_logger("middleware.transport")

_REST_SECONDS = 1.0
"""How long the first bytes, ending in what may begin an MLLP block, wait for the rest."""


class ListenError(OSError):
    """A listening socket that could not be opened (port in use, address not on this host).

    The message names what listens, where and why, for an operator to read as is.
    """

    def __init__(self, name: str, host: str, port: int, cause: OSError) -> None:
        # asyncio's own message repeats the address; the bare reason reads better here.
        reason = os.strerror(cause.errno) if cause.errno and cause.errno > 0 else cause.strerror
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(f"{name}: cannot listen on {where}: {reason or cause}")
        self.errno = cause.errno
        self.name = name
        self.host = host
        self.port = port


def peer_name(writer: asyncio.StreamWriter) -> str:
    """``address:port`` of a connection's peer, for names and logs."""
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


#: Serves a connection of another protocol, given what was read of it already.
OtherProtocol = Callable[[ByteStream, asyncio.StreamWriter], Awaitable[None]]


class Replayed:
    """A connection's stream read again from its start: the bytes already read to choose
    its protocol, then the rest as it comes."""

    def __init__(self, head: bytes, rest: ByteStream) -> None:
        self._head = head
        self._rest = rest

    async def read(self, n: int = -1) -> bytes:
        if self._head:
            size = len(self._head) if n < 0 else n
            data, self._head = self._head[:size], self._head[size:]
            return data
        return await self._rest.read(n)


class TcpServer:
    """Accepts analyser connections; each gets its own link channel. Given ``hl7``, the
    port takes either protocol: a connection whose first bytes open an MLLP block is
    served by it instead. Given ``replace_older`` too, a connection that arrives replaces
    the older ones at once, before it speaks: ``replace_older`` closes those being served
    and the ones still silent are dropped (an analyser that came back while its old socket
    looked open)."""

    def __init__(
        self,
        host: str,
        port: int,
        settings: LinkSettings | None = None,
        handler: EventHandler | None = None,
        *,
        name: str = "tcp-server",
        on_connect: ChannelCallback | None = None,
        tls: ssl.SSLContext | None = None,
        allow: Sequence[str] = (),
        hl7: OtherProtocol | None = None,
        replace_older: Callable[[], None] | None = None,
    ) -> None:
        self.host = host
        self.hl7 = hl7
        self.replace_older = replace_older
        self.port = port
        self.settings = settings
        self.handler = handler
        self.name = name
        self.on_connect = on_connect
        self.tls = tls
        self.allow = list(allow)
        """Addresses or networks analysers may connect from; any when empty."""
        self.channels: set[LinkChannel] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._undecided: set[asyncio.Task[None]] = set()
        """Connections whose analyser has not spoken yet (their protocol unknown)."""

    @property
    def bound_port(self) -> int:
        """The port actually listened on (useful when asked for port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._accept, self.host, self.port, ssl=self.tls
            )
        except OSError as exc:
            raise ListenError(self.name, self.host, self.port, exc) from exc
        log.info("listening", connection=self.name, host=self.host, port=self.bound_port,
                 tls=self.tls is not None)  # fmt: skip

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        where = peer_name(writer)
        if not peer_allowed(writer, self.allow):
            log.warning("connection refused: address not allowed", connection=self.name,
                        peer=where)  # fmt: skip
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            stream: ByteStream = reader
            if self.hl7 is not None:
                if self.replace_older is not None:
                    self.replace_older()
                    for older in list(self._undecided):
                        older.cancel()
                first = await self._first_bytes(reader, where)
                if not first:
                    writer.close()
                    return
                stream = Replayed(first, reader)
                if opens_mllp(first):
                    await self.hl7(stream, writer)
                    return
            await self._serve(stream, writer, where)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _first_bytes(self, reader: asyncio.StreamReader, where: str) -> bytes:
        """What the analyser sends first, however long it stays silent (b"" when it
        leaves without a word, or the server closes meanwhile)."""
        task = asyncio.current_task()
        if task is not None:
            self._undecided.add(task)
        log.info("analyser connected; its first bytes will say its protocol",
                 connection=self.name, peer=where)  # fmt: skip
        first = b""
        try:
            first = await reader.read(65536)
            if first and task is not None:
                # It spoke: what it sent is kept, so a newer connection no longer drops it.
                self._undecided.discard(task)
            # A VT the read ended on (or VT M, VT MS) opens an MLLP block or is noise: an
            # MLLP sender sends its MSH with it, so what follows at once tells.
            while undecided(first) and len(first) < 65536:
                try:
                    more = await asyncio.wait_for(reader.read(65536), _REST_SECONDS)
                except (TimeoutError, ConnectionError, OSError):
                    break  # what came is served (and kept) as it is
                if not more:
                    break
                first += more
            return first
        except asyncio.CancelledError:
            # The daemon stopping, or a newer connection of the analyser replacing it.
            log.info("connection dropped before the analyser spoke", connection=self.name,
                     peer=where, bytes_dropped=len(first))  # fmt: skip
            return b""
        except (ConnectionError, OSError) as exc:
            log.info("connection lost before the analyser spoke", connection=self.name,
                     peer=where, error=str(exc))  # fmt: skip
            return b""
        finally:
            if task is not None:
                self._undecided.discard(task)

    async def _serve(self, stream: ByteStream, writer: asyncio.StreamWriter, where: str) -> None:
        channel = LinkChannel(
            stream, writer, self.settings, self.handler, name=f"{self.name}/{where}"
        )
        channel.log.info("analyser connected")
        self.channels.add(channel)
        try:
            await serve(channel, self.on_connect)
        except asyncio.CancelledError:
            channel.log.info("connection closed at shutdown")
        finally:
            self.channels.discard(channel)

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting and close every connection; each keeps what it received, and
        only one still busy after ``grace`` seconds (a store write waiting for a lock) is
        cancelled."""
        if self._server is not None:
            self._server.close()
        for task in list(self._undecided):
            task.cancel()  # nothing received: nothing to keep
        for channel in list(self.channels):
            channel.close()
        pending = list(self._tasks)
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> TcpServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


class TcpClient(Reconnecting):
    """Connects out to an analyser (or its terminal server) and keeps reconnecting."""

    def __init__(
        self,
        host: str,
        port: int,
        settings: LinkSettings | None = None,
        handler: EventHandler | None = None,
        *,
        name: str = "tcp-client",
        backoff: Backoff | None = None,
        on_connect: ChannelCallback | None = None,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        super().__init__(name, settings, handler, backoff=backoff, on_connect=on_connect)
        self.host = host
        self.port = port
        self.tls = tls
        self.server_name = server_name
        """The name the analyser's certificate must carry (the host by default)."""

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.tls is None:
            return await asyncio.open_connection(self.host, self.port)
        return await asyncio.open_connection(
            self.host, self.port, ssl=self.tls, server_hostname=self.server_name or self.host
        )

    def describe(self) -> dict[str, object]:
        return {"host": self.host, "port": self.port, "tls": self.tls is not None}
