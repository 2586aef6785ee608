"""The asyncio shells over real loopback sockets and a real pseudo-terminal."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from middleware.astm.frames import FrameTolerances
from middleware.astm.link import Event, LinkSettings, SendFailed, TextReceived, TransferEnded
from middleware.transport.channel import ConnectionClosed, LinkChannel, SendError
from middleware.transport.reconnect import Backoff
from middleware.transport.serial import SerialConnection, SerialSettings
from middleware.transport.tcp import TcpClient, TcpServer
from tests.peer import (
    ACK,
    ENQ,
    EOT,
    NAK,
    PtyPeer,
    StreamPeer,
    frame,
    receive_message,
    send_message,
)

RECORDS = [
    b"H|\\^&|||XN-550^00-22^1234|||||||P|LIS2-A2|20240101120000",
    b"P|1||PID42",
    b"O|1|S0001||^^^^WBC\\^^^^RBC|R",
    b"R|1|^^^^WBC^1|7.25|10*3/uL|4.0-10.0|N||F||||20240101115900",
    b"R|2|^^^^RBC^1|" + b"4.8" * 100 + b"|10*6/uL||N||F",
    b"L|1|N",
]


class Collector:
    """An event handler that keeps what it is given."""

    def __init__(self) -> None:
        self.texts: list[bytes] = []
        self.ended = asyncio.Event()
        self.events: list[Event] = []

    async def __call__(self, channel: LinkChannel, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, TextReceived):
            self.texts.append(event.text.rstrip(b"\r"))
        elif isinstance(event, TransferEnded):
            self.ended.set()


@contextlib.asynccontextmanager
async def tcp_server(
    collector: Collector, settings: LinkSettings | None = None
) -> AsyncIterator[tuple[TcpServer, StreamPeer]]:
    server = TcpServer("127.0.0.1", 0, settings, collector)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
    peer = StreamPeer(reader, writer)
    try:
        yield server, peer
    finally:
        await peer.close()
        await server.close()


async def wait_for_channel(server: TcpServer) -> LinkChannel:
    for _ in range(200):
        if server.channels:
            return next(iter(server.channels))
        await asyncio.sleep(0.01)
    raise AssertionError("no channel")


async def test_tcp_server_receives_a_message() -> None:
    collector = Collector()
    async with tcp_server(collector) as (_, peer):
        await send_message(peer, RECORDS)
        await asyncio.wait_for(collector.ended.wait(), 5)
    assert collector.texts == RECORDS


async def test_tcp_server_naks_a_bad_frame_and_takes_the_resend() -> None:
    collector = Collector()
    async with tcp_server(collector) as (_, peer):
        await peer.write(ENQ)
        assert await peer.read(1) == ACK
        good = frame(1, b"P|1\r")
        await peer.write(good[:-4] + b"00\r\n")
        assert await peer.read(1) == NAK
        await peer.write(good)
        assert await peer.read(1) == ACK
        await peer.write(EOT)
        await asyncio.wait_for(collector.ended.wait(), 5)
    assert collector.texts == [b"P|1"]


async def test_tcp_server_sends_a_message_to_the_analyser() -> None:
    collector = Collector()
    async with tcp_server(collector) as (server, peer):
        channel = await wait_for_channel(server)
        order = [b"H|\\^&", b"O|1|S0001||^^^GLU|R", b"L|1|N"]
        sending = asyncio.create_task(channel.send(order))
        assert await receive_message(peer) == order
        await asyncio.wait_for(sending, 5)


async def test_send_fails_when_the_analyser_never_answers() -> None:
    settings = LinkSettings(reply_timeout=0.2)
    async with tcp_server(Collector(), settings) as (server, peer):
        channel = await wait_for_channel(server)
        with pytest.raises(SendError, match="no reply to ENQ"):
            await asyncio.wait_for(channel.send([b"H|\\^&", b"L|1|N"]), 5)
        assert await peer.read(2) == ENQ + EOT


async def test_frame_timer_over_tcp_returns_to_neutral() -> None:
    collector = Collector()
    async with tcp_server(collector, LinkSettings(frame_timeout=0.2)) as (_, peer):
        await peer.write(ENQ)
        assert await peer.read(1) == ACK
        await asyncio.sleep(0.5)
        # The middleware gave up on this transfer: a fresh one is accepted from frame 1.
        await send_message(peer, [b"H|\\^&", b"L|1|N"])
        await asyncio.wait_for(collector.ended.wait(), 5)
    assert any(type(e).__name__ == "TimedOut" for e in collector.events)
    assert collector.texts == [b"H|\\^&", b"L|1|N"]


async def test_final_ack_waits_for_the_handler_and_a_failure_is_naked() -> None:
    release = asyncio.Event()
    calls = 0

    async def handler(channel: LinkChannel, event: Event) -> None:
        nonlocal calls
        if isinstance(event, TextReceived):
            calls += 1
            if calls == 1:
                raise RuntimeError("store unavailable")
            await release.wait()

    server = TcpServer("127.0.0.1", 0, LinkSettings(), handler)
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
        peer = StreamPeer(reader, writer)
        await peer.write(ENQ)
        assert await peer.read(1) == ACK
        data = frame(1, b"L|1|N\r")
        await peer.write(data)
        assert await peer.read(1) == NAK  # the handler failed: not kept, not acknowledged
        await peer.write(data)
        with pytest.raises(TimeoutError):
            await peer.read(1, timeout=0.3)  # held while the handler works
        release.set()
        assert await peer.read(1) == ACK
        await peer.close()


async def test_tcp_client_connects_out_and_reconnects() -> None:
    peers: asyncio.Queue[StreamPeer] = asyncio.Queue()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peers.put(StreamPeer(reader, writer))

    listener = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    collector = Collector()
    client = TcpClient("127.0.0.1", port, None, collector, backoff=Backoff(0.05, 0.2))
    task = asyncio.create_task(client.run())
    try:
        first = await asyncio.wait_for(peers.get(), 5)
        await send_message(first, [b"H|\\^&", b"L|1|N"])
        await first.close()  # the analyser drops the line
        second = await asyncio.wait_for(peers.get(), 5)
        await send_message(second, [b"H|\\^&|||again", b"L|1|N"])
        for _ in range(100):
            if len(collector.texts) == 4:
                break
            await asyncio.sleep(0.02)
        assert collector.texts == [b"H|\\^&", b"L|1|N", b"H|\\^&|||again", b"L|1|N"]
        assert client.connections == 2
        await second.close()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        listener.close()
        await listener.wait_closed()


async def test_tcp_client_retries_until_the_analyser_listens() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    client = TcpClient("127.0.0.1", port, backoff=Backoff(0.05, 0.1))
    task = asyncio.create_task(client.run())
    try:
        await asyncio.sleep(0.3)  # refused meanwhile
        assert client.connections == 0
        accepted = asyncio.Event()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set()

        listener = await asyncio.start_server(accept, "127.0.0.1", port)
        await asyncio.wait_for(accepted.wait(), 5)
        listener.close()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def serial_connection(
    collector: Collector, settings: LinkSettings | None = None
) -> tuple[PtyPeer, SerialConnection, asyncio.Task[None]]:
    peer = PtyPeer()
    connection = SerialConnection(SerialSettings(peer.path, baudrate=9600), settings, collector)
    task = asyncio.create_task(connection.run())
    await asyncio.wait_for(connection.connected.wait(), 5)
    return peer, connection, task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_serial_line_receives_a_message_over_a_pty() -> None:
    collector = Collector()
    peer, _, task = await serial_connection(collector)
    try:
        await send_message(peer, RECORDS)
        await asyncio.wait_for(collector.ended.wait(), 5)
        assert collector.texts == RECORDS
    finally:
        await stop(task)
        await peer.close()


async def test_serial_line_sends_a_message_over_a_pty() -> None:
    peer, connection, task = await serial_connection(Collector())
    try:
        assert connection.channel is not None
        order = [b"H|\\^&", b"O|1|S0002||^^^CRP|R", b"L|1|N"]
        sending = asyncio.create_task(connection.channel.send(order))
        assert await receive_message(peer) == order
        await asyncio.wait_for(sending, 5)
    finally:
        await stop(task)
        await peer.close()


async def test_serial_line_with_analyser_tolerances() -> None:
    collector = Collector()
    tolerances = FrameTolerances(no_frame_numbers=True, no_checksum=True)
    peer, _, task = await serial_connection(collector, LinkSettings(tolerances=tolerances))
    try:
        await peer.write(ENQ)
        assert await peer.read(1) == ACK
        await peer.write(b"\x02H|\\^&\rP|1\rL|1|N\r\x03")
        assert await peer.read(1) == ACK
        await peer.write(EOT)
        await asyncio.wait_for(collector.ended.wait(), 5)
        assert collector.texts == [b"H|\\^&\rP|1\rL|1|N"]
    finally:
        await stop(task)
        await peer.close()


def test_serial_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        SerialSettings("/dev/null", parity="sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SerialSettings("/dev/null", bytesize=9)  # type: ignore[arg-type]
    options = SerialSettings("/dev/ttyS0", 19200, 7, "even", 2, rtscts=True).pyserial_options()
    assert options == {
        "baudrate": 19200,
        "bytesize": 7,
        "parity": "E",
        "stopbits": 2,
        "xonxoff": False,
        "rtscts": True,
        "dsrdtr": False,
    }


# --- closing from our side (the daemon stops) ---------------------------------------------


async def until_end(peer: StreamPeer) -> bytes:
    """Everything the middleware still writes, up to its end of the connection."""
    return await asyncio.wait_for(peer.reader.read(), 5)


async def test_closing_while_we_send_ends_the_transfer_with_eot() -> None:
    async with tcp_server(Collector()) as (server, peer):
        channel = await wait_for_channel(server)
        sending = asyncio.create_task(channel.send([b"H|\\^&", b"O|1|S1||^^^GLU|R", b"L|1|N"]))
        assert await peer.read(1) == ENQ
        await peer.write(ACK)
        assert (await peer.read_until(b"\r\n")).startswith(b"\x021H|")
        channel.close()
        assert await until_end(peer) == EOT
        with pytest.raises(SendError):
            await asyncio.wait_for(sending, 5)


async def test_closing_during_a_commit_answers_it_and_nothing_after() -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def handler(channel: LinkChannel, event: Event) -> None:
        if isinstance(event, TextReceived):
            entered.set()
            await release.wait()

    server = TcpServer("127.0.0.1", 0, LinkSettings(), handler)
    await server.start()
    port = server.bound_port
    try:
        committing = StreamPeer(*await asyncio.open_connection("127.0.0.1", port))
        sending = StreamPeer(*await asyncio.open_connection("127.0.0.1", port))
        await committing.write(ENQ)
        assert await committing.read(1) == ACK
        await committing.write(frame(1, b"L|1|N\r"))
        await asyncio.wait_for(entered.wait(), 5)
        await sending.write(ENQ)
        assert await sending.read(1) == ACK
        await sending.write(frame(1, b"H|\\^&\r", last=False))
        assert await sending.read(1) == ACK

        closing = asyncio.create_task(server.close())
        await asyncio.sleep(0.1)
        # Stopping: no new connection, and a frame sent now is not answered.
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        await sending.write(frame(2, b"L|1|N\r"))
        assert await until_end(sending) == b""
        # The commit under way finishes, and the analyser has its ACK before the end.
        assert not closing.done()
        release.set()
        assert await until_end(committing) == ACK
        await asyncio.wait_for(closing, 5)
    finally:
        release.set()
        await server.close()


async def test_closing_a_serial_line_while_we_send_ends_with_eot() -> None:
    peer, connection, task = await serial_connection(Collector())
    try:
        assert connection.channel is not None
        sending = asyncio.create_task(connection.channel.send([b"H|\\^&", b"L|1|N"]))
        assert await peer.read(1) == ENQ
        await peer.write(ACK)
        assert (await peer.read_until(b"\r\n")).startswith(b"\x021H|")
        connection.channel.close()
        assert await peer.read(1) == EOT
        with pytest.raises(SendError):
            await asyncio.wait_for(sending, 5)
    finally:
        await stop(task)
        await peer.close()


class Wire:
    """A byte stream the test feeds by hand, and a sink that keeps what is written."""

    def __init__(self) -> None:
        self.chunks: asyncio.Queue[bytes | OSError] = asyncio.Queue()
        self.written = bytearray()
        self.closing = False

    async def read(self, n: int = -1) -> bytes:
        chunk = await self.chunks.get()
        if isinstance(chunk, OSError):
            raise chunk
        return chunk

    def write(self, data: bytes) -> None:
        self.written += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing


async def test_bytes_read_while_the_channel_closes_are_kept_not_answered() -> None:
    wire, release = Wire(), asyncio.Event()
    ends: list[int] = []

    async def handler(channel: LinkChannel, event: object) -> None:
        if isinstance(event, SendFailed):
            await release.wait()  # the channel is busy when the last bytes come in
        elif isinstance(event, ConnectionClosed):
            ends.append(event.end)

    channel = LinkChannel(wire, wire, LinkSettings(), handler)
    running = asyncio.create_task(channel.run())
    sending = asyncio.create_task(channel.send([b"H|\\^&", b"L|1|N"]))
    await asyncio.sleep(0.05)
    channel.close()
    await asyncio.sleep(0.05)
    late = ENQ + frame(1, b"H|\\^&\r")
    await wire.chunks.put(late)
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.wait_for(running, 5)
    with pytest.raises(SendError):
        await sending
    assert bytes(wire.written) == ENQ + EOT  # our ENQ, then EOT; the late ENQ unanswered
    assert ends == [len(late)]
    assert channel.received.peek(len(late), channel.wallclock()).data == late


async def test_reading_stops_while_the_link_is_far_behind() -> None:
    """While a commit is under way the channel reads ahead no more than a stream buffer
    would: an analyser that does not wait for its ACK cannot make it hold without bound."""
    wire, committed = Wire(), asyncio.Event()

    async def handler(channel: LinkChannel, event: object) -> None:
        if isinstance(event, TextReceived):
            await committed.wait()

    channel = LinkChannel(wire, wire, LinkSettings(), handler)
    running = asyncio.create_task(channel.run())
    await wire.chunks.put(ENQ + frame(1, b"H|\\^&\r", last=True))
    await asyncio.sleep(0.05)
    noise = b"x" * 4096
    for _ in range(40):  # 160 KiB while the first frame's commit waits
        await wire.chunks.put(noise)
    await asyncio.sleep(0.1)
    assert wire.chunks.qsize() >= 23  # 64 KiB read ahead at most, the rest left unread
    committed.set()
    await asyncio.sleep(0.1)
    assert wire.chunks.qsize() == 0
    assert wire.written.startswith(ACK + ACK)  # the ENQ, then the frame once committed
    channel.close()
    await asyncio.wait_for(running, 5)


async def test_a_stream_error_comes_after_the_bytes_read_before_it() -> None:
    wire, collector = Wire(), Collector()
    closed: list[ConnectionClosed] = []

    async def handler(channel: LinkChannel, event: Event | ConnectionClosed) -> None:
        if isinstance(event, ConnectionClosed):
            closed.append(event)
        else:
            await collector(channel, event)

    channel = LinkChannel(wire, wire, LinkSettings(), handler)
    running = asyncio.create_task(channel.run())
    message = ENQ + frame(1, b"H|\\^&\rL|1|N\r", last=True) + EOT
    await wire.chunks.put(message)
    await wire.chunks.put(ConnectionResetError("reset by peer"))
    await asyncio.wait_for(running, 5)
    assert collector.texts == [b"H|\\^&\rL|1|N"]
    assert bytes(wire.written) == ACK + ACK
    assert [c.reason for c in closed] == ["connection lost: reset by peer"]
    assert closed[0].end == len(message)


class BrokenSink(Wire):
    """A connection whose sending side fails once something was written to it."""

    async def drain(self) -> None:
        if self.written:
            raise ConnectionResetError("Connection lost")


async def test_bytes_read_before_our_side_failed_still_complete_their_message() -> None:
    """An analyser that sends its message and closes before reading our ACKs makes our
    writes fail: what was read before the failure still reaches the link and its
    handler, and the message is kept (the analyser, without its ACK, sends it again)."""
    wire, collector = BrokenSink(), Collector()
    closed: list[str] = []

    async def handler(channel: LinkChannel, event: Event | ConnectionClosed) -> None:
        if isinstance(event, ConnectionClosed):
            closed.append(event.reason)
        else:
            await collector(channel, event)

    for chunk in (ENQ, frame(1, b"H|\\^&\r", last=False), frame(2, b"L|1|N\r"), EOT):
        await wire.chunks.put(chunk)
    await wire.chunks.put(ConnectionResetError("Connection lost"))
    channel = LinkChannel(wire, wire, LinkSettings(), handler)
    await asyncio.wait_for(channel.run(), 5)
    assert collector.texts == [b"H|\\^&\rL|1|N"]
    assert closed == ["connection lost: Connection lost"]
