"""The LIS simulator: an MLLP server that plays the laboratory information system for
developers, integrators and the end-to-end tests of the middleware.

The daemon's sender (:mod:`middleware.delivery`) connects to it and sends ORU^R01
messages; each is recorded (in memory, and as a JSON line in the record file) and answered
with an ACK naming its control id, with the code the simulator is told to give: AA, AE,
AR, or no answer at all, after a delay if asked. It can drop its connections on command
(SIGUSR1 on the command line, :meth:`LisSimulator.drop_connections` in-process) or once
after the Nth message, before answering it, so that the daemon's resending is exercised.
A message it cannot read is recorded as well and answered AR with the reason: bad input
from a sender never stops it.

It also plays the LIS's side of orders: :func:`send_orders` sends OML^O21 messages to the
daemon's orders port (:mod:`middleware.orders_in`) and gives back each answer's code.

Framing is the middleware's own sans-I/O :mod:`middleware.hl7.mllp`; the messages are read
here by splitting them on the delimiters their MSH gives, so that a message the middleware
would refuse is still recorded as it came.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TextIO

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from middleware.hl7.ack import ACCEPTED, read_answer
from middleware.hl7.mllp import DEFAULT_MAX_MESSAGE_BYTES, Discarded, Event, MllpReader, frame
from middleware.hl7.results import NULL, escape, timestamp
from middleware.hl7.segments import encoding_of
from middleware.store.sql import utcnow
from middleware.yamlfile import describe
from simulators.profiles import profile
from simulators.scenarios import plan

#: What ``--ack`` takes; ``none`` sends no answer at all.
ANSWER_CHOICES = ("AA", "AE", "AR", "none")
#: MSA-3 of an AE or AR the simulator was told to give.
REFUSAL_TEXT = "rejected by the LIS simulator"
#: MSH-3 and MSH-4 of what the simulator sends; MSH-5 and MSH-6 of the orders.
LIS_APPLICATION, LIS_FACILITY = "LIS", "LAB"
MIDDLEWARE_APPLICATION, MIDDLEWARE_FACILITY = "LIS-MIDDLEWARE", "LAB"
#: The version answers are given in when the message does not say its own.
DEFAULT_VERSION = "2.5.1"


def new_control_id() -> str:
    """A control id (MSH-10) for what the simulator sends, unique across runs: 19
    characters, within HL7 v2.3's 20."""
    return "LIS" + secrets.token_hex(8).upper()


# --- reading what the middleware sends ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observation:
    """One OBX of a result message, its fields as they came (in HL7's escaped form)."""

    test: str
    """OBX-3, first component: the laboratory's test code."""
    value: str
    """OBX-5, whole (an SN value is ``<^15``)."""
    units: str
    """OBX-6, first component."""
    status: str
    """OBX-11: F final, P preliminary, C corrected, X not obtained."""


@dataclass(frozen=True, slots=True)
class Message:
    """What the simulator reads of a message to record and answer it."""

    control_id: str = ""
    """MSH-10."""
    message_type: str = ""
    """MSH-9's first two components, ``ORU^R01``."""
    version: str = ""
    """MSH-12, first component."""
    sending_application: str = ""
    sending_facility: str = ""
    specimen_ids: tuple[str, ...] = ()
    """OBR-3 and SPM-2 in the order they come, each once."""
    results: tuple[Observation, ...] = ()
    problem: str = ""
    """Why the message cannot be answered as told; empty when it can."""

    @property
    def trigger(self) -> str:
        return self.message_type.partition("^")[2]


def decode(data: bytes) -> str:
    """A message's text, segments separated by CR, in the character set its MSH-18 says
    (UTF-8 when it says none); bytes that are not what it says are read as Latin-1, which
    decodes any byte, so nothing is lost."""
    try:
        text = data.decode(encoding_of(data, "utf-8"))
    except (UnicodeDecodeError, LookupError):
        text = data.decode("latin-1")
    return text.replace("\r\n", "\r").replace("\n", "\r")


def _identifier(value: str, component: str, subcomponent: str) -> str:
    """The first identifier a field gives: SPM-2 is ``placer&namespace^filler&namespace``
    and either part may be empty."""
    for part in value.split(component):
        found = part.split(subcomponent, 1)[0].strip()
        if found:
            return found
    return ""


def _field(fields: list[str], index: int) -> str:
    return fields[index] if len(fields) > index else ""


