"""The fault cases of ``make faults``: each runs a stream from simulated analysers through
the real daemon to the simulated LIS, commits its fault while the stream runs, lets the
system recover and returns the account of every result (faults/rig.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from faults.rig import Outcome, Rig, Station, stations
from simulators.analyser import Opener
from simulators.ports import free_port
from simulators.profiles import profile
from simulators.scenarios import Planner, plan
from tests.broker import Broker, Subscriber
from tests.daemon import connect
from tests.peer import ACK, ENQ, EOT, StreamPeer, frames_for, send_message


@dataclass(frozen=True, slots=True)
class Options:
    workdir: Path
    database: str
    """sqlite or postgresql."""
    url: str
    kills: int = 100
    outage: float = 120.0
    """Seconds the LIS is down."""
    seed: int = 1


Case = Callable[[Options], Coroutine[None, None, Outcome]]


async def sigkill(o: Options) -> Outcome:
    """The daemon killed at random moments of a stream from three analysers and towards
    the LIS, and started again each time."""
    # Enough samples for the kills at two a second each; the rest goes at full speed.
    rig = Rig(
        o.workdir, o.url, stations("chemistry", "haematology", "immunoassay", patients=o.kills * 6)
    )
    rng = random.Random(o.seed)
    async with rig:
        sending = asyncio.create_task(rig.run_analysers(rate=2.0))
        kills = 0
        while kills < o.kills and not sending.done():
            await asyncio.sleep(rng.uniform(0.1, 2.5))
            await rig.restart()
            kills += 1
        rig.full_speed()
        await sending
        return await rig.settle("sigkill", o.database, f"{kills} kills")


async def lis_down(o: Options) -> Outcome:
    """The LIS down for minutes while the analysers send, then back."""
    patients = int(2 * (o.outage + 20))
    rig = Rig(o.workdir, o.url, stations("chemistry", "haematology", patients=patients))
    async with rig:
        sending = asyncio.create_task(rig.run_analysers(rate=2.0))
        await asyncio.sleep(5)
        await rig.lis.stop()
        await asyncio.sleep(o.outage)
        await rig.lis.start("127.0.0.1", rig.lis_port)
        await sending
        return await rig.settle("lis-down", o.database, f"LIS down {o.outage:.0f} s")


async def lis_refuses(o: Options) -> Outcome:
    """The LIS answering AE, then AR, then AA again: the refused messages are stopped for
    a person (the default ``on_error: stop``), everything else goes."""
    rig = Rig(o.workdir, o.url, stations("chemistry", "haematology", patients=60))
    async with rig:
        sending = asyncio.create_task(rig.run_analysers(rate=2.0))
        for answer in ("AE", "AR", "AA"):
            await asyncio.sleep(4)
            rig.lis.ack = answer
        await sending
        refused = sum(1 for m in rig.lis.received if m.answer in ("AE", "AR"))
        outcome = await rig.settle("lis-refuses", o.database, f"{refused} messages refused")
    if not outcome.held:
        return _failed(outcome, "nothing was stopped for the refusals")
    return outcome


async def lis_slow(o: Options) -> Outcome:
    """The LIS answering later than the ACK timeout for a while: messages are sent again
    under their control id, never under a new one."""
    rig = Rig(
        o.workdir, o.url, stations("chemistry", "haematology", patients=60), lis={"ack_timeout": 1}
    )
    async with rig:
        sending = asyncio.create_task(rig.run_analysers(rate=2.0))
        await asyncio.sleep(3)
        rig.lis.delay = 2.5
        await asyncio.sleep(12)
        rig.lis.delay = 0.0
        await sending
        outcome = await rig.settle("lis-slow", o.database)
    again = len(rig.lis.received) - len({m.control_id for m in rig.lis.received})
    return _noted(outcome, f"{again} messages received again under their control id")


def _faulty_line(fault: str, patients: int) -> list[Station]:
    chem = profile("chemistry")
    faulty = Station("chemistry-1", chem, plan(chem, fault, patients, 1, datetime.now()))
    return [faulty, *stations("haematology", patients=patients)[:1]]


async def _analyser_fault(o: Options, case: str, fault: str) -> Outcome:
    rig = Rig(o.workdir, o.url, _faulty_line(fault, 30))
    async with rig:
        await rig.run_analysers()
        faulty = rig.stations[0].analyser
        assert faulty is not None
        committed = faulty.tally.faults
        outcome = await rig.settle(case, o.database, f"{committed} faults committed")
    return outcome if committed else _failed(outcome, "the fault was never committed")


async def analyser_disconnect(o: Options) -> Outcome:
    """An analyser dropping its connection in the middle of a message, now and then."""
    return await _analyser_fault(o, "analyser-disconnect", "drop-mid-message")


async def analyser_corrupt(o: Options) -> Outcome:
    """An analyser sending frames with a wrong checksum, now and then."""
    return await _analyser_fault(o, "analyser-corrupt", "bad-checksum")


async def analyser_never_acks(o: Options) -> Outcome:
    """An analyser that asks for a specimen's orders and then never answers the host's
    ENQ: the host gives up on its answer, keeps serving the others, and takes the
    analyser's next message."""
    rig = Rig(o.workdir, o.url, stations("haematology", patients=30))
    mute = Station("chemistry-9", profile("chemistry"))
    rig.stations.append(mute)
    rig.daemon = rig.new_daemon(o.workdir / "daemon", rig.stations)
    planner = Planner(mute.profile, 9, datetime.now())
    async with rig:
        rig.stations.remove(mute)  # its analyser is this function
        sending = asyncio.create_task(rig.run_analysers(rate=4.0))
        peer = StreamPeer(*await connect(mute.port))
        await send_message(peer, mute.profile.query(["C00900001"], datetime.now()))
        bids = 0
        with contextlib.suppress(TimeoutError):
            while True:  # every ENQ of the host unanswered, until it gives up
                await peer.read(1, timeout=40)
                bids += 1
        sample = planner.patient()
        await send_message(peer, mute.profile.message(sample, datetime.now()))
        rig.acknowledged.append((mute.name, sample))
        await peer.close()
        await sending
        return await rig.settle(
            "analyser-never-acks", o.database, f"{bids} bids of the host unanswered"
        )


