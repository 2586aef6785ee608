"""``make fuzz``: every target of fuzz/targets.py fed a million inputs, coverage-guided.

    .venv/bin/python fuzz/run.py [TARGET ...] [--runs 1000000] [--jobs 2]

Each target runs in a process of its own under atheris (libFuzzer for Python): its inputs
grow from seeds (the shared corpus's captures, read where they lie; the project's rule and
configuration files) towards code not yet reached. An input that makes a target raise
anything but the refusals its code documents is a crash: libFuzzer writes it to
``fuzz/crashes/<target>-<hash>``, and it becomes a regression input under
``fuzz/regressions/<target>/``, which ``make test`` replays (tests/test_fuzz_targets.py).

At the end a table gives, per target, the inputs run, the time, inputs per second and
what was found; the exit status is 1 when any target crashed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
CRASHES = ROOT / "fuzz" / "crashes"
MAX_LEN = 2048
"""Longer inputs say little more to these readers and slow every run."""
#: What is instrumented for coverage: the readers of outside input and what they call.
INSTRUMENTED = [
    "drivers", "fuzz", "middleware.astm", "middleware.hl7", "middleware.engine",
    "middleware.decode", "middleware.domain", "middleware.settings", "middleware.yamlfile",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Outcome:
    target: str
    runs: int
    seconds: float
    crash: str


def seed_dirs(name: str, scratch: Path) -> list[Path]:
    """The folders a target's seeds are in; those made of the messages read from the
    corpus's captures are written under ``scratch``."""
    from fuzz.targets import SEEDS, captured_messages

    found = []
    for seed in SEEDS[name]:
        if seed.startswith("messages:"):
            protocol = seed.removeprefix("messages:")
            made = scratch / seed.replace(":", "-")
            made.mkdir(parents=True, exist_ok=True)
            for path in sorted((CORPUS / protocol).iterdir()):
                for n, message in enumerate(captured_messages(protocol, path.read_bytes())):
                    (made / f"{path.name}-{n}").write_bytes(message[:MAX_LEN])
            found.append(made)
            continue
        where = CORPUS / seed.removeprefix("corpus:") if seed.startswith("corpus:") else ROOT / seed
        if where.is_dir():
            found.append(where)
    return found


def _child(name: str, runs: int, workdir: str, seeds: list[str]) -> None:
    """One target under atheris, in this process (started by :func:`_run`), its inputs
    grown from ``seeds`` (folders)."""
    import atheris

    with atheris.instrument_imports(include=INSTRUMENTED):
        from fuzz.targets import TARGETS
    target = TARGETS[name]
    CRASHES.mkdir(parents=True, exist_ok=True)
    args = [
        sys.argv[0], f"-runs={runs}", f"-max_len={MAX_LEN}", "-print_final_stats=1",
        f"-artifact_prefix={CRASHES}/{name}-", "-timeout=30", "-rss_limit_mb=4096",
        workdir, *seeds,
    ]  # fmt: skip
    atheris.Setup(args, target)
    atheris.Fuzz()


def _run(name: str, runs: int) -> Outcome:
    started = time.monotonic()
    logs = CRASHES.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # Written as it runs: libFuzzer's progress lines show how far a long run is.
    with (
        tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as scratch,
        (logs / f"{name}.log").open("w") as out,
    ):
        workdir = Path(scratch) / "corpus"  # what the fuzzer adds
        workdir.mkdir()
        seeds = [str(d) for d in seed_dirs(name, Path(scratch) / "seeds")]
        done = subprocess.run(
            [sys.executable, __file__, "--child", name, "--runs", str(runs),
             "--workdir", str(workdir), "--seeds", *seeds],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, check=False,
        )  # fmt: skip
    log = (logs / f"{name}.log").read_text(errors="replace")
    executed = re.findall(r"stat::number_of_executed_units: (\d+)", log)
    crash = ""
    if done.returncode != 0:
        written = re.findall(r"Test unit written to (\S+)", log)
        crash = written[-1] if written else f"exit status {done.returncode}"
    return Outcome(name, int(executed[-1]) if executed else 0, time.monotonic() - started, crash)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET")
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--seeds", nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        # Before anything imports the code under test: atheris instruments it on import.
        _child(args.child, args.runs, args.workdir, args.seeds)
        return 0
    from fuzz.targets import TARGETS

    unknown = [name for name in args.targets if name not in TARGETS]
    if unknown:
        parser.error(f"unknown target {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    names = args.targets or list(TARGETS)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        outcomes = list(pool.map(lambda name: _run(name, args.runs), names))
    print(f"{'target':<16} {'inputs':>10} {'seconds':>9} {'inputs/s':>9}  result")
    for o in outcomes:
        rate = o.runs / o.seconds if o.seconds else 0.0
        result = f"CRASH {o.crash}" if o.crash else "no crash"
        print(f"{o.target:<16} {o.runs:>10,} {o.seconds:>9.1f} {rate:>9,.0f}  {result}")
    short = [o.target for o in outcomes if not o.crash and o.runs < args.runs]
    if short:
        print(f"fewer inputs than asked (see fuzz/logs): {', '.join(short)}")
    return 1 if any(o.crash for o in outcomes) or short else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
