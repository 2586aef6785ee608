"""The daemon, as a separate process, against analyser peers over TCP and a serial line."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CORPUS
from tests.daemon import DaemonProcess, connect, free_port, query
from tests.peer import ACK, ENQ, EOT, PtyPeer, StreamPeer, frame, replay

ASTM = CORPUS / "astm"


@pytest.fixture
def ports() -> Iterator[tuple[int, int]]:
    yield free_port(), free_port()


async def _run_analysers(daemon: DaemonProcess, pty: PtyPeer, ports: tuple[int, int]) -> None:
    yumizen = StreamPeer(*await connect(ports[0]))
    chemistry = StreamPeer(*await connect(ports[1]))
    await asyncio.gather(
        replay(yumizen, (ASTM / "yumizen-h500_raw_multi-frame.bin").read_bytes()),
        replay(chemistry, (ASTM / "vitros-3600_raw_censored-values.bin").read_bytes()),
        replay(pty, (ASTM / "erba-xl_raw_backtick-repeat.bin").read_bytes()),
    )
    # A malformed message: nothing in it can be read. It is kept, and the line goes on.
    await chemistry.write(ENQ)
    assert await chemistry.read(1) == ACK
    for number, text in enumerate((b"HELLO WORLD\r", b"L|1|N\r"), start=1):
        await chemistry.write(frame(number, text))
        assert await chemistry.read(1) == ACK
    await chemistry.write(EOT)
    await replay(chemistry, (ASTM / "vitros-3600_raw_results-reagent-lots.bin").read_bytes())
    await asyncio.sleep(0.3)
    await yumizen.close()
    await chemistry.close()


def test_analysers_over_tcp_and_serial_into_the_store(
    tmp_path: Path, ports: tuple[int, int], database_url: str
) -> None:
    async def scenario() -> None:
        pty = PtyPeer()
        daemon = DaemonProcess(
            tmp_path,
            [
                {
                    "name": "h500",
                    "driver": "horiba_yumizen",
                    "transport": "tcp-server",
                    "host": "127.0.0.1",
                    "port": ports[0],
                },
                {
                    "name": "vitros",
                    "driver": "ortho_vitros",
                    "transport": "tcp-server",
                    "host": "127.0.0.1",
                    "port": ports[1],
                },
                {
                    "name": "erba",
                    "driver": "erba_xl",
                    "transport": "serial",
                    "serial": {"port": pty.path},
                },
            ],
            database_url=database_url,
        )
        daemon.start()
        try:
            await asyncio.sleep(0.5)  # the serial line opens
            await _run_analysers(daemon, pty, ports)
        finally:
            assert daemon.stop() == 0
            await pty.close()

    asyncio.run(scenario())
    db = database_url
    # Recall: every result the VITROS made with reagent lot 2365, found from the command line.
    traced = subprocess.run(
        [sys.executable, "-m", "middleware", "reagents", "trace", "2365",
         "--config", str(tmp_path / "middleware.yaml"), "--format", "json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = [json.loads(line) for line in traced.stdout.splitlines()]
    assert {r["instrument"] for r in lines} == {"vitros"}
    # the first result of that message has no M record: no lot is claimed for it
    assert sorted(r["value_text"] for r in lines) == ["33.53", "34.09", "34.61", "34.81"]
    assert "4 result(s) produced with lot 2365" in traced.stderr
    per_instrument = dict(query(db, "SELECT instrument, count(*) FROM results GROUP BY instrument"))
    assert per_instrument == {"h500": 27, "vitros": 12, "erba": 1}
    assert query(db, "SELECT value_text, units FROM results WHERE instrument = 'erba'") == [
        ("0.3", "mg/dl")
    ]
    censored = query(
        db, "SELECT value_text, value_number, censor FROM results WHERE value_text = '<15'"
    )
    assert censored == [("<15", 15, "<")]
    # Every stored message has its raw bytes, byte for byte.
    raw_of = (
        "SELECT r.data FROM raw_transmissions r JOIN messages m ON r.message_id = m.id "
        "WHERE m.instrument = '{}'"
    )
    for instrument, name in (
        ("h500", "yumizen-h500_raw_multi-frame.bin"),
        ("erba", "erba-xl_raw_backtick-repeat.bin"),
    ):
        [(data,)] = query(db, raw_of.format(instrument))
        assert data == (ASTM / name).read_bytes().rstrip(b"\x04")
    [(reason, instrument, data)] = query(db, "SELECT reason, instrument, data FROM quarantine")
    assert instrument == "vitros"
    assert reason.startswith("record 1: unusable delimiter")
    assert b"HELLO WORLD" in data
    # the censored values, the malformed one, and the one after it: the line went on
    assert query(db, "SELECT count(*) FROM messages WHERE instrument = 'vitros'") == [(3,)]


def test_daemon_refuses_a_bad_configuration(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "instruments:\n  - name: x\n    transport: tcp-server\n    driver: nope\n    port: 5\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "middleware", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"{config}:4: instruments.0.driver" in done.stderr
    assert "unknown driver 'nope'" in done.stderr