def read_message(text: str) -> Message:
    """What a message says, as far as it can be read; ``problem`` says what could not."""
    segments = [segment for segment in text.split("\r") if segment]
    header = segments[0] if segments else ""
    separator = header[3:4]
    if not header.startswith("MSH") or not separator or separator.isalnum():
        return Message(problem="MSH: the message does not begin with an MSH segment")
    msh = header.split(separator)
    # MSH-1 is the separator itself, so MSH-n is msh[n - 1].
    encoding = msh[1]
    if not encoding or encoding[0] == separator or encoding[0].isalnum():
        return Message(problem="MSH-2: no encoding characters")
    component = encoding[0]
    subcomponent = encoding[3] if len(encoding) > 3 else "&"

    def msh_field(number: int) -> str:
        return _field(msh, number - 1).strip()

    message_type = "^".join(msh_field(9).split(component)[:2])
    control_id = msh_field(10)
    problem = ""
    if not message_type:
        problem = "MSH-9: no message type"
    elif not control_id:
        problem = "MSH-10: no message control id"
    specimen_ids: dict[str, None] = {}
    results = []
    for segment in segments[1:]:
        fields = segment.split(separator)
        name = fields[0]
        if name in ("OBR", "SPM"):
            where = _field(fields, 3 if name == "OBR" else 2)
            specimen = _identifier(where, component, subcomponent)
            if specimen:
                specimen_ids[specimen] = None
        elif name == "OBX":
            test = _field(fields, 3).split(component, 1)[0]
            units = _field(fields, 6).split(component, 1)[0]
            results.append(Observation(test, _field(fields, 5), units, _field(fields, 11)))
    return Message(
        control_id,
        message_type,
        msh_field(12).split(component, 1)[0],
        msh_field(3),
        msh_field(4),
        tuple(specimen_ids),
        tuple(results),
        problem,
    )


def acknowledgment(
    message: Message, code: str, control_id: str, at: datetime, text: str = ""
) -> str:
    """The ACK of ``message``: MSA-1 ``code``, MSA-2 the message's control id as it came,
    MSA-3 ``text``; ``control_id`` is the ACK's own."""

    def echoed(value: str) -> str:
        # A value of a message with other delimiters may hold ours.
        return value.replace("|", "")

    kind = f"ACK^{echoed(message.trigger)}^ACK" if message.trigger else "ACK"
    header = "|".join(
        [
            "MSH",
            "^~\\&",
            LIS_APPLICATION,
            LIS_FACILITY,
            echoed(message.sending_application),
            echoed(message.sending_facility),
            timestamp(at),
            "",
            kind,
            control_id,
            "P",
            echoed(message.version) or DEFAULT_VERSION,
        ]
    )
    answer = f"MSA|{code}|{echoed(message.control_id)}"
    if text:
        answer += f"|{escape(text)}"
    return f"{header}\r{answer}"


@dataclass(frozen=True, slots=True)
class Received:
    """One message as the simulator received and answered it."""

    received_at: datetime
    peer: str
    """``host:port`` of the connection it came on."""
    control_id: str
    message_type: str
    specimen_ids: tuple[str, ...]
    results: tuple[Observation, ...]
    answer: str | None
    """MSA-1 of the answer sent; None when none was."""
    text: str
    """The whole message, segments separated by CR."""

    def as_json(self) -> dict[str, Any]:
        return {
            "received_at": self.received_at.isoformat(),
            "peer": self.peer,
            "control_id": self.control_id,
            "message_type": self.message_type,
            "specimen_ids": list(self.specimen_ids),
            "results": [
                {"test": r.test, "value": r.value, "units": r.units, "status": r.status}
                for r in self.results
            ],
            "answer": self.answer,
            "text": self.text,
        }


# --- the server -----------------------------------------------------------------------