async def analyser_enq_flood(o: Options) -> Outcome:
    """An analyser flooding ENQ for seconds while others send; then its own message."""
    rig = Rig(o.workdir, o.url, stations("chemistry", "haematology", patients=40))
    flood = Station("chemistry-9", profile("chemistry"))
    rig.daemon = rig.new_daemon(o.workdir / "daemon", [*rig.stations, flood])
    planner = Planner(flood.profile, 9, datetime.now())
    async with rig:
        sending = asyncio.create_task(rig.run_analysers(rate=4.0))
        peer = StreamPeer(*await connect(flood.port))
        written = 0
        until = time.monotonic() + 10
        while time.monotonic() < until:
            await peer.write(ENQ * 1000)
            written += 1000
            await asyncio.sleep(0.01)
        await peer.write(EOT)
        await peer.close()
        # A new connection, as an analyser restarted after its fault would make.
        peer = StreamPeer(*await connect(flood.port))
        await peer.write(ENQ)
        while await peer.read(1, timeout=20) != ACK:
            await peer.write(ENQ)
        sample = planner.patient()
        records = flood.profile.message(sample, datetime.now())
        for data in frames_for(records):
            await peer.write(data)
            assert await peer.read(1, timeout=20) == ACK
        await peer.write(EOT)
        rig.acknowledged.append((flood.name, sample))
        await peer.close()
        await sending
        return await rig.settle("analyser-enq-flood", o.database, f"{written:,} ENQ sent")


def _postgres_cluster() -> list[str]:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


async def postgres_restart(o: Options) -> Outcome:
    """PostgreSQL restarted (fast shutdown: every connection cut) while the analysers send
    and the LIS receives."""
    rig = Rig(o.workdir, o.url, stations("chemistry", "haematology", patients=60))
    async with rig:
        sending = asyncio.create_task(rig.run_analysers(rate=3.0))
        await asyncio.sleep(5)
        started = time.monotonic()
        await asyncio.to_thread(
            subprocess.run, [*_postgres_cluster(), "restart", "-m", "fast"], check=True
        )
        down = time.monotonic() - started
        await sending
        alive = rig.daemon.process is not None and rig.daemon.process.poll() is None
        outcome = await rig.settle("postgres-restart", o.database, f"restart took {down:.1f} s")
    return outcome if alive else _failed(outcome, "the daemon exited")


