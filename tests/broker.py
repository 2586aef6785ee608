"""A Mosquitto broker of a test's own, which the test may stop and start again, and a
subscriber that collects what is published under a prefix."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt

from tests.daemon import free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Broker:
    """``mosquitto`` on a free loopback port, keeping nothing across a restart (so that
    what a subscriber finds after one was published after it)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self.log = workdir / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start: {self.log.read_text()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class Subscriber:
    """Everything published under ``prefix`` while it is connected, decoded from JSON."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self.host, self.port, self.prefix = host, port, prefix
        self.received: list[tuple[str, dict[str, Any], bool]] = []
        """(topic below the prefix, payload, retained)"""

    @contextlib.asynccontextmanager
    async def listening(self) -> AsyncIterator[Subscriber]:
        """Subscribed for the block; a broker stopped meanwhile ends the collection."""
        client = aiomqtt.Client(self.host, self.port)
        await client.__aenter__()
        await client.subscribe(f"{self.prefix}/#", qos=1)
        task = asyncio.create_task(self._collect(client))
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)

    async def _collect(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic).removeprefix(f"{self.prefix}/")
            payload = message.payload
            assert isinstance(payload, bytes | bytearray)
            self.received.append((topic, json.loads(payload), bool(message.retain)))

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [payload for t, payload, _ in self.received if t == topic]

    async def wait_for(self, topic: str, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:
        """The first payload on ``topic`` whose fields include ``fields``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for payload in self.on(topic):
                if all(payload.get(k) == v for k, v in fields.items()):
                    return payload
            if asyncio.get_running_loop().time() > deadline:
                seen = sorted({t for t, _, _ in self.received})
                raise AssertionError(f"nothing on {topic} with {fields}; topics seen: {seen}")
            await asyncio.sleep(0.05)