class LisSimulator:
    """The LIS's MLLP server. ``ack`` and ``delay`` may be changed while it runs; each
    connection is served on its own, so a delay on one holds up no other."""

    def __init__(
        self,
        ack: str | None = "AA",
        delay: float = 0.0,
        *,
        drop_after: int | None = None,
        record: Path | None = None,
        log: TextIO | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.ack = ack
        """MSA-1 of every readable message's answer: AA, AE, AR (or any code, to try the
        middleware on one it must not take); None, no answer at all. A message that
        cannot be read is answered AR with the reason whatever this says."""
        self.delay = delay
        """Seconds before each answer."""
        self.drop_after = drop_after
        """Close the connection the Nth message received comes on, before answering it
        (once)."""
        self.record = record
        """JSON Lines file each message received is appended to as it is answered."""
        self.log = log
        """Where one line per message received is written for a person."""
        self.clock = clock
        self.received: list[Received] = []
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}
        self._record_file: TextIO | None = None
        self._arrival = asyncio.Event()
        # Messages counted as they arrive; ``received`` has them once answered.
        self._count = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen; the port bound (the one chosen when ``port`` is 0)."""
        self._server = await asyncio.start_server(self._serve, host, port)
        if self.record is not None and self._record_file is None:
            self._record_file = self.record.open("a", encoding="utf-8")
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Down: the port closed, every connection dropped, the record file closed. It
        may be started again (a LIS outage and its end)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        serving = list(self._connections.values())
        for task in serving:
            task.cancel()
        await asyncio.gather(*serving, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        if self._record_file is not None:
            self._record_file.close()
            self._record_file = None

    def drop_connections(self) -> None:
        """Close every open connection, as a LIS that goes away would; the port stays
        open for the middleware to connect again."""
        for writer in list(self._connections):
            writer.close()

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        """Until ``count`` messages in all have been received; TimeoutError after
        ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.received) < count:
                    self._arrival.clear()
                    await self._arrival.wait()
        except TimeoutError:
            raise TimeoutError(
                f"the LIS simulator received {len(self.received)} messages, not {count}, "
                f"in {timeout} s"
            ) from None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # a connection is always served by a task
        self._connections[writer] = task
        peer = _peer(writer)
        mllp = MllpReader()
        try:
            while data := await reader.read(65536):
                for event in mllp.receive_data(data):
                    if not await self._take(event, peer, writer):
                        return
            for event in mllp.end_of_stream():
                await self._take(event, peer, writer)
        except OSError as exc:
            self._say(f"{peer}: connection lost: {exc!r}")
        except asyncio.CancelledError:
            # stop() ends connections so; ending as a finished task keeps the stream
            # server's callback (Python 3.11) from reporting the cancellation as an error.
            pass
        finally:
            del self._connections[writer]
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _take(self, event: Event, peer: str, writer: asyncio.StreamWriter) -> bool:
        """Record and answer one message; False when its connection is to be dropped."""
        if isinstance(event, Discarded):
            if event.reason != "too-long":
                self._say(f"{peer}: {event.end - event.start} bytes ignored ({event.reason})")
                return True
            # The sender waits for an answer to the block it sent.
            text = decode(event.data)
            message = Message(problem=f"longer than {DEFAULT_MAX_MESSAGE_BYTES} bytes; not read")
        else:
            text = decode(event.message)
            message = read_message(text)
        received_at = self.clock()
        self._count += 1
        if self._count == self.drop_after:
            self._keep(received_at, peer, message, text, None, "connection dropped")
            return False
        code = self.ack if not message.problem else "AR"
        answered = None
        try:
            if self.delay > 0:
                await asyncio.sleep(self.delay)
            # Dropped on command during the delay: nothing to answer on.
            if code is not None and not writer.is_closing():
                reason = message.problem or ("" if code in ACCEPTED else REFUSAL_TEXT)
                ack = acknowledgment(message, code, new_control_id(), self.clock(), reason)
                writer.write(frame(ack.encode("utf-8")))
                await writer.drain()
                answered = code
        finally:
            self._keep(received_at, peer, message, text, answered, message.problem)
        return True

    def _keep(
        self,
        received_at: datetime,
        peer: str,
        message: Message,
        text: str,
        answer: str | None,
        note: str,
    ) -> None:
        received = Received(
            received_at,
            peer,
            message.control_id,
            message.message_type,
            message.specimen_ids,
            message.results,
            answer,
            text,
        )
        self.received.append(received)
        if self._record_file is not None:
            self._record_file.write(json.dumps(received.as_json(), ensure_ascii=False) + "\n")
            self._record_file.flush()
        specimens = ",".join(message.specimen_ids) or "-"
        self._say(
            f"{peer} {message.message_type or '?'} {message.control_id or '-'} "
            f"specimen {specimens}: {answer or 'no answer'}" + (f" ({note})" if note else "")
        )
        self._arrival.set()

    def _say(self, line: str) -> None:
        if self.log is not None:
            print(f"{self.clock():%H:%M:%S} {line}", file=self.log, flush=True)


