"""Telling systemd how the daemon is: the ``sd_notify`` protocol, without libsystemd.

Under ``Type=notify`` the service manager gives the daemon a datagram socket in
``NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract address) and reads newline-separated
``KEY=value`` assignments from it: ``READY=1`` once the daemon serves, ``STATUS=...`` for
``systemctl status``, ``STOPPING=1`` when it begins to stop, and ``WATCHDOG=1`` more often
than ``WATCHDOG_USEC``, or it is killed and restarted (see sd_notify(3), sd_watchdog_enabled(3)).

Outside systemd ``NOTIFY_SOCKET`` is unset and every call here does nothing. A message that
cannot be sent is logged, never raised: telling the manager must not stop the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger("middleware.service")

HealthCheck = Callable[[float, float], str | None]
"""``(now, limit) -> why not``: why the daemon cannot do its work any more, None while it
can; ``now`` is ``time.monotonic()``, ``limit`` the watchdog interval in seconds."""

#: How long a send may hold the loop when the manager does not read its socket.
_SEND_TIMEOUT = 0.5


def notify_address(value: str) -> str | None:
    """The socket address ``NOTIFY_SOCKET`` names, as ``socket.sendto`` takes it; None for
    a kind this daemon does not speak (``vsock:`` of a virtual machine's manager)."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds within which the manager expects ``WATCHDOG=1``, None when it expects none
    from this process: ``WATCHDOG_PID``, when set, names the one process it watches."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdecimal() or int(usec) == 0:
        return None
    watched = environ.get("WATCHDOG_PID", "")
    if watched and (not watched.isdecimal() or int(watched) != pid):
        return None
    return int(usec) / 1_000_000


class Notifier:
    """The daemon's side of the notify socket."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        raw = environ.get("NOTIFY_SOCKET", "")
        self.address = notify_address(raw) if raw else None
        if raw and self.address is None:
            log.warning("NOTIFY_SOCKET not understood; the service manager is not told",
                        notify_socket=raw)  # fmt: skip
        self.watchdog = watchdog_interval(environ, os.getpid()) if self.address else None
        """Seconds within which ``WATCHDOG=1`` must come; None when nobody watches."""
        self._socket: socket.socket | None = None
        self._running = "running"
        self._failing = False
        self._watching: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments in one datagram; False when not sent."""
        if self.address is None:
            return False
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.settimeout(_SEND_TIMEOUT)
            self._socket.sendto(message, self.address)
        except OSError as exc:
            # Once per outage, not at every ping.
            if not self._failing:
                log.warning("service manager not told", message=message.decode(), error=str(exc))
                self._failing = True
            return False
        if self._failing:
            log.info("service manager told again")
            self._failing = False
        return True

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def ready(self, status: str, check: HealthCheck) -> None:
        """The daemon serves: say so, and keep the watchdog fed while ``check`` finds
        nothing wrong."""
        self._running = status
        self.send("READY=1", f"STATUS={status}")
        if self.watchdog is not None and self._watching is None:
            self._watching = asyncio.create_task(self._feed_watchdog(self.watchdog, check))

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    async def close(self, status: str) -> None:
        """The daemon has stopped: a last status, and no more pings."""
        if self._watching is not None:
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching
            self._watching = None
        self.status(status)
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def _feed_watchdog(
        self, interval: float, check: HealthCheck, clock: Callable[[], float] = time.monotonic
    ) -> None:
        # Sent from the event loop itself: a loop that no longer turns sends nothing, and
        # neither does one whose store cannot commit; either way systemd restarts the
        # daemon, and the analysers send again what was not acknowledged.
        withheld: str | None = None
        while True:
            try:
                problem = check(clock(), interval)
            except Exception as exc:
                problem = f"health check failed: {exc!r}"
            if problem is None:
                self.send("WATCHDOG=1")
                if withheld is not None:
                    log.warning("service watchdog fed again", was=withheld)
                    self.status(self._running)
                    withheld = None
            elif withheld is None:
                log.error("service watchdog no longer fed; systemd will restart the daemon",
                          reason=problem, watchdog_seconds=interval)  # fmt: skip
                self.status(f"unhealthy: {problem}")
                withheld = problem
            await asyncio.sleep(interval / 2)
