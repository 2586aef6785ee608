"""Running the real daemon as a separate process, for end-to-end and crash tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import text

from middleware.store.database import open_engine

# The tests' ports come from where the demo's do (see simulators/ports.py for why).
from simulators.ports import free_port as free_port

ROOT = Path(__file__).resolve().parents[1]


class DaemonProcess:
    def __init__(self, workdir: Path, instruments: list[dict[str, Any]], **settings: Any) -> None:
        self.workdir = workdir
        self.config = workdir / "middleware.yaml"
        config = {"state_dir": str(workdir / "state"), "log": {"format": "json"},
                  "instruments": instruments, **settings}  # fmt: skip
        self.config.write_text(yaml.safe_dump(config))
        self.log = workdir / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.ports = [i["port"] for i in instruments if i["transport"] == "tcp-server"]

    @property
    def database(self) -> Path:
        return self.workdir / "state" / "middleware.db"

    def start(
        self, timeout: float = 20.0, *, env: dict[str, str] | None = None, wait: bool = True
    ) -> None:
        """Start the process with ``env`` added to its environment; with ``wait``, return
        once it listens on its instruments' ports (or says it runs)."""
        # Nothing of the service manager that may run the tests reaches the daemon.
        foreign = ("MIDDLEWARE_", "NOTIFY_SOCKET", "WATCHDOG_")
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(foreign)}
        env = inherited | (env or {})
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "middleware", "run", "--config", str(self.config)],
                cwd=ROOT, stdout=log, stderr=log, env=env,
            )  # fmt: skip
        if not wait:
            return
        deadline = time.monotonic() + timeout
        waiting = list(self.ports)
        while waiting:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", waiting[0]), timeout=0.2).close()
                waiting.pop(0)
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("daemon did not start listening") from None
                time.sleep(0.05)
        if not self.ports:
            self._wait_for_log("daemon running", deadline)

    def _wait_for_log(self, text: str, deadline: float) -> None:
        assert self.process is not None
        while text not in self.log.read_text():
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"daemon never logged {text!r}")
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


async def connect(
    port: int, within: float = 0.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the daemon; ``within`` seconds for a port it opens after its start (the
    LIS order port opens once the instruments are served)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.05)


def query(url: str, sql: str, **params: Any) -> list[Any]:
    """Rows of ``sql`` on the daemon's database (SQLite or PostgreSQL), as tuples."""
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql), params)]
    finally:
        engine.dispose()