def _peer(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    if not address:
        return "?"
    host = str(address[0])
    return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"


# --- orders to the middleware ---------------------------------------------------------


class OrderToSend(BaseModel):
    """One order of the ``--orders`` file: the tests the LIS asks for a specimen."""

    # Numbers too: a barcode written unquoted in YAML is read as one.
    model_config = ConfigDict(
        extra="forbid", frozen=True, str_strip_whitespace=True, coerce_numbers_to_str=True
    )

    specimen_id: str = Field(min_length=1)
    tests: tuple[Annotated[str, Field(min_length=1)], ...] = Field(min_length=1)
    """The laboratory's test codes (OBR-4)."""
    patient_id: str = ""
    priority: Literal["R", "S"] = "R"
    """R routine, S STAT."""
    sex: Literal["", "F", "M", "O", "U", "A", "N"] = ""
    """HL7 table 0001."""
    birth_date: date | None = None

    @model_validator(mode="after")
    def _patient_named(self) -> Self:
        if (self.sex or self.birth_date) and not self.patient_id:
            raise ValueError("sex and birth_date describe a patient: give patient_id too")
        return self


class OrdersFileError(Exception):
    """The orders file cannot be used; one ``file:line: field: problem`` per line."""


def read_orders(path: Path) -> list[OrderToSend]:
    """The orders of a YAML (or JSON) file holding a list of them."""
    try:
        text = path.read_text(encoding="utf-8")
        loaded = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError) as exc:
        raise OrdersFileError(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise OrdersFileError(f"{path}: not YAML: {' '.join(str(exc).split())}") from None
    try:
        return TypeAdapter(list[OrderToSend]).validate_python(loaded)
    except ValidationError as exc:
        raise OrdersFileError("\n".join(describe(exc, path, root))) from None


def order_message(order: OrderToSend, control_id: str, at: datetime) -> str:
    """The OML^O21 (v2.5.1) of one order, segments separated by CR: PID when the order
    names a patient; per test an ORC (new order, placed at ``at``), a TQ1 with the
    priority and an OBR with the specimen id as filler order number (OBR-3) and the test
    code (OBR-4), which is where the middleware reads them."""
    moment = timestamp(at)
    specimen = escape(order.specimen_id)
    segments = [
        "|".join(
            [
                "MSH",
                "^~\\&",
                LIS_APPLICATION,
                LIS_FACILITY,
                MIDDLEWARE_APPLICATION,
                MIDDLEWARE_FACILITY,
                moment,
                "",
                "OML^O21^OML_O21",
                escape(control_id),
                "P",
                "2.5.1",
            ]
        )
    ]
    if order.patient_id:
        birth = order.birth_date.strftime("%Y%m%d") if order.birth_date else ""
        # PID-5 is required and the simulator knows no name: HL7's explicit null.
        segments.append(
            f"PID|1||{escape(order.patient_id)}^^^^MR||{NULL}||{birth}|{order.sex}".rstrip("|")
        )
    for number, test in enumerate(order.tests, start=1):
        placer = f"{specimen}-{number}"
        segments += [
            f"ORC|NW|{placer}|||||||{moment}",
            f"TQ1|1||||||||{order.priority}",
            f"OBR|{number}|{placer}|{specimen}|{escape(test)}^^L",
        ]
    return "\r".join(segments)


async def send_orders(
    host: str,
    port: int,
    orders: Sequence[OrderToSend],
    *,
    timeout: float = 10.0,
    clock: Callable[[], datetime] = utcnow,
) -> list[str]:
    """Send each order as one message on one connection, each once the one before is
    answered; the MSA-1 of each answer. The connection is tried again while refused (the
    middleware may still be starting), for up to ``timeout`` seconds, and each answer is
    awaited as long; TimeoutError after that, ConnectionError if the middleware closes
    the connection, ValueError when it answers something else than an ACK of the order."""
    reader, writer = await _connect(host, port, timeout)
    mllp = MllpReader()
    codes = []
    try:
        for order in orders:
            control_id = new_control_id()
            writer.write(frame(order_message(order, control_id, clock()).encode("utf-8")))
            await writer.drain()
            answer = await asyncio.wait_for(_next_message(reader, mllp), timeout)
            read = read_answer(answer)
            if read.control_id != control_id:
                raise ValueError(f"the answer names {read.control_id!r}, not {control_id!r}")
            codes.append(read.code)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return codes


async def _connect(
    host: str, port: int, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await asyncio.open_connection(host, port)
            except ConnectionRefusedError:
                await asyncio.sleep(0.2)


async def _next_message(reader: asyncio.StreamReader, mllp: MllpReader) -> str:
    while data := await reader.read(65536):
        for event in mllp.receive_data(data):
            if not isinstance(event, Discarded):
                return event.message.decode("utf-8", errors="replace")
    raise ConnectionError("the middleware closed the connection before answering")


# --- command line ---------------------------------------------------------------------


def address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6), for argparse."""
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen", required=True, type=address, metavar="HOST:PORT",
        help="where the middleware sends its results (port 0: any free port, printed)",
    )  # fmt: skip
    parser.add_argument(
        "--ack", choices=ANSWER_CHOICES, default="AA",
        help="the answer every message gets (none: no answer); default AA",
    )  # fmt: skip
    parser.add_argument(
        "--delay", type=float, default=0.0, metavar="S", help="seconds before each answer"
    )
    parser.add_argument(
        "--record", type=Path, metavar="FILE",
        help="append each message received to FILE as a JSON line",
    )  # fmt: skip
    parser.add_argument(
        "--orders", type=Path, metavar="FILE",
        help="orders to send: a YAML or JSON list of {specimen_id, tests, patient_id, "
        "priority, sex, birth_date}",
    )  # fmt: skip
    parser.add_argument(
        "--orders-to", type=address, metavar="HOST:PORT",
        help="the middleware's orders port, where --orders are sent",
    )  # fmt: skip
    parser.add_argument(
        "--orders-for", metavar="PROFILE",
        help="also order for the samples an analyser simulator of PROFILE asks about in "
        "host-query mode with --orders-samples and --orders-seed",
    )  # fmt: skip
    parser.add_argument(
        "--orders-samples", type=int, default=10, metavar="N",
        help="with --orders-for: the analyser's --samples (default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--orders-seed", type=int, default=1, metavar="S",
        help="with --orders-for: the analyser's --seed (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--drop-after", type=int, metavar="N",
        help="close the connection once, on receiving the Nth message, before answering it",
    )  # fmt: skip


async def run(args: argparse.Namespace) -> int:
    """Serve until cancelled; 0 then, 2 when the options cannot be used, 1 when the port
    cannot be listened on. SIGUSR1 drops every connection."""
    orders: list[OrderToSend] = []
    wanted = args.orders is not None or args.orders_for is not None
    if wanted != (args.orders_to is not None):
        print("lis simulator: --orders-to goes with --orders or --orders-for", file=sys.stderr)
        return 2
    if args.orders is not None:
        try:
            orders = read_orders(args.orders)
        except OrdersFileError as exc:
            print(f"lis simulator: orders refused:\n{exc}", file=sys.stderr)
            return 2
    if args.orders_for is not None:
        try:
            orders += orders_for(args.orders_for, args.orders_samples, args.orders_seed)
        except ValueError as exc:
            print(f"lis simulator: {exc}", file=sys.stderr)
            return 2
    simulator = LisSimulator(
        ack=None if args.ack == "none" else args.ack,
        delay=args.delay,
        drop_after=args.drop_after,
        record=args.record,
        log=sys.stderr,
    )
    host, port = args.listen
    try:
        bound = await simulator.start(host, port)
    except OSError as exc:
        print(f"lis simulator: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        await simulator.stop()
        return 1
    print(f"listening on {host}:{bound}", flush=True)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, simulator.drop_connections)
    sending = asyncio.create_task(_send_orders_once(args.orders_to, orders)) if orders else None
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        # Cancelled is how the caller stops it: a clean end, not a failure.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        if sending is not None:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
        await simulator.stop()
    return 0


def orders_for(profile_name: str, samples: int, seed: int) -> list[OrderToSend]:
    """The orders of the samples an analyser simulator asks about in host-query mode
    (same profile, sample count and seed): each sample's whole menu, its patient's id,
    sex and birth date."""
    steps = plan(profile(profile_name), "host-query", samples, seed, datetime.now())
    return [
        OrderToSend.model_validate(
            {
                "specimen_id": step.sample.specimen_id,
                "tests": tuple(m.analyte.lab_code for m in step.sample.measured),
                "patient_id": step.sample.patient_id,
                "sex": step.sample.sex,
                "birth_date": step.sample.birth_date,
            }
        )
        for step in steps
        if step.query
    ]


async def _send_orders_once(to: tuple[str, int], orders: list[OrderToSend]) -> None:
    host, port = to
    try:
        codes = await send_orders(host, port, orders)
    except (OSError, TimeoutError, ValueError) as exc:
        print(f"lis simulator: orders not sent to {host}:{port}: {exc!r}", file=sys.stderr)
        return
    for order, code in zip(orders, codes, strict=True):
        print(
            f"order for specimen {order.specimen_id} ({','.join(order.tests)}) sent: {code}",
            file=sys.stderr,
            flush=True,
        )
