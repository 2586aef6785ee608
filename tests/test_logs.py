"""The daemon's log: one JSON object per line in service mode, each line naming what it
concerns (instrument, connection, message, outbox entry), and no patient's name,
identifier or result value at info level."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from middleware.daemon import configure_logging
from tests.conftest import ROOT
from tests.daemon import DaemonProcess, connect, free_port
from tests.lis_peer import LisPeer
from tests.messages import qc
from tests.peer import StreamPeer, send_message

NAME, PATIENT_ID, VALUE = b"ZEBEDEE^MARGUERITE", b"PID-778899", b"5.437"


def _patient(specimen: bytes) -> list[bytes]:
    return [
        b"H|\\^&|||CHEM-1|||||||P|LIS2-A2",
        b"P|1||" + PATIENT_ID + b"||" + NAME + b"||19600101|F",
        b"O|1|" + specimen + b"||^^^GLU|R",
        b"R|1|^^^GLU|" + VALUE + b"|mmol/L||N||F",
        b"L|1|N",
    ]


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_log_lines_name_what_they_concern_and_no_patient(
    tmp_path: Path, database_url: str
) -> None:
    lis = LisPeer()
    lis_port = await lis.start()
    daemon = DaemonProcess(
        tmp_path,
        [{"name": "chem-1", "transport": "tcp-server", "host": "127.0.0.1",
          "port": free_port()}],
        database_url=database_url, rules_dir=str(ROOT / "rules"),
        lis={"host": "127.0.0.1", "port": lis_port, "ack_timeout": 2.0},
    )  # fmt: skip
    await asyncio.to_thread(daemon.start)
    try:
        peer = StreamPeer(*await connect(daemon.ports[0]))
        for message in (qc("5.20", "15.60"), _patient(b"S-77")):
            await send_message(peer, message)
        await peer.close()
        await lis.wait_for(1)
        await asyncio.sleep(0.3)
    finally:
        assert await asyncio.to_thread(daemon.stop) == 0
        await lis.stop()
    # The LIS has them (the message carried them), the log does not.
    assert PATIENT_ID.decode() in lis.received[0].text and VALUE.decode() in lis.received[0].text
    raw = daemon.log.read_bytes()
    for secret in (NAME, b"ZEBEDEE", PATIENT_ID, VALUE):
        assert secret not in raw, secret
    lines = _lines(daemon.log)
    assert all({"event", "level", "timestamp"} <= set(line) for line in lines)
    kept = [line for line in lines if line["event"] == "message kept"]
    assert len(kept) == 2
    assert all(line["instrument"] == "chem-1" and line["connection_id"] for line in kept)
    assert all(line["message_id"] for line in kept)
    assert kept[-1]["specimens"] == ["S-77"]
    delivered = [line for line in lines if line["event"] == "delivered to the LIS"]
    assert len(delivered) == 1
    assert delivered[0]["specimen"] == "S-77" and delivered[0]["outbox_id"]
    assert delivered[0]["instrument"] == "chem-1" and delivered[0]["control_id"]


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """The process's logging as it was: configure_logging changes it for every test."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.usefixtures("logging_restored")
def test_console_lines_on_a_terminal_and_json_otherwise(capsys: Any) -> None:
    configure_logging("info", "auto")  # stderr is captured here: not a terminal
    structlog.get_logger("t").info("hello", instrument="an1")
    line = capsys.readouterr().err.strip()
    assert json.loads(line)["instrument"] == "an1"
    configure_logging("info", "console")
    structlog.get_logger("t").info("hello", instrument="an1")
    line = capsys.readouterr().err.strip()
    assert "hello" in line and "instrument=an1" in line and not line.startswith("{")


@pytest.mark.usefixtures("logging_restored")
def test_a_log_stream_gone_never_fails_the_thread_that_logs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gone = (tmp_path / "closed.log").open("w")
    gone.close()
    monkeypatch.setattr(sys, "stderr", gone)
    configure_logging("info", "json")
    failures: list[BaseException] = []

    def store_writer_logs() -> None:
        try:
            structlog.get_logger("middleware.store").error("store write failed", error="x")
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=store_writer_logs)
    thread.start()
    thread.join(5)
    assert failures == []


def test_the_libraries_lines_are_json_too() -> None:
    """The MQTT client, uvicorn and asyncio log through the standard library: in a process
    logging JSON, their lines are JSON objects as well, below warning left out."""
    program = (
        "import logging\n"
        "from middleware.daemon import configure_logging\n"
        "configure_logging('info', 'json')\n"
        "logging.getLogger('mqtt').warning('There are %d pending publish calls.', 17)\n"
        "logging.getLogger('mqtt').info('Connected')\n"
        "logging.getLogger('uvicorn.error').error('boom')\n"
        "try:\n"
        "    1 / 0\n"
        "except ZeroDivisionError:\n"
        "    logging.getLogger('uvicorn.error').exception('Exception in ASGI application')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(line["logger"], line["level"], line["event"]) for line in lines] == [
        ("mqtt", "warning", "There are 17 pending publish calls."),
        ("uvicorn.error", "error", "boom"),
        ("uvicorn.error", "error", "Exception in ASGI application"),
    ]
    assert all(line["timestamp"].endswith("Z") for line in lines)
    # The traceback as text, not a tuple naming a traceback object.
    assert "ZeroDivisionError: division by zero" in lines[-1]["exception"]
