"""``python -m simulators``: simulated analysers, a simulated LIS, and the demo.

python -m simulators analyser --profile NAME (--connect HOST:PORT | --listen HOST:PORT
    | --serial DEVICE|pty) [--scenario NAME] [--samples N] [--rate R] [--seed S]
python -m simulators load --profile NAME --connect HOST:PORT [--analysers N] ...
python -m simulators lis --listen HOST:PORT [--ack AA|AE|AR|none] [--record FILE] ...
python -m simulators demo
python -m simulators list
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import fields
from datetime import datetime
from typing import Any

from middleware.daemon import configure_logging
from simulators import lis
from simulators.analyser import (
    Analyser,
    FaultSettings,
    GaveUp,
    Opener,
    PseudoTerminal,
    Tally,
    TcpListener,
    serial_line,
    tcp_client,
)
from simulators.profiles import ALIASES, PROFILES, profile
from simulators.scenarios import SCENARIOS, describe, plan


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def read(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
        return value

    return read


def _seed(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 0 or more")
    return int(text)


def _analyser_options(parser: argparse.ArgumentParser) -> None:
    names = [*PROFILES, *ALIASES]
    parser.add_argument(
        "--profile",
        required=True,
        choices=names,
        metavar="NAME",
        help=f"the analyser simulated: {', '.join(names)}",
    )
    parser.add_argument(
        "--scenario",
        default="normal",
        choices=list(SCENARIOS),
        metavar="NAME",
        help="what the run shows (python -m simulators list); default normal",
    )
    parser.add_argument(
        "--samples", type=_positive(int), default=10, help="patient samples in the run (default 10)"
    )
    parser.add_argument(
        "--rate",
        type=_positive(float),
        help="messages per second (default: as fast as the host takes them)",
    )
    parser.add_argument(
        "--seed",
        type=_seed,
        default=1,
        help="the same seed gives the same samples and values (default 1)",
    )
    parser.add_argument(
        "--reply-timeout",
        type=_positive(float),
        default=15.0,
        help="seconds to wait for the host's reply to a frame (default 15)",
    )
    parser.add_argument(
        "--slow-seconds",
        type=_positive(float),
        default=35.0,
        help="slow-peer: the pause mid-message (default 35)",
    )
    parser.add_argument(
        "--oversize-bytes",
        type=_positive(int),
        default=2 << 20,
        help="oversize-frame: the size of the oversize frame (default 2 MiB)",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the summary")  # fmt: skip


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulators",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    one = sub.add_parser("analyser", help="one simulated analyser running a scenario")
    _analyser_options(one)
    where = one.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--connect",
        type=lis.address,
        metavar="HOST:PORT",
        help="connect to the middleware (its tcp-server instrument)",
    )
    where.add_argument(
        "--listen",
        type=lis.address,
        metavar="HOST:PORT",
        help="wait for the middleware to connect (its tcp-client instrument)",
    )
    where.add_argument("--serial", metavar="DEVICE",
                       help="a serial device, or 'pty' for a pseudo-terminal pair whose other "
                            "end the middleware opens")  # fmt: skip
    one.add_argument("--baudrate", type=_positive(int), default=9600)

    load = sub.add_parser("load", help="many simulated analysers at once, for benchmarks")
    _analyser_options(load)
    load.add_argument(
        "--connect",
        type=lis.address,
        metavar="HOST:PORT",
        required=True,
        action="append",
        help="where to connect; repeat to spread the analysers",
    )
    load.add_argument(
        "--analysers",
        type=_positive(int),
        default=10,
        help="how many analysers (default 10); each gets its own seed",
    )

    lis.add_arguments(sub.add_parser("lis", help="a simulated LIS: MLLP server recording results"))
    sub.add_parser("demo", help="the daemon, three analysers and a LIS, on the embedded defaults")
    sub.add_parser("list", help="the profiles and scenarios")
    return parser


def _runner(args: argparse.Namespace, opener: Opener, seed: int, name: str = "") -> Analyser:
    chosen = profile(args.profile)
    steps = plan(chosen, args.scenario, args.samples, seed, datetime.now())
    prefix = f"{name}: " if name else ""

    def report(line: str) -> None:
        if not args.quiet:
            print(f"{prefix}{line}", flush=True)

    def warn(line: str) -> None:
        print(f"{prefix}{line}", file=sys.stderr, flush=True)

    faults = FaultSettings(slow_seconds=args.slow_seconds, oversize_bytes=args.oversize_bytes)
    return Analyser(chosen, steps, opener, rate=args.rate, reply_timeout=args.reply_timeout,
                    faults=faults, report=report, warn=warn)  # fmt: skip


def _summary(tally: Tally, seconds: float) -> str:
    rate = tally.results / seconds if seconds > 0 else 0.0
    return (
        f"sent {tally.messages} messages: {tally.results} patient results, "
        f"{tally.controls} control results, {tally.queries} host queries, "
        f"{tally.not_ordered} samples without orders; {tally.faults} faults committed, "
        f"{tally.resends} messages sent again; {seconds:.1f} s ({rate:.0f} results/s)"
    )


async def _analyser(args: argparse.Namespace) -> int:
    listener: TcpListener | None = None
    terminal: PseudoTerminal | None = None
    if args.connect:
        opener = tcp_client(*args.connect)
    elif args.listen:
        try:
            listener = TcpListener(*args.listen)
        except OSError as exc:
            host, port = args.listen
            print(f"error: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
            return 1
        port = await listener.start()
        print(f"listening on {args.listen[0]}:{port}", flush=True)
        opener = listener.open_connection
    elif args.serial == "pty":
        terminal = PseudoTerminal()
        print(f"serial line ready: {terminal.path}", flush=True)
        opener = terminal.open_connection
    else:
        opener = serial_line(args.serial, args.baudrate)
    started = time.monotonic()
    try:
        tally = await _runner(args, opener, args.seed).run()
    except GaveUp as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if listener is not None:
            await listener.close()
        if terminal is not None:
            terminal.close()
    print(_summary(tally, time.monotonic() - started), flush=True)
    return 0


async def _load(args: argparse.Namespace) -> int:
    places = args.connect
    runners = [
        _runner(args, tcp_client(*places[i % len(places)]), args.seed + i, f"analyser {i + 1}")
        for i in range(args.analysers)
    ]
    started = time.monotonic()
    try:
        tallies = await asyncio.gather(*(r.run() for r in runners))
    except GaveUp as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    total = Tally()
    for tally in tallies:
        for counted in fields(Tally):
            name = counted.name
            setattr(total, name, getattr(total, name) + getattr(tally, name))
    print(f"{args.analysers} analysers: {_summary(total, time.monotonic() - started)}", flush=True)
    return 0


def _list() -> int:
    print("profiles:")
    for chosen in PROFILES.values():
        print(f"  {chosen.name:<12} {chosen.kind} (driver {chosen.driver})")
    print("scenarios:")
    for name in SCENARIOS:
        print(f"  {name:<16} {describe(name)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    # The link's own log lines would drown the simulator's; only trouble is shown.
    configure_logging("warning", "console")
    if args.command == "list":
        return _list()
    if args.command == "demo":
        from simulators.demo import main as demo

        return demo()
    try:
        if args.command in ("analyser", "load"):  # said before anything connects
            plan(profile(args.profile), args.scenario, args.samples, args.seed, datetime.now())
        if getattr(args, "serial", None) and args.scenario == "drop-mid-message":
            raise ValueError("a serial line cannot be dropped: drop-mid-message needs TCP")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    commands: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
        "analyser": _analyser, "load": _load, "lis": lis.run,
    }  # fmt: skip
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_stoppable(commands[args.command], args))
    return 130


async def _stoppable(
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]], args: argparse.Namespace
) -> int:
    """Run a command; SIGTERM (a service manager, a test) stops it as Ctrl-C does."""
    task = asyncio.current_task()
    assert task is not None
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await command(args)
    except asyncio.CancelledError:
        if terminated:
            return 143
        raise  # Ctrl-C: asyncio.run makes it a KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
