"""The rig every fault case runs on: the real daemon as a process of its own, simulated
analysers and a simulated LIS in this one, and the account of every result.

The account starts from what the analysers had acknowledged (a sample the host took) and
looks for each patient result in three places: the LIS simulator's record (accepted, with
the value the analyser sent), held in the store (a hold of the rules, or a message the
LIS refused and stopped for a person), or quarantined with its raw bytes. What is in none
is lost. A result the LIS accepted under two control ids, or stored twice, is duplicated;
one the LIS got with another value is altered. Control results never go to the LIS: they
are counted as stored against sent.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from simulators.analyser import Analyser, Opener, tcp_client
from simulators.lis import LisSimulator
from simulators.ports import free_port
from simulators.profiles import Profile, Sample, profile
from simulators.scenarios import Planner, Step
from tests.daemon import DaemonProcess, query

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "rules"
#: Messages to the LIS still to go: those waiting behind a message the LIS refused (its
#: specimen's queue stopped for a person) are held, not moving.
MOVING = (
    "SELECT count(*) FROM outbox p WHERE p.state = 'pending' AND NOT EXISTS "
    "(SELECT 1 FROM outbox s WHERE s.specimen_id = p.specimen_id AND s.state = 'stopped')"
)
#: Patients between two QC runs, as in a laboratory's day (and bench/ingest.py's mix).
QC_EVERY = 20


@dataclass(frozen=True, slots=True)
class Outcome:
    """One line of the table."""

    case: str
    database: str
    sent: int = 0
    """Patient results the analysers had acknowledged."""
    delivered: int = 0
    held: int = 0
    quarantined: int = 0
    lost: int = 0
    duplicated: int = 0
    altered: int = 0
    controls: str = ""
    """Control results stored / sent."""
    note: str = ""
    error: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.lost or self.duplicated or self.altered or self.error)


@dataclass
class Station:
    """One analyser of a case: its instrument, what it is, what it sends."""

    name: str
    profile: Profile
    steps: list[Step] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    analyser: Analyser | None = None

    def instrument(self, port: int | None = None) -> dict[str, Any]:
        config: dict[str, Any] = {
            "name": self.name,
            "driver": self.profile.driver,
            "transport": "tcp-server",
            "host": "127.0.0.1",
            "port": port or self.port,
        }
        if self.profile.test_map:
            config["test_map"] = dict(self.profile.test_map)
        return config


def stream(kind: str, seed: int, patients: int) -> list[Step]:
    """QC of every level, then ``patients`` patient samples with QC again after every
    :data:`QC_EVERY` and at the end (so a bracketed test's last run closes)."""
    planner = Planner(profile(kind), seed, datetime.now())
    steps = [Step(s) for s in planner.qc()]
    for n in range(1, patients + 1):
        steps.append(Step(planner.patient()))
        if n % QC_EVERY == 0 or n == patients:
            steps += [Step(s) for s in planner.qc()]
    return steps


def stations(*kinds: str, patients: int) -> list[Station]:
    """One analyser of each kind (a profile name), seeds apart so no specimen id repeats."""
    return [
        Station(f"{kind}-{n}", profile(kind), stream(kind, n, patients))
        for n, kind in enumerate(kinds, start=1)
    ]


class Rig:
    """The daemon, its analysers and the LIS of one case."""

    def __init__(
        self,
        workdir: Path,
        database_url: str,
        stations: list[Station],
        *,
        lis: dict[str, Any] | None = None,
        state_dir: Path | None = None,
        **settings: Any,
    ) -> None:
        self.workdir = workdir
        self.url = database_url
        self.stations = stations
        self.lis = LisSimulator(record=workdir / "lis-received.jsonl")
        self.lis_port = free_port()
        self.lis_settings = {
            "host": "127.0.0.1",
            "port": self.lis_port,
            "ack_timeout": 5.0,
            "backoff": {"base": 0.2, "ceiling": 2.0},
            **(lis or {}),
        }
        self.settings: dict[str, Any] = {
            "database_url": database_url,
            "rules_dir": str(RULES),
            "lease_seconds": 5,
            "lis": self.lis_settings,
            **settings,
        }
        self.daemon = self.new_daemon(workdir / "daemon", stations, state_dir=state_dir)
        self.acknowledged: list[tuple[str, Sample]] = []
        """Samples sent by hand (not by an :class:`Analyser`) that the host took."""

    def new_daemon(
        self,
        workdir: Path,
        stations: list[Station],
        ports: dict[str, int] | None = None,
        state_dir: Path | None = None,
        **settings: Any,
    ) -> DaemonProcess:
        """A daemon serving ``stations`` (on the ``ports`` given by instrument name)."""
        workdir.mkdir(parents=True, exist_ok=True)
        instruments = [s.instrument((ports or {}).get(s.name)) for s in stations]
        if state_dir is not None:
            settings["state_dir"] = str(state_dir)
        return DaemonProcess(workdir, instruments, **{**self.settings, **settings})

    async def __aenter__(self) -> Rig:
        await self.lis.start("127.0.0.1", self.lis_port)
        await asyncio.to_thread(self.daemon.start, 60)
        return self

    async def __aexit__(self, *_: object) -> None:
        for station in self.stations:
            if station.analyser is not None:
                await station.analyser.close()
        await asyncio.to_thread(self.daemon.stop)
        await self.lis.stop()

    # --- what the analysers do ---------------------------------------------------------

    async def run_analysers(
        self, rate: float | None = None, opener: Callable[[Station], Opener] | None = None
    ) -> None:
        """Every station's analyser sends its steps, ``rate`` samples a second each
        (as fast as the host takes them when None)."""
        for station in self.stations:
            connect = opener(station) if opener else tcp_client("127.0.0.1", station.port)
            station.analyser = Analyser(
                station.profile, station.steps, connect, rate=rate, reply_timeout=10.0
            )
        await asyncio.gather(*(s.analyser.run() for s in self.stations if s.analyser))

    def full_speed(self) -> None:
        """The rest of the stream as fast as the host takes it."""
        for station in self.stations:
            if station.analyser is not None:
                station.analyser.rate = None

    async def restart(self, daemon: DaemonProcess | None = None) -> None:
        """SIGKILL, then started again at once (as its service manager would)."""
        daemon = daemon or self.daemon
        await asyncio.to_thread(daemon.kill)
        await asyncio.to_thread(daemon.start, 60)

    # --- the account ---------------------------------------------------------------------

    def _sent(self) -> tuple[dict[tuple[str, str], str], int]:
        """(specimen, test) -> value of every patient result acknowledged, and the count
        of control results acknowledged."""
        samples = [s for st in self.stations if st.analyser for s in st.analyser.sent]
        samples += [s for _, s in self.acknowledged]
        patients: dict[tuple[str, str], str] = {}
        controls = 0
        for sample in samples:
            if sample.is_control:
                controls += len(sample.measured)
                continue
            for measured in sample.measured:
                patients[(sample.specimen_id, measured.analyte.lab_code)] = measured.value
        return patients, controls

    def account(self, case: str, database: str, note: str = "") -> Outcome:
        sent, controls_sent = self._sent()
        delivered: dict[tuple[str, str], set[str]] = defaultdict(set)
        values: dict[tuple[str, str], set[str]] = defaultdict(set)
        for message in self.lis.received:
            if message.answer != "AA" or not message.message_type.startswith("ORU"):
                continue
            for specimen in message.specimen_ids[:1]:
                for result in message.results:
                    if result.status == "F":
                        delivered[(specimen, result.test)].add(message.control_id)
                        values[(specimen, result.test)].add(result.value)
        held = self._held()
        quarantined_data = [bytes(d) for (d,) in query(self.url, "SELECT data FROM quarantine")]
        stored_twice = query(
            self.url,
            "SELECT specimen_id, test_code FROM results GROUP BY specimen_id, test_code, "
            "instrument HAVING count(*) > 1",
        )
        [(controls_stored,)] = query(self.url, "SELECT count(*) FROM control_results")
        counts = {"delivered": 0, "held": 0, "quarantined": 0, "lost": 0, "altered": 0}
        lost: list[tuple[str, str]] = []
        for key, value in sent.items():
            if key in delivered:
                counts["delivered"] += 1
                if values[key] != {value}:
                    counts["altered"] += 1
            elif key in held:
                counts["held"] += 1
            elif any(key[0].encode() in data for data in quarantined_data):
                counts["quarantined"] += 1
            else:
                counts["lost"] += 1
                lost.append(key)
        duplicated = sum(1 for ids in delivered.values() if len(ids) > 1) + len(stored_twice)
        missing_controls = max(0, controls_sent - int(controls_stored))
        notes = [note] if note else []
        if lost:
            notes.append(f"lost e.g. {lost[:3]}")
        if missing_controls:
            notes.append(f"{missing_controls} control results not stored")
        return Outcome(
            case, database, len(sent), counts["delivered"], counts["held"],
            counts["quarantined"], counts["lost"] + missing_controls, duplicated,
            counts["altered"], f"{controls_stored}/{controls_sent}", "; ".join(notes),
        )  # fmt: skip

    def _held(self) -> set[tuple[str, str]]:
        """Results held by the rules, and those of messages to the LIS that wait for a
        person: refused and stopped, set aside, or queued behind a stopped one of their
        specimen. A message still pending otherwise is not held: it should have gone."""
        held = {
            (s, t)
            for s, t in query(
                self.url,
                "SELECT r.specimen_id, r.test_code FROM open_holds h "
                "JOIN results r ON r.id = h.result_id",
            )
        }
        undelivered = query(
            self.url,
            "SELECT p.specimen_id, p.message FROM outbox p WHERE p.state IN ('stopped', 'dead') "
            "OR (p.state = 'pending' AND EXISTS (SELECT 1 FROM outbox s WHERE "
            "s.specimen_id = p.specimen_id AND s.state = 'stopped'))",
        )
        for specimen, message in undelivered:
            for segment in str(message).split("\r"):
                fields = segment.split("|")
                if fields[0] == "OBX" and len(fields) > 3:
                    held.add((specimen, fields[3].split("^")[0]))
        return held

    async def settle(self, case: str, database: str, note: str = "", within: float = 120.0
                     ) -> Outcome:  # fmt: skip
        """The account once nothing is lost and the outbox is empty, or as it stands
        after ``within`` seconds."""
        deadline = time.monotonic() + within
        while True:
            outcome = await asyncio.to_thread(self.account, case, database, note)
            [(pending,)] = await asyncio.to_thread(query, self.url, MOVING)
            if (not outcome.lost and not pending) or time.monotonic() > deadline:
                if pending:
                    extra = f"{pending} messages still pending after {within:.0f} s"
                    outcome = await asyncio.to_thread(
                        self.account, case, database, f"{note}; {extra}" if note else extra
                    )
                return outcome
            await asyncio.sleep(0.5)