@contextlib.asynccontextmanager
async def small_filesystem(where: Path, megabytes: int) -> AsyncIterator[Path]:
    """An ext4 file system of ``megabytes`` on a loop device, mounted at ``where``."""
    image = where.with_suffix(".img")
    where.mkdir(parents=True)
    subprocess.run(["truncate", "-s", f"{megabytes}M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        image.unlink(missing_ok=True)


def _fill(path: Path) -> int:
    """Write zeros to ``path`` until the file system is full; the bytes written."""
    written = 0
    chunk = b"\0" * (1 << 20)
    with path.open("wb") as file:
        try:
            while True:
                file.write(chunk)
                file.flush()
                written += len(chunk)
        except OSError:
            pass
        # the last megabyte's worth of small writes, so nothing is left at all
        with contextlib.suppress(OSError):
            while True:
                file.write(b"\0" * 4096)
                file.flush()
                os.fsync(file.fileno())
                written += 4096
    return written


async def disk_full(o: Options) -> Outcome:
    """The file system of the SQLite state directory full while the analysers send: the
    daemon stops acknowledging, says so, and takes everything once space comes back."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        return Outcome("disk-full", o.database, note="skipped: needs root and mkfs.ext4")
    async with small_filesystem(o.workdir / "state", 64) as state:
        url = f"sqlite:///{state / 'middleware.db'}"
        rig = Rig(
            o.workdir, url, stations("chemistry", "haematology", patients=40), state_dir=state
        )
        async with rig:
            sending = asyncio.create_task(rig.run_analysers(rate=3.0))
            await asyncio.sleep(4)
            filler = state / "filler"
            await asyncio.to_thread(_fill, filler)
            await asyncio.sleep(6)
            filler.unlink()
            await sending
            log = rig.daemon.log.read_text(errors="replace")
            said = "database or disk is full" in log
            refused = log.count('"text not kept; refused"')  # a NAK, not an ACK
            outcome = await rig.settle("disk-full", o.database)
    if not said or not refused:
        return _failed(outcome, "the daemon never said the disk was full, or ACKed all")
    return _noted(outcome, f"disk full said in the log; {refused} frames NAKed meanwhile")


async def takeover(o: Options) -> Outcome:
    """Two daemons on one PostgreSQL, each with its analyser; one is killed, and a standby
    configured with its instrument takes it (and its outbox) once its lease runs out."""
    lines = stations("chemistry", "haematology", patients=80)
    rig = Rig(o.workdir, o.url, lines, node_name="node-a")
    rig.daemon = rig.new_daemon(o.workdir / "a", lines[:1], node_name="node-a")
    other = rig.new_daemon(o.workdir / "b", lines[1:], node_name="node-b")
    standby_port = free_port()
    standby = rig.new_daemon(
        o.workdir / "c", lines[:1], {lines[0].name: standby_port}, node_name="node-c"
    )

    def either(station: Station) -> Opener:
        ports = [station.port] + ([standby_port] if station is lines[0] else [])
        turn = 0

        async def open_connection() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            nonlocal turn
            port = ports[turn % len(ports)]
            turn += 1
            return await asyncio.open_connection("127.0.0.1", port)

        return open_connection

    async with rig:
        await asyncio.to_thread(other.start, 60)
        try:
            sending = asyncio.create_task(rig.run_analysers(rate=3.0, opener=either))
            await asyncio.sleep(6)
            await asyncio.to_thread(rig.daemon.kill)
            killed = time.monotonic()
            while True:  # its supervisor starting it again and again while refused
                try:
                    await asyncio.to_thread(standby.start, 60)
                    break
                except RuntimeError:
                    await asyncio.sleep(0.5)
            took = time.monotonic() - killed
            await sending
            outcome = await rig.settle("takeover", o.database, f"taken over in {took:.1f} s")
        finally:
            await asyncio.to_thread(standby.stop)
            await asyncio.to_thread(other.stop)
    # The lease is 5 s; the standby needs its own start-up on top.
    if took > 5 + 15:
        return _failed(outcome, f"takeover took {took:.1f} s")
    return outcome


async def broker_restart(o: Options) -> Outcome:
    """The MQTT broker stopped and started again while the analysers send: results go on,
    events come again once it is back."""
    broker = Broker(o.workdir)
    broker.start()
    try:
        rig = Rig(o.workdir, o.url, stations("chemistry", "haematology", patients=60),
                  events={"url": broker.url, "prefix": "faults"})  # fmt: skip
        async with rig:
            sending = asyncio.create_task(rig.run_analysers(rate=3.0))
            await asyncio.sleep(4)
            broker.stop()
            await asyncio.sleep(8)
            broker.start()
            back = time.monotonic()
            subscriber = Subscriber("127.0.0.1", broker.port, "faults")
            async with subscriber.listening():
                while not subscriber.received and time.monotonic() - back < 30:
                    await asyncio.sleep(0.2)
                again = time.monotonic() - back
                events = len(subscriber.received)
            await sending
            outcome = await rig.settle("broker-restart", o.database)
    finally:
        broker.stop()
    if not events:
        return _failed(outcome, "no event after the broker came back")
    return _noted(outcome, f"events again {again:.1f} s after the broker came back")


def _noted(outcome: Outcome, note: str) -> Outcome:
    if not note:
        return outcome
    joined = f"{outcome.note}; {note}" if outcome.note else note
    return replace(outcome, note=joined)


def _failed(outcome: Outcome, error: str) -> Outcome:
    return replace(outcome, error=error)


#: name -> (case, the databases it runs on)
CASES: dict[str, tuple[Case, tuple[str, ...]]] = {
    "sigkill": (sigkill, ("sqlite", "postgresql")),
    "lis-down": (lis_down, ("sqlite", "postgresql")),
    "lis-refuses": (lis_refuses, ("sqlite", "postgresql")),
    "lis-slow": (lis_slow, ("sqlite", "postgresql")),
    "analyser-disconnect": (analyser_disconnect, ("sqlite", "postgresql")),
    "analyser-corrupt": (analyser_corrupt, ("sqlite", "postgresql")),
    "analyser-never-acks": (analyser_never_acks, ("sqlite", "postgresql")),
    "analyser-enq-flood": (analyser_enq_flood, ("sqlite", "postgresql")),
    "postgres-restart": (postgres_restart, ("postgresql",)),
    "disk-full": (disk_full, ("sqlite",)),
    "takeover": (takeover, ("postgresql",)),
    "broker-restart": (broker_restart, ("sqlite", "postgresql")),
}
