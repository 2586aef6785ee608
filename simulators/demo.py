"""``make demo``: the daemon on the embedded defaults, three simulated analysers and a
simulated LIS, with a guide to what happens and a live summary.

Everything runs on this machine with nothing to install beyond the project: SQLite in a
new state directory, the bundled rule files, the daemon as its own process (as in a lab),
the analysers and the LIS in this one. Ctrl-C stops everything and leaves the state
directory for a look afterwards. The state directory is a new temporary one, or the empty
directory ``DEMO_STATE_DIR`` names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from middleware.store.database import open_engine
from middleware.store.reading import held_results, latest_decisions
from simulators.analyser import Analyser, Tally, tcp_client
from simulators.lis import LisSimulator
from simulators.ports import free_port
from simulators.profiles import Profile, profile
from simulators.scenarios import plan

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = sys.stdout.isatty()
#: Back to the start of the line, which is cleared: where the summary line was.
CLEAR = "\r\033[K" if TERMINAL else ""


@dataclass(frozen=True, slots=True)
class Bench:
    """One analyser of the demo: its name in the lab, what it is, what it shows."""

    instrument: str
    profile: Profile
    scenario: str
    samples: int
    shows: str


BENCHES = (
    Bench("xn-1", profile("haematology"), "qc-shift", 12,
          "QC passing, then a QC shift: HGB, PLT and WBC results held (2of3-2s, 3-1s, 6x) "
          "until corrective QC is in control and a biologist closes the corrective action"),
    Bench("chem-1", profile("chemistry"), "sample-indices", 8,
          "a haemolysed sample (K and AST rejected, the reason sent to the LIS), icteric "
          "and lipaemic ones (bilirubin released with a comment)"),
    Bench("ia-1", profile("immunoassay"), "lot-change", 8,
          "a reagent lot change mid-run: results on the new lot wait for QC on it"),
)  # fmt: skip


def _config(state: Path, ports: dict[str, int]) -> Path:
    config = {
        "state_dir": str(state),
        "rules_dir": str(ROOT / "rules"),
        "log": {"level": "info", "format": "console"},
        "api": {"host": "127.0.0.1", "port": ports["api"]},
        "lis": {
            "host": "127.0.0.1",
            "port": ports["lis"],
            "orders_host": "127.0.0.1",
            "orders_port": ports["orders"],
            "backoff": {"base": 0.5, "ceiling": 5},
        },
        "instruments": [
            {
                "name": bench.instrument,
                "driver": bench.profile.driver,
                "transport": "tcp-server",
                "host": "127.0.0.1",
                "port": ports[bench.instrument],
                **({"test_map": dict(bench.profile.test_map)} if bench.profile.test_map else {}),
            }
            for bench in BENCHES
        ],
    }
    path = state / "middleware.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _demo_access(state: Path) -> tuple[str, str]:
    """A biologist's token for the API calls the guide shows, and the password of the
    biologist ``demo`` for the status page; the demo's database is made for them here,
    before the daemon opens it."""
    import secrets
    from datetime import UTC

    from middleware.accounts import hash_password, new_token, token_digest
    from middleware.store.database import migrate
    from middleware.store.users import add_token, add_user
    from middleware.web.roles import Role

    token, password = new_token(), secrets.token_urlsafe(12)
    engine = open_engine(f"sqlite:///{state / 'middleware.db'}")
    try:
        migrate(engine)
        now = datetime.now(UTC)
        with engine.begin() as conn:
            add_token(conn, "demo", Role.BIOLOGIST, token_digest(token), "demo", now)
            add_user(conn, "demo", Role.BIOLOGIST, hash_password(password), "demo", now)
    finally:
        engine.dispose()
    return token, password


def _guide(
    state: Path, config: Path, record: Path, ports: dict[str, int], token: str, password: str
) -> str:
    cli = f"{Path(sys.executable).parent / 'lis-middleware'}"
    lines = [
        "",
        "lis-middleware demo",
        "===================",
        f"State directory (SQLite database, daemon log): {state}",
        f"Daemon configuration: {config}",
        "",
        "Analysers (simulated, each over TCP to the daemon):",
        *(f"  {b.instrument:<7} {b.profile.kind} ({b.profile.name}): {b.shows}" for b in BENCHES),
        "",
        f"LIS (simulated) on 127.0.0.1:{ports['lis']}: every message it receives is in",
        f"  {record}",
        "",
        "Where to look while it runs:",
        f"  {cli} held --config {config}",
        "      results held, with every reason",
        f"  {cli} outbox list --config {config}",
        "      messages to the LIS not delivered yet",
        f"  {cli} reagents trace 82517LI00 --config {config}",
        "      every result made with the new immunoassay reagent lot",
        f"  curl -s -H 'Authorization: Bearer {token}' http://127.0.0.1:{ports['api']}/api/health",
        "      the control API (corrective actions, rules reload, outbox)",
        f"  tail -f {state / 'daemon.log'}",
        f"  http://127.0.0.1:{ports['api']}/  the status page: log in as demo, password {password}",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


class Counts:
    """What the daemon did so far, read from its database for the summary line."""

    def __init__(self, url: str) -> None:
        self.engine = open_engine(url)

    def line(self, record: LisSimulator) -> str:
        try:
            with self.engine.connect() as conn:
                results = conn.execute(text("SELECT count(*) FROM results")).scalar_one()
                controls = conn.execute(text("SELECT count(*) FROM control_results")).scalar_one()
                held = conn.execute(text("SELECT count(*) FROM open_holds")).scalar_one()
                # The demo's database is small: every current decision is read each time.
                actions: dict[str, int] = {}
                for decision in latest_decisions(conn):
                    actions[decision["action"]] = actions.get(decision["action"], 0) + 1
        except OperationalError:  # the daemon holds the write lock: next second
            return "waiting for the daemon..."
        delivered = sum(len(m.results) for m in record.received if m.answer == "AA")
        return (
            f"results {results} (controls {controls}) | released {actions.get('release', 0)} "
            f"| held {held} | rejected {actions.get('reject', 0)} "
            f"| LIS messages {len(record.received)} ({delivered} results)"
        )

    def held_by_reason(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            held = held_results(conn)
        out: dict[str, int] = {}
        for row in held:
            for finding in json.loads(row["findings"]):
                if finding["action"] != "release":
                    out[finding["code"]] = out.get(finding["code"], 0) + 1
        return dict(sorted(out.items()))

    def open_corrective_actions(self) -> list[tuple[int, str, str, str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, instrument, test_code, reason FROM corrective_actions "
                    "WHERE closed_at IS NULL ORDER BY id"
                )
            ).all()
        return [(int(i), str(n), str(t), str(r)) for i, n, t, r in rows]

    def close(self) -> None:
        self.engine.dispose()


def _what_happened(counts: Counts, api: int, token: str) -> str:
    lines = ["", "The analysers have sent their runs. Results held now, by reason:"]
    lines += [f"  {reason:<32} {n}" for reason, n in counts.held_by_reason().items()]
    actions = counts.open_corrective_actions()
    if actions:
        lines += ["Corrective actions open (QC failures):"]
        lines += [f"  #{i} {name} {test}: {reason}" for i, name, test, reason in actions]
        first = actions[0][0]
        lines += [
            "The QC re-run was in control: close one as a biologist would, and its held",
            "results are released and sent to the LIS:",
            f"  curl -s -X POST http://127.0.0.1:{api}/api/corrective-actions/{first}/close \\",
            f"       -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\",
            '       -d \'{"action_taken": "recalibrated"}\'',
        ]
    lines += ["The daemon and the LIS go on; Ctrl-C stops everything.", ""]
    return "\n".join(lines)


def _spawn_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIDDLEWARE_")}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "middleware", "run", "--config", str(config)],
            cwd=ROOT,
            stdout=out,
            stderr=out,
            env=env,
            # Ctrl-C is the demo's to pass on as SIGTERM, once the analysers have stopped.
            start_new_session=True,
        )


async def _listening(daemon: subprocess.Popen[bytes], ports: list[int], log: Path) -> None:
    """Returns once the daemon accepts connections on every port; raises if it stops or
    takes a minute."""
    deadline = time.monotonic() + 60
    for port in ports:
        while True:
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon stopped as it started; see {log}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon did not start listening; see {log}") from None
                await asyncio.sleep(0.1)


def _analysers(ports: dict[str, int]) -> list[Analyser]:
    runners = []
    for seed, bench in enumerate(BENCHES, start=1):
        steps = plan(bench.profile, bench.scenario, bench.samples, seed, datetime.now())

        def report(line: str, name: str = bench.instrument) -> None:
            print(f"{CLEAR}{name}: {line}", flush=True)

        address = tcp_client("127.0.0.1", ports[bench.instrument])
        runners.append(Analyser(bench.profile, steps, address, rate=2.0, report=report))
    return runners


async def _run(state: Path, stop: asyncio.Event) -> int:
    ports = {name: free_port() for name in ("api", "lis", "orders")}
    ports.update({bench.instrument: free_port() for bench in BENCHES})
    config = _config(state, ports)
    record_path = state / "lis-received.jsonl"
    log = state / "daemon.log"
    lis = LisSimulator(record=record_path)
    await lis.start("127.0.0.1", ports["lis"])
    daemon: subprocess.Popen[bytes] | None = None
    counts: Counts | None = None
    running: asyncio.Future[list[Tally]] | None = None
    status = 0
    try:
        token, password = _demo_access(state)
        print(_guide(state, config, record_path, ports, token, password), flush=True)
        daemon = _spawn_daemon(config, log)
        await _listening(daemon, [ports[b.instrument] for b in BENCHES], log)
        counts = Counts(f"sqlite:///{state / 'middleware.db'}")
        running = asyncio.gather(*(runner.run() for runner in _analysers(ports)))
        finished = False
        tick = 0
        while not stop.is_set():
            if daemon.poll() is not None:
                print(f"{CLEAR}The daemon stopped; see {log}", flush=True)
                status = 1
                break
            if running.done() and not finished:
                finished = True
                if running.exception() is not None:
                    print(f"{CLEAR}An analyser stopped: {running.exception()}", flush=True)
                else:
                    await asyncio.sleep(1.0)  # the last messages' decisions and deliveries
                    print(f"{CLEAR}{counts.line(lis)}", flush=True)
                    print(_what_happened(counts, ports["api"], token), flush=True)
            if TERMINAL:  # one summary line, rewritten in place
                print(f"{CLEAR}{counts.line(lis)}", end="", flush=True)
            elif tick % 5 == 0 and not finished:
                print(counts.line(lis), flush=True)
            tick += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    except RuntimeError as exc:
        print(f"{CLEAR}{exc}", flush=True)
        status = 1
    finally:
        if running is not None:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await running
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(daemon.wait, 30)
            except subprocess.TimeoutExpired:
                daemon.kill()
        await lis.stop()
        if counts is not None:
            print(f"{CLEAR}{counts.line(lis)}", flush=True)
            counts.close()
        print(f"Stopped. The state directory stays for a look: {state}", flush=True)
    return status


def main() -> int:
    chosen = os.environ.get("DEMO_STATE_DIR")
    if chosen:
        state = Path(chosen).resolve()
        state.mkdir(parents=True, exist_ok=True)
        if any(state.iterdir()):
            print(f"DEMO_STATE_DIR {state} is not empty: the demo starts from nothing",
                  file=sys.stderr)  # fmt: skip
            return 2
    else:
        state = Path(tempfile.mkdtemp(prefix="lis-middleware-demo-"))

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # A closed terminal (SIGHUP) stops it too: the daemon is in a session of its own
        # and would otherwise outlive the demo.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, stop.set)
        return await _run(state, stop)

    return asyncio.run(run())
