"""Running under systemd: the notify protocol, the watchdog, and the stop at SIGTERM.

systemd is played by a real AF_UNIX datagram socket (at a path, and at an abstract
address) that the real daemon process writes to; the analyser by the tests' own E1381 peer.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection
from structlog.testing import capture_logs

from middleware.daemon import Daemon, stop_seconds
from middleware.service import Notifier, notify_address, watchdog_interval
from middleware.settings import Settings
from middleware.store import Store
from middleware.store.database import open_engine
from middleware.store.writer import StoreWriter
from tests.daemon import DaemonProcess, connect, free_port, query
from tests.peer import ACK, ENQ, EOT, StreamPeer, frames_for


class ServiceManager:
    """The service manager's end of ``NOTIFY_SOCKET``: what the daemon tells it, and when."""

    def __init__(self, value: str) -> None:
        self.value = value
        """What ``NOTIFY_SOCKET`` says: a path, or ``@name`` for an abstract address."""
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind("\0" + value[1:] if value.startswith("@") else value)
        self.received: list[tuple[float, list[str]]] = []
        """Each datagram: when it came (``time.monotonic``) and its assignments."""

    def receive(self, timeout: float) -> list[str] | None:
        self.socket.settimeout(timeout)
        try:
            data = self.socket.recv(4096)
        except TimeoutError:
            return None
        assignments = data.decode().split("\n")
        self.received.append((time.monotonic(), assignments))
        return assignments

    def wait_for(self, assignment: str, timeout: float) -> float:
        """When ``assignment`` came; what comes meanwhile is kept in :attr:`received`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            got = self.receive(left)
            if got is not None and assignment in got:
                return self.received[-1][0]
        raise AssertionError(f"no {assignment} within {timeout} s: {self.received}")

    def listen(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.receive(left)

    def times(self, assignment: str, since: float = 0.0) -> list[float]:
        return [at for at, got in self.received if assignment in got and at >= since]

    def close(self) -> None:
        self.socket.close()


def instrument(port: int) -> dict[str, object]:
    return {"name": "an1", "transport": "tcp-server", "host": "127.0.0.1", "port": port}


# --- the protocol ----------------------------------------------------------------------------


def test_notify_socket_addresses() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@/org/freedesktop/systemd1/notify/42") == (
        "\0/org/freedesktop/systemd1/notify/42"
    )
    assert notify_address("vsock:2:1234") is None
    assert notify_address("@") is None


def test_the_watchdog_is_ours_only_when_watchdog_pid_names_us_or_is_unset() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, 77) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "77"}, 77) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "78"}, 77) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 77) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, 77) is None
    assert watchdog_interval({}, 77) is None


async def test_without_notify_socket_nothing_is_sent_and_nothing_fails() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "100000"})
    assert not notifier.enabled and notifier.watchdog is None
    assert notifier.send("READY=1") is False
    notifier.ready("serving", lambda now, limit: None)
    notifier.stopping("stopping")
    await notifier.close("stopped")


async def test_a_manager_gone_away_is_logged_once_and_never_raised(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with capture_logs() as logs:
        assert notifier.send("READY=1") is False
        assert notifier.send("WATCHDOG=1") is False
        manager = ServiceManager(str(tmp_path / "gone"))
        assert notifier.send("WATCHDOG=1") is True
    assert [e["event"] for e in logs] == ["service manager not told", "service manager told again"]
    assert manager.receive(1) == ["WATCHDOG=1"]
    manager.close()
    await notifier.close("stopped")


# --- the store writer's health ---------------------------------------------------------------


def blocked_until(
    release: threading.Event, started: threading.Event
) -> Callable[[Connection], None]:
    def work(_conn: Connection) -> None:
        started.set()
        release.wait(30)

    return work


async def test_a_store_writer_stuck_in_one_batch_stops_the_pings_until_it_moves(
    tmp_path: Path,
) -> None:
    manager = ServiceManager(str(tmp_path / "notify"))
    engine = open_engine(f"sqlite:///{tmp_path / 'writer.db'}")
    writer = StoreWriter(engine)
    writer.start()
    # 0.2 s: pings every 0.1 s, and a batch held longer than 0.2 s is stuck.
    notifier = Notifier({"NOTIFY_SOCKET": manager.value, "WATCHDOG_USEC": "200000"})
    release, started = threading.Event(), threading.Event()
    try:
        with capture_logs() as logs:
            notifier.ready("serving", writer.stuck)
            await asyncio.to_thread(manager.listen, 0.5)
            assert len(manager.times("WATCHDOG=1")) >= 3
            # The job runs on the writer thread: the event loop stays free all along.
            held = writer.enqueue(blocked_until(release, started))
            queued = writer.enqueue(lambda conn: "behind it")
            assert await asyncio.to_thread(started.wait, 5)
            blocked_at = time.monotonic()
            await asyncio.to_thread(manager.listen, 1.2)
            # At most the pings of the first 0.2 s (plus one check's lag) go out.
            late = manager.times("WATCHDOG=1", since=blocked_at + 0.35)
            assert late == [], late
            assert writer.stuck(time.monotonic(), 0.2) is not None
            release.set()
            assert await asyncio.wait_for(queued, 5) == "behind it"
            await held
            moved_at = time.monotonic()
            await asyncio.to_thread(manager.listen, 0.5)
            assert len(manager.times("WATCHDOG=1", since=moved_at)) >= 3
        events = [e["event"] for e in logs]
        # Said once when the pings stop (not at each check), and once when they resume.
        stopped = "service watchdog no longer fed; systemd will restart the daemon"
        assert events.count(stopped) == 1
        assert events.count("service watchdog fed again") == 1
        [why] = [e["reason"] for e in logs if e["event"] == stopped]
        assert why.startswith("store writer busy with one batch for")
        statuses = [a for _, got in manager.received for a in got if a.startswith("STATUS=")]
        assert statuses == ["STATUS=serving", f"STATUS=unhealthy: {why}", "STATUS=serving"]
    finally:
        release.set()
        await notifier.close("stopped")
        writer.close()
        engine.dispose()
        manager.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_store_writer_whose_thread_ended_is_stuck_until_closed(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'writer.db'}")
    writer = StoreWriter(engine)
    assert writer.stuck(time.monotonic(), 1.0) is None  # not started yet

    def dies(_batch: object) -> None:
        raise SystemExit  # what no `except Exception` in the writer would catch

    writer._commit = dies  # type: ignore[method-assign,assignment]
    writer.start()

    async def submit() -> None:
        writer.enqueue(lambda conn: None)

    asyncio.run(submit())
    writer._thread.join(5)
    assert writer.stuck(time.monotonic(), 1.0) == "store writer thread ended"
    writer.close()
    assert writer.stuck(time.monotonic(), 1.0) is None
    engine.dispose()


async def test_the_daemon_allows_a_write_its_lock_timeout_before_calling_it_stuck(
    tmp_path: Path,
) -> None:
    daemon = Daemon(Settings(state_dir=tmp_path, database_lock_timeout=10))
    assert daemon.stuck(time.monotonic(), 1.0) is None  # nothing open yet
    daemon.store = Store(f"sqlite:///{tmp_path / 'middleware.db'}")
    release, started = threading.Event(), threading.Event()
    try:
        held = daemon.store.write_soon(blocked_until(release, started))
        assert await asyncio.to_thread(started.wait, 5)
        now = time.monotonic()
        # A 1 s watchdog, but a write may wait 10 s for a lock (and 5 s more for itself).
        assert daemon.stuck(now + 14, 1.0) is None
        assert daemon.stuck(now + 16, 1.0) is not None
        assert daemon.stuck(now + 61, 60.0) is not None
        assert daemon.stuck(now + 59, 60.0) is None
        release.set()
        await held
        assert daemon.stuck(time.monotonic(), 1.0) is None
    finally:
        release.set()
        await asyncio.to_thread(daemon.store.close)


# --- the daemon process under a service manager ----------------------------------------------


def test_ready_once_listening_then_watchdog_pings_then_stopping_and_exit_0(
    tmp_path: Path,
) -> None:
    manager = ServiceManager(str(tmp_path / "notify"))
    port, api_port = free_port(), free_port()
    daemon = DaemonProcess(
        tmp_path, [instrument(port)], api={"host": "127.0.0.1", "port": api_port}
    )
    daemon.start(env={"NOTIFY_SOCKET": manager.value, "WATCHDOG_USEC": "1000000"}, wait=False)
    try:
        ready_at = manager.wait_for("READY=1", 30)
        # At once, no retry: READY=1 promises the instrument's port and the API answer.
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        with socket.create_connection(("127.0.0.1", api_port), timeout=1) as api:
            api.settimeout(2)
            api.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert api.recv(12) == b"HTTP/1.1 200"
        first = manager.received[0][1]
        assert first[0].startswith("STATUS=starting") and "READY=1" not in first
        [ready] = [got for _, got in manager.received if "READY=1" in got]
        assert ready == ["READY=1", "STATUS=serving 1 instrument(s)"]

        manager.listen(3.0)
        pings = manager.times("WATCHDOG=1", since=ready_at)
        # Every half interval (0.5 s): never a gap near the 1 s systemd would act on.
        assert 5 <= len(pings) <= 8, pings
        gaps = [b - a for a, b in zip([ready_at, *pings], pings, strict=False)]
        assert max(gaps) < 0.8, gaps

        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        term_at = time.monotonic()
        stopping_at = manager.wait_for("STOPPING=1", 5)
        assert stopping_at - term_at < 1.0
        assert daemon.process.wait(stop_seconds(Settings())) == 0
        manager.listen(0.2)
        assert manager.received[-1][1] == ["STATUS=stopped"]
        assert "READY=1" not in [a for _, got in manager.received[-3:] for a in got]
    finally:
        daemon.stop()
        manager.close()


def test_an_abstract_notify_socket_and_a_watchdog_meant_for_another_process(
    tmp_path: Path,
) -> None:
    manager = ServiceManager(f"@lis-middleware-test/{uuid.uuid4().hex}")
    port = free_port()
    daemon = DaemonProcess(tmp_path, [instrument(port)])
    # WATCHDOG_PID names this test's process, not the daemon: it must send no pings.
    watchdog = {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
    daemon.start(env={"NOTIFY_SOCKET": manager.value, **watchdog}, wait=False)
    try:
        ready_at = manager.wait_for("READY=1", 30)
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        manager.listen(1.0)
        assert manager.times("WATCHDOG=1") == []
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        assert manager.wait_for("STOPPING=1", 5) > ready_at
        assert daemon.process.wait(stop_seconds(Settings())) == 0
    finally:
        daemon.stop()
        manager.close()


# --- SIGTERM in the middle of a stream -------------------------------------------------------


def message(n: int) -> list[bytes]:
    return [
        b"H|\\^&|||STOP-TEST|||||||P|LIS2-A2|20260301080000",
        b"P|1||PAT%03d" % n,
        b"O|1|S%04d||^^^GLU\\^^^K|R" % n,
        b"R|1|^^^GLU|%d.1|mmol/L||N||F||||20260301075900" % n,
        b"R|2|^^^K|4.%d|mmol/L||N||F||||20260301075900" % (n % 10),
        b"L|1|N",
    ]


def test_sigterm_during_a_stream_keeps_every_acknowledged_message_and_exits_0(
    tmp_path: Path, database_url: str
) -> None:
    port = free_port()
    daemon = DaemonProcess(tmp_path, [instrument(port)], database_url=database_url)
    daemon.start()
    assert daemon.process is not None
    process = daemon.process
    term_after = 5
    acknowledged: list[int] = []
    sent_at: list[float] = []

    async def analyser() -> None:
        """Sends messages back to back; SIGTERM goes as the last frame of one leaves, so
        the daemon is stopped while that message is being committed."""
        peer = StreamPeer(*await connect(port))
        try:
            for n in range(1000):
                await peer.write(ENQ)
                if await peer.read(1) != ACK:
                    return
                frames = frames_for(message(n))
                for i, data in enumerate(frames):
                    await peer.write(data)
                    if n == term_after and i == len(frames) - 1:
                        process.send_signal(signal.SIGTERM)
                        sent_at.append(time.monotonic())
                    if await peer.read(1) != ACK:
                        return
                acknowledged.append(n)
                await peer.write(EOT)
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the daemon closed the connection: what was not ACKed comes again
        finally:
            await peer.close()

    try:
        asyncio.run(analyser())
        code = process.wait(stop_seconds(Settings()))
        stopped_in = time.monotonic() - sent_at[0]
    finally:
        daemon.stop()
    assert code == 0
    assert stopped_in < stop_seconds(Settings())
    assert term_after - 1 in acknowledged
    # The analyser was cut off soon after: the stop does not go on answering the stream.
    assert max(acknowledged) <= term_after + 1
    stored = {s for (s,) in query(database_url, "SELECT specimen_id FROM results")}
    assert {f"S{n:04d}" for n in acknowledged} <= stored
    log = daemon.log.read_text()
    assert "daemon stopped" in log
