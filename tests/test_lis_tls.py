"""TLS to and from the LIS (D5): results go only to a LIS whose certificate checks out;
orders come only over TLS, from the addresses allowed."""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime
from pathlib import Path

import hl7
import pytest

from middleware.delivery import LisSender
from middleware.domain import Measurement, Result
from middleware.hl7.results import Reported, oru_r01
from middleware.orders_in import OrderReceiver
from middleware.settings import LisConfig, TlsConfig
from middleware.store import Store, outbox
from middleware.transport.tls import TlsError, client_context, server_context
from tests.conftest import issue_certificates
from tests.lis_peer import LisPeer
from tests.test_lis_orders import orm

AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A lab CA with the LIS's certificate for 127.0.0.1, and a stranger's CA."""
    return issue_certificates(tmp_path_factory.mktemp("pki"), ["lis"], ["impostor"])


def _server(pki: dict[str, Path], name: str) -> ssl.SSLContext:
    return server_context(TlsConfig(cert_file=pki[f"{name}_cert"], key_file=pki[f"{name}_key"]))


def _queue(store: Store) -> None:
    result = Result("S1", "GLU", "GLU", Measurement.parse("5.2"), instrument="chem-1")
    with store.engine.begin() as conn:
        outbox.enqueue(
            conn, "S1", "chem-1", "C1", oru_r01("C1", AT, "S1", None, [Reported(result)]), AT
        )


@pytest.mark.parametrize("lis_name", ["lis", "impostor"])
async def test_results_go_only_to_a_lis_whose_certificate_checks_out(
    tmp_path: Path, pki: dict[str, Path], lis_name: str
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    _queue(store)
    lis = LisPeer()
    port = await lis.start(tls=_server(pki, lis_name))
    config = LisConfig(
        host="127.0.0.1", port=port, ack_timeout=2, tls=TlsConfig(ca_file=pki["ca"]),
        backoff={"base": 0.1, "ceiling": 0.2},  # type: ignore[arg-type]
    )  # fmt: skip
    sender = asyncio.create_task(LisSender(config, store, "node").run())
    try:
        if lis_name == "lis":
            await lis.wait_for(1)
            while store.read(outbox.depth):
                await asyncio.sleep(0.05)
        else:
            await asyncio.sleep(1.5)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await lis.stop()
        log = store.read(lambda c: outbox.entries(c, ("pending", "delivered")))
        store.close()
    if lis_name == "lis":
        assert [r.control_id for r in lis.received] == ["C1"]
        assert log[0].state == "delivered"
    else:
        assert lis.received == [] and log[0].state == "pending"


async def test_orders_come_over_tls_and_only_from_the_addresses_allowed(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'orders.db'}")
    client = client_context(TlsConfig(ca_file=pki["ca"]))
    answers = []
    try:
        for allow in (["10.0.0.0/8"], ["127.0.0.0/8"]):
            receiver = OrderReceiver(store, tls=_server(pki, "lis"), allow=allow)
            port = await receiver.start("127.0.0.1", 0)
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client, server_hostname="127.0.0.1"
            )
            writer.write(b"\x0b" + orm("O1").encode() + b"\x1c\r")
            await writer.drain()
            try:
                block = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10)
                answers.append(str(hl7.parse(block[1:-2].decode()).segment("MSA")[1]))
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                answers.append("closed")
            writer.close()
            await receiver.close()
    finally:
        store.close()
    assert answers == ["closed", "AA"]


def test_unusable_certificates_are_refused_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(TlsError, match=f"^TLS to the LIS: {missing}: No such file"):
        client_context(TlsConfig(ca_file=missing))
    with pytest.raises(TlsError, match=f"^TLS on the orders port: {missing}: No such file"):
        server_context(TlsConfig(cert_file=missing, key_file=missing))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TlsError, match=f"^TLS to the LIS: {garbage}: "):
        client_context(TlsConfig(ca_file=garbage))
    with pytest.raises(TlsError, match=f"^TLS on the orders port: {garbage} with {garbage}: "):
        server_context(TlsConfig(cert_file=garbage, key_file=garbage))
