"""TLS on the analysers' links (D5), the daemon as its own process on SQLite and on
PostgreSQL: an analyser that checks the daemon's certificate gets its messages taken over
TLS (ASTM and HL7), a plain or unknown peer gets nothing stored, a daemon connecting out
talks only to an analyser whose certificate checks out, and only the addresses allowed
may connect."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from middleware.settings import InstrumentConfig
from tests.conftest import ROOT, issue_certificates
from tests.daemon import DaemonProcess, free_port, query
from tests.messages import patient
from tests.peer import ACK, ENQ, StreamPeer, send_message
from tests.test_hl7_ingest import MllpPeer, oru
from tests.test_ingest_integrity import wait_for


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The lab's CA with certificates for the daemon and an analyser at 127.0.0.1, and an
    impostor's from a stranger's CA."""
    return issue_certificates(tmp_path_factory.mktemp("pki"), ["daemon", "analyser"], ["impostor"])


def _serving(pki: dict[str, Path]) -> dict[str, str]:
    return {"cert_file": str(pki["daemon_cert"]), "key_file": str(pki["daemon_key"])}


def _checking(pki: dict[str, Path]) -> ssl.SSLContext:
    """An analyser's TLS that checks the daemon's certificate against the lab's CA."""
    return ssl.create_default_context(cafile=str(pki["ca"]))


def _results(url: str) -> list[str]:
    return [s for (s,) in query(url, "SELECT specimen_id FROM results ORDER BY id")]


def test_an_astm_analyser_over_tls_and_nothing_from_a_plain_peer(
    database_url: str, start_daemon: Callable[..., DaemonProcess], pki: dict[str, Path]
) -> None:
    port = free_port()
    daemon = start_daemon(port, tls=_serving(pki))

    async def analysers() -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=_checking(pki), server_hostname="127.0.0.1"
        )
        peer = StreamPeer(reader, writer)
        await send_message(peer, patient("S1", "5.0"))
        await peer.close()
        # A peer speaking plain ASTM to the TLS port: its ENQ is no handshake, nothing
        # is answered, nothing is kept.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(ENQ)
        await writer.drain()
        # The TLS end waits for the rest of a handshake, or gives up: never an ACK.
        with contextlib.suppress(TimeoutError):
            assert await asyncio.wait_for(reader.read(100), 2) != ACK
        writer.close()

    asyncio.run(analysers())
    assert wait_for(lambda: _results(database_url)) == ["S1"]
    assert "tls" in daemon.log.read_text()


def test_a_daemon_connecting_out_checks_the_analysers_certificate(
    database_url: str, tmp_path: Path, pki: dict[str, Path]
) -> None:
    """The analyser (or its terminal server) serves; the daemon connects out over TLS to
    it, and never talks to one whose certificate is not from the lab's CA."""

    async def scenario() -> None:
        delivered = asyncio.Event()
        impostor_spoken_to = 0

        async def analyser(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = StreamPeer(reader, writer)
            await send_message(peer, patient("S2", "5.1"))
            delivered.set()
            await reader.read()  # until the daemon closes at its stop

        async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal impostor_spoken_to
            impostor_spoken_to += 1
            writer.close()

        servers = []
        for handler, name in ((analyser, "analyser"), (impostor, "impostor")):
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(pki[f"{name}_cert"], pki[f"{name}_key"])
            servers.append(await asyncio.start_server(handler, "127.0.0.1", 0, ssl=context))
        ports = [server.sockets[0].getsockname()[1] for server in servers]
        tls = {"ca_file": str(pki["ca"])}
        daemon = DaemonProcess(
            tmp_path,
            [{"name": name, "transport": "tcp-client", "host": "127.0.0.1", "port": port,
              "tls": tls} for name, port in zip(("real", "fake"), ports, strict=True)],
            database_url=database_url,
        )  # fmt: skip
        await asyncio.to_thread(daemon.start)
        try:
            await asyncio.wait_for(delivered.wait(), 20)
            await asyncio.to_thread(
                wait_for, lambda: "certificate verify failed" in daemon.log.read_text()
            )
        finally:
            assert await asyncio.to_thread(daemon.stop) == 0
            for server in servers:
                server.close()
        # The handshake failed before the impostor's handler ran: no ASTM was spoken.
        assert impostor_spoken_to == 0

    asyncio.run(scenario())
    assert _results(database_url) == ["S2"]


def test_an_hl7_analyser_over_tls(
    database_url: str, start_daemon: Callable[..., DaemonProcess], pki: dict[str, Path]
) -> None:
    port = free_port()
    start_daemon(port, name="elite", protocol="hl7", tls=_serving(pki))

    async def analyser() -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=_checking(pki), server_hostname="127.0.0.1"
        )
        peer = MllpPeer(reader, writer)
        answer = await peer.send(oru("M1", "S3"))
        assert (answer.code, answer.control_id) == ("AA", "M1")
        await peer.close()

    asyncio.run(analyser())
    assert set(_results(database_url)) == {"S3"}


def test_only_the_addresses_allowed_may_connect(
    database_url: str, start_daemon: Callable[..., DaemonProcess]
) -> None:
    port = free_port()
    daemon = start_daemon(port, allow=["10.0.0.0/8", "192.168.1.0/24"])

    async def stranger() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(ENQ)
        await writer.drain()
        try:
            data = await asyncio.wait_for(reader.read(100), 10)
        except ConnectionResetError:  # closed with the ENQ unread
            data = b""
        writer.close()
        return data

    assert asyncio.run(stranger()) == b""  # closed unanswered
    assert wait_for(lambda: "address not allowed" in daemon.log.read_text())
    assert query(database_url, "SELECT count(*) FROM raw_transmissions") == [(0,)]


def test_a_certificate_that_cannot_be_read_stops_the_start_naming_it(tmp_path: Path) -> None:
    # Relative to the configuration file, not to the directory the daemon runs in.
    files = issue_certificates(tmp_path, ["chem"])
    config = tmp_path / "config.yaml"
    for cert, key, named in (
        ("nowhere.pem", "chem.key", tmp_path / "nowhere.pem"),
        ("chem.pem", "nowhere.key", tmp_path / "nowhere.key"),
    ):
        config.write_text(
            f"state_dir: {tmp_path / 'state'}\ninstruments:\n  - name: chem-1\n"
            f"    transport: tcp-server\n    host: 127.0.0.1\n    port: {free_port()}\n"
            f"    tls: {{cert_file: {cert}, key_file: {key}}}\n"
        )
        done = subprocess.run(
            [sys.executable, "-m", "middleware", "run", "--config", str(config)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines()[-1] == (
            f"lis-middleware run: not started: TLS on instrument chem-1: {named}: "
            "No such file or directory"
        )
    assert files["chem_cert"] == tmp_path / "chem.pem"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"transport": "serial", "serial": {"port": "/dev/x"}, "tls": {}}, "not transport serial"),
        ({"transport": "tcp-server", "port": 1, "tls": {"ca_file": "ca.pem"}}, "needs cert_file"),
        ({"transport": "tcp-client", "port": 1, "allow": ["10.0.0.0/8"]}, "not tcp-client"),
        ({"transport": "tcp-server", "port": 1, "allow": ["10.0.0.300"]}, "does not appear"),
    ],
)
def test_tls_and_allow_are_refused_where_they_cannot_apply(
    fields: dict[str, object], expected: str
) -> None:
    with pytest.raises(ValidationError, match=expected):
        InstrumentConfig.model_validate({"name": "a", **fields})
