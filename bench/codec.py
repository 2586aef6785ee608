"""E1394 decode throughput over the real analyser captures: our codec against python-astm.

Run it with ``make bench`` (which installs python-astm 0.5.0 with the shim in
``bench/compat``), or by hand::

    PYTHONPATH=bench/compat .venv/bin/python bench/codec.py

Two things are measured, each for both codecs, in records per second:

records
    The record codec alone: the plain record lines of every corpus message, as the same
    latin-1 bytes for both. Ours decodes each message with ``decode_message`` after
    ``bytes.decode("latin-1")`` of its lines (the decode is inside the timing); python-astm
    gets each line to ``astm.codec.decode_record(line, "latin-1")``.
full path
    Raw wire captures (ENQ, frames, EOT) from file bytes to records. Ours runs
    ``read_capture`` and ``decode_message`` per message; python-astm runs what its server
    does with each frame (``RequestHandler.handle_message``): ``is_chunked_message``,
    ``join`` of ETB frames, ``decode_message`` (checksum check, ``decode_frame``,
    ``decode_record``).

python-astm hard-codes the delimiters ``|\\^&`` and does not undo escape sequences, so
only inputs that it decodes to the same fields as ours are compared: the rest are
listed in the output with the reason. The corpus is read at run time from
``../shared/corpus/astm`` relative to the repository root; nothing is copied.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import platform
import pstats
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from middleware.astm.capture import read_capture  # noqa: E402
from middleware.astm.records import (  # noqa: E402
    DEFAULT_DELIMITERS,
    Delimiters,
    Record,
    RecordError,
    decode_message,
    decode_record,
)

CORPUS = ROOT / ".." / "shared" / "corpus" / "astm"
ENCODING = "latin-1"  # what read_capture decodes with, and python-astm's default

try:
    from astm import codec as astm_codec
except ImportError as exc:  # pragma: no cover - a setup problem, not a result
    sys.exit(
        f"python-astm is not importable ({exc}); run `make bench-setup`, and run this "
        "script with PYTHONPATH=bench/compat (`make bench` does both)"
    )

Normalised = tuple[tuple[tuple[str, ...], ...], ...]


# --- what python-astm returns, in our shape --------------------------------------------


def normalise_theirs(fields: list[Any]) -> Normalised:
    """python-astm's record (str, None, list of components, list of repeats) as our
    fields: a tuple of repeats per field, each a tuple of component strings."""
    out: list[tuple[tuple[str, ...], ...]] = []
    for value in fields:
        if value is None:
            out.append((("",),))
        elif isinstance(value, str):
            out.append(((value,),))
        elif value and isinstance(value[0], list):
            out.append(tuple(tuple(c or "" for c in rep) for rep in value))
        else:
            out.append((tuple(c or "" for c in value),))
    return tuple(out)


def same_fields(ours: Record, theirs: list[Any]) -> bool:
    """Field by field, except H.2 (the delimiter definition), which each keeps its way."""
    a = list(ours.fields)
    b = list(normalise_theirs(theirs))
    if len(a) != len(b):
        return False
    if ours.type == "H" and len(a) > 1:
        a[1] = b[1] = (("",),)
    return a == b


# --- inputs -----------------------------------------------------------------------------


@dataclass
class Inputs:
    messages: list[list[bytes]] = field(default_factory=list)
    """Record lines of each compared message (latin-1 bytes)."""
    wire: list[tuple[str, bytes]] = field(default_factory=list)
    """Raw wire captures compared on the full path."""
    wire_records: int = 0
    left_out: list[str] = field(default_factory=list)
    """Records left out of the record codec comparison, per file, with the reason."""
    not_full_path: list[str] = field(default_factory=list)
    """Files left out of the full path comparison, with the reason."""
    files: int = 0

    @property
    def records(self) -> int:
        return sum(len(m) for m in self.messages)


def load(corpus: Path) -> Inputs:
    inputs = Inputs()
    paths = sorted(p for p in corpus.iterdir() if p.is_file())
    inputs.files = len(paths)
    for path in paths:
        data = path.read_bytes()
        capture = read_capture(data)
        total = sum(len(m.lines) for m in capture.messages)
        other_delimiters: set[str] = set()
        rejected = escaped = differs = 0
        for message in capture.messages:
            d = decode_message(message.lines).delimiters
            if d != DEFAULT_DELIMITERS:
                other_delimiters.add(d.field + d.definition)
                continue
            kept: list[bytes] = []
            for line in message.lines:
                raw = line.encode(ENCODING)
                try:
                    ours = _decode_line(line, d)
                except RecordError:
                    rejected += 1
                    continue
                if not same_fields(ours, astm_codec.decode_record(raw, ENCODING)):
                    if _has_escape(line, d):
                        escaped += 1
                    else:
                        differs += 1
                    continue
                kept.append(raw)
            if kept:
                inputs.messages.append(kept)
        reasons = []
        if other_delimiters:
            shown = ", ".join(sorted(other_delimiters))
            reasons.append(f"delimiters {shown} (python-astm reads only |\\^&)")
        if rejected:
            reasons.append(
                f"{rejected} broken records (ours reports them as errors, python-astm splits "
                "them anyway)"
            )
        if escaped:
            reasons.append(
                f"{escaped} records with escape sequences (python-astm leaves them as written)"
            )
        if differs:
            reasons.append(f"{differs} records python-astm reads differently")
        if reasons:
            inputs.left_out.append(f"{path.name}: {'; '.join(reasons)}")
        if capture.form != "wire":
            inputs.not_full_path.append(f"{path.name}: {capture.form} (no python-astm reader)")
        elif capture.errors:
            kinds = ", ".join(sorted({e.kind for e in capture.errors}))
            inputs.not_full_path.append(f"{path.name}: frame errors ({kinds})")
        elif reasons:
            inputs.not_full_path.append(f"{path.name}: records left out above")
        else:
            inputs.wire.append((path.name, data))
            inputs.wire_records += total
    return inputs


def _has_escape(line: str, d: Delimiters) -> bool:
    """Whether the escape character occurs in the content (not in H.2, which defines it)."""
    skip = 2 if line[:1] in ("H", "h") else 1
    return any(d.escape in raw for raw in line.split(d.field)[skip:])


def _decode_line(line: str, d: Delimiters) -> Record:
    if line[:1] in ("H", "h"):
        d = Delimiters.from_header(line)
    return decode_record(line, d)


# --- the two codecs ------------------------------------------------------------------


def ours_records(messages: Sequence[Sequence[bytes]]) -> int:
    count = 0
    for lines in messages:
        decoded = decode_message([raw.decode(ENCODING) for raw in lines])
        count += len(decoded.records)
    return count


def theirs_records(messages: Sequence[Sequence[bytes]]) -> int:
    decode = astm_codec.decode_record
    count = 0
    for lines in messages:
        records = [decode(raw, ENCODING) for raw in lines]
        count += len(records)
    return count


def ours_full(captures: Sequence[tuple[str, bytes]]) -> int:
    count = 0
    for _, data in captures:
        for message in read_capture(data).messages:
            count += len(decode_message(message.lines).records)
    return count


def theirs_receive(data: bytes) -> list[list[Any]]:
    """python-astm's server path without the socket: the stream is cut where its
    RequestHandler cuts it (ENQ, EOT, frames up to CR LF), and each frame goes through
    what ``handle_message`` and the dispatcher do with it."""
    records: list[list[Any]] = []
    chunks: list[bytes] = []
    i, n = 0, len(data)
    while i < n:
        byte = data[i]
        if byte == 0x02:
            end = data.find(b"\r\n", i)
            if end < 0:
                break
            frame = data[i : end + 2]
            i = end + 2
            if astm_codec.is_chunked_message(frame):
                chunks.append(frame)
                continue
            if chunks:
                chunks.append(frame)
                frame = astm_codec.join(chunks)
                chunks = []
            records.extend(astm_codec.decode_message(frame, ENCODING)[1])
        else:
            if byte == 0x04:
                chunks = []
            i += 1
    return records


def theirs_full(captures: Sequence[tuple[str, bytes]]) -> int:
    return sum(len(theirs_receive(data)) for _, data in captures)


# --- timing ----------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    records: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.records / self.seconds


def calibrate(run: Callable[[], int], target: float) -> int:
    """Passes over the inputs that take about ``target`` seconds."""
    passes = 1
    while True:
        start = time.perf_counter()
        for _ in range(passes):
            run()
        elapsed = time.perf_counter() - start
        if elapsed >= target / 4:
            return max(1, round(passes * target / elapsed))
        passes *= 2


def measure(
    pairs: Sequence[tuple[str, Callable[[], int]]], runs: int, target: float
) -> list[Result]:
    """Best of ``runs`` timed runs for each, the runs of all of them interleaved; each run
    makes as many passes as take about ``target`` seconds. GC is off while timing."""
    plans = [(name, run, calibrate(run, target), run()) for name, run in pairs]
    best = {name: float("inf") for name, *_ in plans}
    for _ in range(runs):
        for name, run, passes, _records in plans:
            gc.collect()
            gc.disable()
            try:
                start = time.perf_counter()
                for _ in range(passes):
                    run()
                elapsed = time.perf_counter() - start
            finally:
                gc.enable()
            best[name] = min(best[name], elapsed / passes)
    return [Result(name, records, best[name]) for name, _run, _passes, records in plans]


def report(title: str, what: str, results: list[Result]) -> float:
    print(f"\n{title}\n  {what}")
    for r in results:
        print(
            f"  {r.name:<12} {r.records:>6} records  {r.seconds * 1e3:9.3f} ms/pass  "
            f"{r.rate:>12,.0f} records/s"
        )
    ratio = results[0].rate / results[1].rate
    print(f"  ratio ours/theirs: {ratio:.2f}x")
    return ratio


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--runs", type=int, default=7, help="timed runs; the best is kept")
    parser.add_argument("--time", type=float, default=0.2, help="seconds per timed run")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument(
        "--profile", action="store_true", help="profile our two paths with cProfile instead"
    )
    args = parser.parse_args(argv)

    corpus = args.corpus.resolve()
    if not corpus.is_dir():
        print(f"corpus not found: {corpus}", file=sys.stderr)
        return 1
    inputs = load(corpus)
    messages, wire = inputs.messages, inputs.wire

    # Both must produce the same records from the same inputs before timing means anything.
    if not ours_records(messages) == theirs_records(messages) == inputs.records:
        print("record counts differ between the codecs", file=sys.stderr)
        return 1
    for name, data in wire:
        ours = [r for m in read_capture(data).messages for r in decode_message(m.lines).records]
        theirs = theirs_receive(data)
        if len(ours) != len(theirs) or not all(map(same_fields, ours, theirs)):
            print(f"{name}: the codecs disagree on the full path", file=sys.stderr)
            return 1

    if args.profile:
        paths: list[tuple[str, Callable[[], int]]] = [
            ("records", lambda: ours_records(messages)),
            ("full path", lambda: ours_full(wire)),
        ]
        for label, call in paths:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(200):
                call()
            profiler.disable()
            print(f"\n--- ours, {label} (200 passes) ---")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
        return 0

    print("E1394 decode throughput: ours (middleware.astm) vs python-astm")
    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.machine()}, {os.cpu_count()} CPUs; python-astm {metadata.version('astm')}"
    )
    print(f"corpus: {corpus} ({inputs.files} files)")
    print(f"timing: best of {args.runs} runs of ~{args.time:g} s each, GC off while timed")

    ratio_records = report(
        "Record codec (record lines -> fields)",
        f"{len(messages)} messages, {inputs.records} records; the same latin-1 bytes to both",
        measure(
            [
                ("ours", lambda: ours_records(messages)),
                ("python-astm", lambda: theirs_records(messages)),
            ],
            args.runs,
            args.time,
        ),
    )
    ratio_full = report(
        "Full path (raw wire capture bytes -> frames -> records -> fields)",
        f"{len(wire)} captures, {inputs.wire_records} records: "
        + ", ".join(name for name, _ in wire),
        measure(
            [("ours", lambda: ours_full(wire)), ("python-astm", lambda: theirs_full(wire))],
            args.runs,
            args.time,
        ),
    )

    print("\nLeft out of the record codec comparison (python-astm cannot read them):")
    for line in inputs.left_out:
        print(f"  - {line}")
    print("Left out of the full path comparison:")
    for line in inputs.not_full_path:
        print(f"  - {line}")
    print(
        f"\nsummary: records {ratio_records:.2f}x, full path {ratio_full:.2f}x (ours/python-astm)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
