"""The ``lis-middleware`` command (also ``python -m middleware``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import drivers

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from middleware.settings import Settings


def _decode(args: argparse.Namespace) -> int:
    from middleware.decode import decode_capture, render_json, render_text

    try:
        data = sys.stdin.buffer.read() if args.path == "-" else Path(args.path).read_bytes()
    except OSError as exc:
        print(f"lis-middleware decode: cannot read {args.path}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        report = decode_capture(data, args.driver, args.tolerate)
    except (KeyError, ValueError) as exc:
        print(f"lis-middleware decode: {exc.args[0]}", file=sys.stderr)
        return 2
    if not _print_out(render_json(report) if args.format == "json" else render_text(report)):
        return 141
    return 0 if report.ok else 1


def _hl7_render(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from datetime import UTC, datetime

    from middleware.hl7.render import render_capture
    from middleware.hl7.results import Sender

    try:
        data = sys.stdin.buffer.read() if args.path == "-" else Path(args.path).read_bytes()
    except OSError as exc:
        print(
            f"lis-middleware hl7 render: cannot read {args.path}: {exc.strerror}", file=sys.stderr
        )
        return 2
    sender = Sender()
    if args.config is not None:
        settings = _settings(args, "hl7 render")
        if settings is None:
            return 2
        sender = settings.lis.sender() if settings.lis is not None else sender
    # Given on the command line, the type and version win over the configuration's.
    sender = replace(
        sender,
        version=args.hl7_version or sender.version,
        message_type=(args.message_type or "").replace("_", "^") or sender.message_type,
    )
    if sender.message_type == "OUL^R22" and sender.version != "2.5.1":
        print("lis-middleware hl7 render: OUL^R22 is HL7 v2.5.1 only", file=sys.stderr)
        return 2
    try:
        messages = render_capture(data, datetime.now(UTC), args.driver, args.tolerate, sender)
    except (KeyError, ValueError) as exc:
        print(f"lis-middleware hl7 render: {exc.args[0]}", file=sys.stderr)
        return 2
    if not _print_out("\n\n".join(message.replace("\r", "\n") for message in messages)):
        return 141
    print(f"{len(messages)} message(s)", file=sys.stderr)
    return 0


def _outbox(args: argparse.Namespace) -> int:
    """List, retry or dismiss the messages to the LIS not delivered, in the database the
    configuration names; through the same commands as the control API, audited."""
    import asyncio

    from middleware.control import Control, ControlError
    from middleware.store import Store

    command = f"outbox {args.outbox_command}"
    settings = _store_settings(args, command)
    if settings is None:
        return 2
    store = Store(settings.database)
    control = Control(settings, store)
    try:
        if args.outbox_command == "list":
            entries = asyncio.run(control.outbox_entries())
            for e in entries:
                print(
                    f"{e.id:>8} {e.state:<9} {e.specimen_id:<16} {e.instrument:<12} "
                    f"{e.control_id:<20} {e.attempts:>3}  {e.detail}"
                )
            print(f"{len(entries)} message(s) not delivered", file=sys.stderr)
            return 0
        act = control.retry_outbox if args.outbox_command == "retry" else control.dismiss_outbox
        asyncio.run(act(args.id, args.by))
    except ControlError as exc:
        print(f"lis-middleware {command}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"message {args.id}: {args.outbox_command} done")
    return 0


def _read_store(
    args: argparse.Namespace, command: str, work: Callable[[Connection], list[dict[str, Any]]]
) -> list[dict[str, Any]] | None:
    """Rows ``work`` reads from the database the configuration names; None, said on
    stderr, when the configuration is refused or its database is not there."""
    from middleware.store import Store

    settings = _store_settings(args, command)
    if settings is None:
        return None
    store = Store(settings.database)
    try:
        return store.read(work)
    finally:
        store.close()


def _settings(args: argparse.Namespace, command: str) -> Settings | None:
    """The configuration named by --config (and the environment); None, said on stderr,
    when it is refused."""
    from middleware.settings import ConfigError, load_settings

    try:
        return load_settings(Path(args.config) if args.config else None)
    except ConfigError as exc:
        print(f"lis-middleware {command}: configuration refused:\n{exc}", file=sys.stderr)
        return None


def _store_settings(args: argparse.Namespace, command: str) -> Settings | None:
    """The configuration of a command that works on the daemon's database; None, said on
    stderr, when it is refused or names a SQLite file that is not there. Opened, such a
    file would be made: a new, empty database beside the daemon's, which the command
    would read or write without a word."""
    from sqlalchemy import make_url

    settings = _settings(args, command)
    if settings is None:
        return None
    url = settings.database
    if url.startswith("sqlite"):
        path = Path(make_url(url).database or "")
        if not path.is_file():
            print(
                f"lis-middleware {command}: no database at {path}: is state_dir right? "
                "(the daemon creates it at its first start)",
                file=sys.stderr,
            )
            return None
    return settings


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from middleware.daemon import InstrumentsHeld, LeaseLost, configure_logging, serve
    from middleware.transport.tcp import ListenError
    from middleware.transport.tls import TlsError

    # Without either, the daemon would run with no analyser at all and say nothing about it.
    if args.config is None and "MIDDLEWARE_INSTRUMENTS" not in os.environ:
        print(
            "lis-middleware run: no configuration: give --config FILE "
            "(or the instruments as JSON in MIDDLEWARE_INSTRUMENTS)",
            file=sys.stderr,
        )
        return 2
    settings = _settings(args, "run")
    if settings is None:
        return 2
    configure_logging(settings.log.level, settings.log.format)
    try:
        asyncio.run(serve(settings))
    except ListenError as exc:
        print(f"lis-middleware run: {exc}", file=sys.stderr)
        return 1
    except (InstrumentsHeld, TlsError) as exc:
        print(f"lis-middleware run: not started: {exc}", file=sys.stderr)
        return 2
    except LeaseLost as exc:
        print(f"lis-middleware run: stopped: {exc}", file=sys.stderr)
        return 1
    return 0


def _rules_check(args: argparse.Namespace) -> int:
    from middleware.engine.rules import load_rules
    from middleware.yamlfile import FileError

    try:
        rules = load_rules(Path(args.directory))
    except FileError as exc:
        for problem in exc.problems:
            print(problem)
        print(f"{len(exc.problems)} problem(s); rules refused")
        return 1
    print(f"rules ok: {rules.summary()}")
    return 0


def _rules_schema(args: argparse.Namespace) -> int:
    from middleware.engine.rules import schema_text

    text = schema_text()
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            why = exc.strerror or str(exc)
            said = f"lis-middleware rules schema: {args.output}: cannot write: {why}"
            print(said, file=sys.stderr)
            return 2
    else:
        sys.stdout.write(text)
    return 0


def _qc_evaluate(args: argparse.Namespace) -> int:
    from middleware.engine.qc_cli import evaluate_command

    return evaluate_command(
        args.input, args.rules, args.warnings, args.traditional, args.include_rejected
    )


def _reagents_trace(args: argparse.Namespace) -> int:
    import json

    from middleware.store.reading import results_with_lot

    rows = _read_store(args, "reagents trace", lambda conn: results_with_lot(conn, args.lot))
    if rows is None:
        return 2
    for row in rows:
        if args.format == "json":
            line = json.dumps({k: row[k] for k in _TRACE_FIELDS}, default=_json_value)
        else:
            line = (
                f"{row['kind']:<8} {row['instrument']:<12} {row['specimen_id']:<16} "
                f"{row['test_code']:<10} {row['value_text']:>10} {row['units']:<8} "
                f"{row['completed_at'] or ''}  {row['reagent']}"
            )
        if not _print_out(line):
            return 141
    print(f"{len(rows)} result(s) produced with lot {args.lot}", file=sys.stderr)
    return 0


def _held(args: argparse.Namespace) -> int:
    import json

    from middleware.store.reading import held_results

    rows = _read_store(args, "held", held_results)
    if rows is None:
        return 2
    for row in rows:
        if args.format == "json":
            findings = json.loads(row["findings"])
            line = json.dumps({**row, "findings": findings}, default=_json_value)
        else:
            line = (
                f"{row['instrument']:<12} {row['specimen_id']:<16} {row['test_code']:<10} "
                f"{row['value_text']:>10} {row['units']:<8} {row['held_since']:%Y-%m-%d %H:%M}  "
                f"{row['reasons']}"
            )
        if not _print_out(line):
            return 141
    print(f"{len(rows)} result(s) held", file=sys.stderr)
    return 0


def _json_value(value: object) -> str:
    """A stored value JSON has no type for: a time as ISO 8601 in UTC with its offset
    (SQLite gives times back without their zone), anything else as text."""
    from datetime import UTC, datetime

    from middleware.store.sql import utc

    if isinstance(value, datetime):
        return (utc(value) or value).astimezone(UTC).isoformat()
    return str(value)


_TRACE_FIELDS = (
    "kind",
    "id",
    "instrument",
    "specimen_id",
    "patient_id",
    "test_code",
    "value_text",
    "units",
    "completed_at",
    "reagent",
    "reagent_lot",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lis-middleware",
        description="Instrument middleware between laboratory analysers and the LIS.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    decode = sub.add_parser(
        "decode",
        help="decode an ASTM or HL7 capture (wire bytes, frames, records or a monitor log)",
        description="Decode an ASTM or HL7 capture (wire bytes, frames, a monitor log, plain "
        "records or messages) and list its messages and results. Exit status 0 when "
        "nothing was wrong, 1 when problems were found, 2 on usage errors.",
    )
    decode.add_argument("path", help="capture file, or - for standard input")
    decode.add_argument(
        "--driver",
        default="auto",
        help=f"instrument driver ({', '.join(drivers.names())}), or auto (the default): the "
        "one each message's sender or layout names",
    )
    decode.add_argument("--format", choices=("json", "text"), default="json")
    decode.add_argument(
        "--tolerate",
        metavar="LIST",
        help="comma-separated link tolerances: long_frames, no_frame_numbers, no_checksum, "
        "line_feeds_in_text, records_span_frames, numbering_restarts",
    )
    decode.set_defaults(handler=_decode)

    run = sub.add_parser(
        "run",
        help="run the daemon: every configured analyser connection",
        description="Run the middleware daemon. Settings come from the YAML file and "
        "MIDDLEWARE_* environment variables (which win).",
    )
    run.add_argument("--config", metavar="FILE", help="YAML configuration file")
    run.set_defaults(handler=_run)

    rules = sub.add_parser("rules", help="the laboratory's rule files")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_sub.add_parser(
        "check",
        help="validate a rules directory",
        description="Validate every rule file of DIR together; print each problem with its "
        "file, line and field. Exit status 0 when the rules are usable, 1 otherwise.",
    )
    check.add_argument("directory", nargs="?", default="rules", metavar="DIR")
    check.set_defaults(handler=_rules_check)
    schema = rules_sub.add_parser(
        "schema", help="print the JSON Schema of a rule file (rules/schema.json)"
    )
    schema.add_argument("--output", metavar="FILE")
    schema.set_defaults(handler=_rules_schema)

    reagents = sub.add_parser("reagents", help="reagent lots and the results they produced")
    reagents_sub = reagents.add_subparsers(dest="reagents_command", required=True)
    trace = reagents_sub.add_parser(
        "trace",
        help="list every result produced with a reagent lot",
        description="List every patient and control result produced with LOT (e.g. for a "
        "recall), from the database the configuration names.",
    )
    trace.add_argument("lot")
    trace.add_argument("--config", metavar="FILE", help="the daemon's YAML configuration")
    trace.add_argument("--format", choices=("text", "json"), default="text")
    trace.set_defaults(handler=_reagents_trace)

    held = sub.add_parser(
        "held",
        help="list the results held now, with their reasons",
        description="List every result held now (QC, acceptance, reagent lot, "
        "autoverification), with the reasons of its current decision, from the database "
        "the configuration names.",
    )
    held.add_argument("--config", metavar="FILE", help="the daemon's YAML configuration")
    held.add_argument("--format", choices=("text", "json"), default="text")
    held.set_defaults(handler=_held)

    box = sub.add_parser("outbox", help="messages to the LIS not delivered")
    box_sub = box.add_subparsers(dest="outbox_command", required=True)
    listing = box_sub.add_parser(
        "list", help="the messages pending, stopped by an error answer, or set aside"
    )
    listing.add_argument("--config", metavar="FILE", help="the daemon's YAML configuration")
    listing.set_defaults(handler=_outbox)
    for name, text in (
        ("retry", "send a stopped or set-aside message again, with its control id"),
        ("dismiss", "set a stopped message aside, so its specimen's later messages go"),
    ):
        act = box_sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}.")
        act.add_argument("id", type=int, help="the message's number in `outbox list`")
        act.add_argument("--by", required=True, help="who does it (audited)")
        act.add_argument("--config", metavar="FILE", help="the daemon's YAML configuration")
        act.set_defaults(handler=_outbox)

    hl7 = sub.add_parser("hl7", help="HL7 v2 messages to the LIS")
    hl7_sub = hl7.add_subparsers(dest="hl7_command", required=True)
    render = hl7_sub.add_parser(
        "render",
        help="print the HL7 messages a capture's results become",
        description="Decode a capture (ASTM, or the HL7 an analyser sent) and print the HL7 "
        "message each specimen's patient results would be sent to the LIS as (one segment "
        "per line, a blank line between messages), whatever the rules would decide. Exit "
        "status 0, or 2 on usage errors.",
    )
    render.add_argument("path", help="capture file, or - for standard input")
    render.add_argument(
        "--driver",
        default="auto",
        help=f"instrument driver ({', '.join(drivers.names())}), or auto (the default): the "
        "one each message's sender or layout names",
    )
    render.add_argument("--tolerate", metavar="LIST", help="link tolerances, as for decode")
    render.add_argument(
        "--version",
        dest="hl7_version",
        choices=("2.5.1", "2.3.1"),
        help="HL7 version (default: the configuration's, else 2.5.1)",
    )
    render.add_argument(
        "--type",
        dest="message_type",
        choices=("ORU_R01", "OUL_R22"),
        type=lambda text: text.replace("^", "_"),
        help="message type (default: the configuration's, else ORU_R01)",
    )
    render.add_argument(
        "--config",
        metavar="FILE",
        help="the daemon's YAML configuration: its lis section (type, version, test names "
        "and codes, methods, performing laboratory) shapes the messages",
    )
    render.set_defaults(handler=_hl7_render)

    qc = sub.add_parser("qc", help="quality control tools")
    qc_sub = qc.add_subparsers(dest="qc_command", required=True)
    evaluate = qc_sub.add_parser(
        "evaluate",
        help="run Westgard rules over a CSV of QC results",
        description="Evaluate QC results (CSV with header run,material,value,mean,sd; "
        "optionally lot, instrument, test) in file order with the Westgard rules, and print "
        "one JSON object per row. docs/westgard.md defines the rules. Exit status 0 when "
        "evaluated, 2 on bad options or input.",
    )
    evaluate.add_argument("--input", required=True, metavar="FILE", help="CSV file, or -")
    evaluate.add_argument(
        "--rules",
        default="1-3s,2-2s,R-4s,4-1s,10x",
        metavar="LIST",
        help="comma-separated rules that reject the run (default: %(default)s)",
    )
    evaluate.add_argument(
        "--warnings",
        default="1-2s",
        metavar="LIST",
        help="comma-separated rules that only warn (default: %(default)s; '' for none)",
    )
    evaluate.add_argument(
        "--traditional",
        action="store_true",
        help="1-2s screens: the other rules are looked at only once it fires in a run",
    )
    evaluate.add_argument(
        "--include-rejected",
        action="store_true",
        help="keep results of rejected runs in the windows of later runs",
    )
    evaluate.set_defaults(handler=_qc_evaluate)

    from middleware import records_cli

    records_cli.add_parsers(sub)  # backup, restore, archive, purge
    from middleware import access_cli

    access_cli.add_parsers(sub)  # users, tokens, audit verify
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = args.handler
    return int(handler(args))


def _print_out(text: str) -> bool:
    """Print a command's output; False when whoever reads it has gone (``decode ... |
    head``): not an error of ours, and the interpreter's flush at exit must not fail on
    it again."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return False
    return True
