"""``/metrics``, ``/healthz`` and ``/readyz`` of a running daemon, and what makes it not
ready."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Connection

from middleware.metrics import MAX_TESTS, Metrics
from middleware.monitor import Monitor
from middleware.store import Store, outbox
from middleware.store.notices import QcEvaluated, ResultDecided
from middleware.store.schema import outbox as outbox_table
from middleware.store.writer import Committed
from tests.conftest import ROOT
from tests.daemon import DaemonProcess, connect, free_port
from tests.messages import patient, qc
from tests.peer import ACK, ENQ, EOT, NAK, StreamPeer, frame, send_message
from tests.test_api import wait_until_listening


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def _analyser(port: int) -> None:
    peer = StreamPeer(*await connect(port))
    for message in (qc("5.20", "15.60"), patient("S-1", "5.4"), patient("S-2", "31.0")):
        await send_message(peer, message)
    # A frame whose checksum is wrong is refused; the transfer then ends unfinished.
    await peer.write(ENQ)
    assert await peer.read(1) == ACK
    bad = bytearray(frame(1, b"H|\\^&|||CHEM-1\r"))
    bad[-4:-2] = b"00" if bad[-4:-2] != b"00" else b"01"
    await peer.write(bytes(bad))
    assert await peer.read(1) == NAK
    await peer.write(EOT)
    await peer.close()


async def test_metrics_count_what_the_daemon_did_and_the_probes_answer(
    tmp_path: Path, database_url: str
) -> None:
    analyser_port, api_port = free_port(), free_port()
    daemon = DaemonProcess(
        tmp_path,
        [{"name": "chem-1", "transport": "tcp-server", "host": "127.0.0.1", "port": analyser_port}],
        database_url=database_url, rules_dir=str(ROOT / "rules"), figures_interval=0.2,
        api={"host": "127.0.0.1", "port": api_port},
    )  # fmt: skip
    daemon.start()
    base = f"http://127.0.0.1:{api_port}"
    try:
        await asyncio.to_thread(wait_until_listening, api_port)
        await _analyser(analyser_port)
        await asyncio.sleep(1.0)  # the transfer's end is stored, the figures read again
        async with httpx.AsyncClient(base_url=base) as client:
            scraped = await client.get("/metrics")
            live, ready = await client.get("/healthz"), await client.get("/readyz")
    finally:
        assert daemon.stop() == 0
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    m = _samples(scraped.text)
    chem = (("instrument", "chem-1"),)
    assert m[("lis_middleware_messages_total", (*chem, ("outcome", "message")))] == 3
    assert m[("lis_middleware_messages_total", (*chem, ("outcome", "quarantined")))] == 1
    assert m[("lis_middleware_results_total", chem)] == 2
    assert m[("lis_middleware_control_results_total", chem)] == 2
    assert m[("lis_middleware_ack_latency_seconds_count", chem)] == 3
    assert m[("lis_middleware_link_errors_total", (*chem, ("kind", "checksum")))] == 1
    assert m[("lis_middleware_decisions_total", (("action", "release"),))] == 1
    assert m[("lis_middleware_decisions_total", (("action", "hold"),))] == 1
    assert sum(v for (name, _), v in m.items() if name == "lis_middleware_holds_total") >= 1
    evaluated = (("instrument", "chem-1"), ("status", "accept"), ("test", "GLU"))
    assert m[("lis_middleware_qc_evaluations_total", evaluated)] == 2
    assert m[("lis_middleware_store_commit_seconds_count", ())] >= 3
    assert m[("lis_middleware_open_holds", ())] == 1
    assert m[("lis_middleware_qc_tests", (("state", "in-control"),))] == 1
    assert m[("lis_middleware_connections", chem)] == 0
    assert live.status_code == 200 and live.json()["status"] == "ok"
    assert ready.status_code == 200, ready.json()


async def test_not_ready_while_starting_and_while_the_lis_outbox_is_stuck(
    database_url: str,
) -> None:
    store = Store(database_url)
    now = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    monitor = Monitor(store, Metrics(), outbox_stuck_after=600, clock=lambda: now)
    try:
        assert len(monitor.not_ready()) == 2  # not serving; the store not read yet
        monitor.serving = True
        await monitor.read()
        assert monitor.not_ready() == []

        def queue(conn: Connection) -> None:
            old = outbox.enqueue(conn, "S1", "chem-1", "C1", "MSH|...", now - timedelta(hours=1))
            stopped = outbox.enqueue(conn, "S2", "chem-1", "C2", "MSH|...", now)
            conn.execute(
                outbox_table.update()
                .where(outbox_table.c.id == stopped)
                .values(state=outbox.STOPPED)
            )
            assert old

        await store.write(queue)
        await monitor.read()
        reasons = monitor.not_ready()
        assert any("stopped by an error" in r for r in reasons)
        assert any("waited 3600 s" in r for r in reasons)
        metrics = _samples(monitor.metrics.exposition().decode())
        assert metrics[("lis_middleware_outbox_entries", (("state", "stopped"),))] == 1
        assert metrics[("lis_middleware_outbox_oldest_pending_seconds", ())] == 3600
    finally:
        await asyncio.to_thread(store.close)


def test_the_sample_dashboard_asks_only_for_metrics_the_daemon_exports() -> None:
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    asked = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"lis_middleware_[a-z_]+", target["expr"])
    }
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    exported = {
        family.name + suffix
        for family in text_string_to_metric_families(Metrics().exposition().decode())
        for suffix in suffixes.get(family.type, ("",))
    }
    assert len(asked) >= 12
    assert asked <= exported, asked - exported


async def test_not_live_while_the_store_writer_is_stuck_in_one_batch(database_url: str) -> None:
    store = Store(database_url)
    monitor = Monitor(store, Metrics(), stuck=lambda: store.writer.stuck(time.monotonic(), 0.2))
    release = threading.Event()
    try:
        assert monitor.not_live() == []
        stuck = store.write_soon(lambda conn: release.wait(10))
        await asyncio.sleep(0.5)
        (reason,) = monitor.not_live()
        assert "store writer busy with one batch" in reason
        release.set()
        await stuck
        # The writer marks itself free just after it resolves the batch's futures.
        for _ in range(100):
            if not monitor.not_live():
                break
            await asyncio.sleep(0.01)
        assert monitor.not_live() == []
    finally:
        release.set()
        await asyncio.to_thread(store.close)


def test_what_analysers_send_makes_no_series_without_bound() -> None:
    """Each label value is a series kept for the life of the process: a flag's text or a
    lot in a hold reason, and test codes past MAX_TESTS, do not each make one."""
    at = datetime(2026, 3, 1, tzinfo=UTC)
    metrics = Metrics()
    holds = [
        ResultDecided(n, "chem-1", f"S{n}", "GLU", "hold", (f"instrument-flag:text {n}",),
                      False, "engine", at)
        for n in range(1000)
    ]  # fmt: skip
    controls = [
        QcEvaluated("chem-1", f"T{n}", "1", "1", "accept", (), (), "0.1", at)
        for n in range(MAX_TESTS + 100)
    ]
    metrics.committed(Committed([*holds, *controls], 0.01, 1))
    series = _samples(metrics.exposition().decode())
    reasons = {labels for (name, labels) in series if name == "lis_middleware_holds_total"}
    assert reasons == {(("reason", "instrument-flag"),)}
    tests = {
        dict(labels)["test"]
        for (name, labels) in series
        if name == "lis_middleware_qc_evaluations_total"
    }
    assert len(tests) == MAX_TESTS + 1 and "other" in tests
    assert series[
        ("lis_middleware_qc_evaluations_total",
         (("instrument", "chem-1"), ("status", "accept"), ("test", "other")))
    ] == 100  # fmt: skip
