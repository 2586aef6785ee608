"""Host queries over HL7: an analyser asking what to run on the tube it has just read.

The analysers that ask over HL7 v2.3.1 (the Mindray BS and BC series, and the many
analysers that copied their host interface) use the original-mode deferred query of HL7
v2.3.1 chapter 2 ("query sent for deferred response"):

* the analyser sends ``QRY^Q02``: QRD (QRD-8, the "who" filter, holds the tube's barcode;
  a repeat per tube), and QRF (QRF-1 the analyser);
* the host answers at once with ``QCK^Q02``: MSA, ERR, QAK-2 ``OK`` when something is held
  for the tube or ``NF`` (nothing found);
* then, when something is held, with one ``DSR^Q03`` per tube: MSA, ERR, QAK, the QRD and
  QRF asked with, and the order as numbered display lines (DSP), whose numbers Mindray's
  host interface manuals define: 1 the patient's id, 21 the barcode, 22 the sample id, 23
  the collection time, 24 ``Y`` for STAT, 26 the sample type, and from 29 one line per
  test, ``<analyser test code>^^^``;
* the analyser acknowledges the DSR with ``ACK^Q03``.

When the orders cannot be read (the database away), the QCK says so (MSA-1 ``AE``,
QAK-2 ``AE``) and the analyser asks again: ``NF`` would have it run the tube without its
tests.

Timestamps go out without an offset, in the analyser's clock (these analysers read no
offset), as the daemon's other answers to them do.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, tzinfo

from middleware.domain import HostQuery, Order
from middleware.hl7.results import escape, new_control_id
from middleware.hl7.segments import Hl7Message, Segment

QUERY_MESSAGES = frozenset({"QRY^Q02"})
#: The display lines of a sample before its tests (Mindray's numbering), and the first
#: line of the tests.
_PATIENT_ID, _BARCODE, _SAMPLE_ID, _COLLECTED, _STAT, _SAMPLE_TYPE = 1, 21, 22, 23, 24, 26
_FIRST_TEST = 29


def read_query(message: Hl7Message) -> tuple[HostQuery | None, str]:
    """The tubes a ``QRY^Q02`` asks about (QRD-8), or None and why it cannot be read."""
    qrd = next(iter(message.all("QRD")), None)
    if qrd is None:
        return None, "QRY without a QRD segment: no tube asked about"
    tubes = tuple(dict.fromkeys(rep[0].strip() for rep in qrd.repeats(8) if rep[0].strip()))
    if not tubes:
        return None, "QRD-8: no barcode asked about"
    return HostQuery(specimen_ids=tubes), ""


def answers(
    message: Hl7Message,
    requested: Iterable[tuple[str, list[Order], list[str]]],
    now: datetime,
    zone: tzinfo,
) -> list[str]:
    """The ``QCK^Q02`` answering a query, then a ``DSR^Q03`` per tube something is held
    for; ``requested`` is each tube with its orders and the analyser's test codes."""
    found = [(tube, held, codes) for tube, held, codes in requested if codes]
    header = message.header
    moment = _moment(now, zone)
    head = [
        f"MSA|AA|{_id(message.control_id)}|Message accepted|||0|",
        "ERR|0|",
        f"QAK|SR|{'OK' if found else 'NF'}|",
    ]
    out = ["\r".join([_msh(header, "QCK^Q02", moment), *head])]
    # Repeated as they came, in the analyser's own delimiters.
    asked = [s.line for s in message.all("QRD")[:1] + message.all("QRF")[:1]]
    for tube, held, codes in found:
        lines = _display(tube, held, codes, zone)
        out.append("\r".join([_msh(header, "DSR^Q03", moment), *head, *asked, *lines, "DSC||"]))
    return out


def unanswered(message: Hl7Message, now: datetime, zone: tzinfo, why: str) -> str:
    """The ``QCK^Q02`` of a query that could not be answered now (QAK-2 ``AE``): the
    analyser asks again, where ``NF`` would have it run the tube without its tests."""
    return "\r".join([
        _msh(message.header, "QCK^Q02", _moment(now, zone)),
        f"MSA|AE|{_id(message.control_id)}|{escape(why[:200])}|||0|",
        "ERR|0|",
        "QAK|SR|AE|",
    ])  # fmt: skip


def _display(tube: str, held: list[Order], codes: list[str], zone: tzinfo) -> list[str]:
    first = held[0]
    collected = next((o.collected_at for o in held if o.collected_at is not None), None)
    values = {
        _PATIENT_ID: first.patient_id,
        _BARCODE: tube,
        _SAMPLE_ID: tube,
        _COLLECTED: _moment(collected, zone) if collected else "",
        _STAT: "Y" if any(o.priority == "S" for o in held) else "N",
        _SAMPLE_TYPE: next((o.specimen_type for o in held if o.specimen_type), ""),
    }
    lines = [f"DSP|{n}||{escape(values.get(n, ''))}|||" for n in range(1, _FIRST_TEST)]
    lines += [f"DSP|{n}||{escape(code)}^^^|||" for n, code in enumerate(codes, start=_FIRST_TEST)]
    return lines


def _msh(asked: Segment, kind: str, moment: str) -> str:
    """Our header, addressed to the analyser that asked (its MSH-3, MSH-4), in its HL7
    version, processing id and character set."""
    version = asked.value(12) or "2.3.1"
    charset = asked.value(18)
    return (
        f"MSH|^~\\&|LIS-MIDDLEWARE|LAB|{escape(asked.value(3))}|{escape(asked.value(4))}|"
        f"{moment}||{kind}|{new_control_id()}|{escape(asked.value(11)) or 'P'}|{escape(version)}"
        + (f"||||||{escape(charset)}" if charset else "")
    )


def _moment(moment: datetime, zone: tzinfo) -> str:
    local = moment.astimezone(zone) if moment.tzinfo else moment
    return local.strftime("%Y%m%d%H%M%S")


def _id(control_id: str) -> str:
    return escape(control_id)[:199]
