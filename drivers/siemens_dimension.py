"""Siemens Dimension Vista 500 and 1500 (chemistry and immunoassay), ASTM.

What this driver reads, and on what ground
-------------------------------------------
Siemens' LIS interface specification for the Vista is not public, nor any Siemens list of
its result comment codes (public repositories, issue threads, documentation sites and
stored web pages were searched for one). One real capture is: the log kept in the source
of a public Korean LIS interface program written for a "VISTA 500" (Visual Basic, six
result messages and a host query from 2011; read, nothing copied). What it shows, and
what the driver makes of it:

* H.5 is a name set on site (``serial HOST`` there), H.12 ``P``, H.13 ``DB 100102``. The
  family is recognised when H.5 says ``Dimension`` or ``Vista`` (any case, any padding:
  ``Dimension Vista^...``, ``VISTA1500``); otherwise by its comments (below, "Layout").
* P carries nothing but empty components; O.3 the sample id (else the first component of
  O.4), O.5 the tests, O.12 ``N``, O.16 ``S`` (the sample type). A C record typed ``G``
  after the O (``G001^<text>``) is not read: what its text is (``PL000374-1``) is not
  known.
* R.3 ``^^^<number>^<number>^<abbreviation>`` (``^^^1802^2202^RF``, ``^^^0802^2202^BHCG``):
  the test code read is the fourth component, the standard's place, passed through (map
  it per instrument in ``test_map``); the sixth, the method's abbreviation, names the
  reagent (below). R.4 the value (empty when the analyser could not give one: an error
  comment says why), R.5 units, R.6 the range (``0-15``; ``-`` for none), R.7 the
  LIS2-A2 flags as sent (empty in the capture, even above the range), R.9 status, R.11
  ``Siemens``, R.13 the completion time, R.14 the analyser's name on site (the module).
* A control is the standard's: O.12 (or H.12) = ``Q``, material = the sample id; no
  control lot is read (the capture holds no control).
* Host query: the standard's Q record (``Q|1|^<sample id>||||||||||O``), answered the
  standard's way.

Comments after a result: typed ``R`` and ``E``
----------------------------------------------
LIS2-A2 types a comment (C.5) ``G`` generic, ``T`` test name, ``P`` and ``N``, or ``I``
instrument flag. The Vista writes others after an R, each C.4 a code^value whose code
starts with the type's letter:

* ``R`` reagent information: ``R001^10341MA`` the reagent lot, ``R002^20111005000000``
  its expiry, ``R003^000071`` a number of six digits that two results of one lot share
  (``000844`` on both hCG results of lot ``11103AA``), taken to be the Flex reagent
  cartridge's own number and kept as the lot's ``serial``. Together they are the result's
  ``ReagentUse``, named ``Dimension Vista <abbreviation> reagent`` (the sixth component of
  R.3, ``Dimension Vista RF reagent``; the test code when R.3 has no abbreviation), for
  the lab's lot registry and ``reagents trace``. They are not comments: the LIS is sent the
  lot with the result (HL7), not its code text. Should a result have more than one R001,
  each is a ``ReagentUse`` of its own (a code met again opens the next one). An expiry or
  number without a lot is left out, and the message says so; an ``R`` code other than
  these three, whose meaning is not known, stays a comment.
* ``E`` a condition the analyser reports on the result: ``E115^Diluted``,
  ``E133^Manually Cancelled Test``, ``E511^Above Reference Range``, ``E521^Above Assay
  Range``, ``E541^Above Cutoff Value``. Each is an instrument flag of the result, written
  code and text (``E521 Above Assay Range``), and stays a comment too, as the standard's
  ``I`` comments do (instrument flags are not sent to the LIS; comments are). Under the
  default ``hold_instrument_flags: ["*"]`` every one holds the result: a result the analyser
  says is above its assay range no longer looks, to the rules, like one it said nothing of.

``E511 Above Reference Range`` is held too, on purpose. It says only where the value
lies against the range, which the rules check themselves; but the driver does not pick
out codes to waive, because the capture shows that neither the code nor the text can be
trusted to tell a range note from an assay-range error: ``E521`` comes as ``Above Assay
Range`` on two results and as ``Above Reference Range`` on a third (hCG 51199.3 mIU/mL,
diluted, ``E115``), and a driver waiving "Above Reference Range" by its text would let
that one through. Holding one result too many is the safe side; a laboratory that wants
range notes not to hold lists the flags it holds by name in ``hold_instrument_flags``
(rules/autoverification.yaml), exactly as this driver writes them. The older Dimension
LIS protocol (below), whose result error codes public projects quote from its interface
manual, likewise counts "Above Assay Range" and "Below Assay Range" among the codes that
suppress the value; its numbers are not the Vista's.

Layout
------
With a sender that does not name it, a message is the Vista's when a comment after a
result is typed ``R`` or ``E`` and its code is that letter and three digits (``R001``,
``E521``): no LIS2-A2 comment type is ``R`` or ``E``, and no other family read here
writes comments so. That is what the one capture shows of every result message; a query
alone has no such comment and is read as the message before it on the connection.
``lis-middleware decode`` on a capture shows what the driver makes of it; check one before
relying on this reading.

The Dimension EXL, RxL and Xpand: not ASTM
------------------------------------------
The Dimension EXL 200, EXL with LM, RxL Max and Xpand Plus talk to a host in Siemens' own
"Dimension LIS protocol": the Dimension interface manuals (PN D00396 Rev. 2, 2011; 11348004
Rev. 02, 2019), as far as their public copies could be read, describe that protocol, and no
ASTM E1394 mode for these models was found there or anywhere else. It is not supported:
our link layer speaks E1381 only. Its bytes, as public captures and a public Xpand Plus
interface show them (hmislk/hmis-analyzer-middleware's logs, roy-harmon/RosieLIS; both MIT;
read, nothing copied):

* Every message is one block: STX (0x02), a capital letter naming the message, FS (0x1C),
  its fields each ended by FS, a two-digit upper-case hex checksum (the byte sum from the
  letter to the last FS, modulo 256), ETX (0x03). No frame number, no CR LF, no ENQ/EOT
  around each transfer; the receiver answers ACK or NAK.
* From the analyser: ``P`` poll (every 15 s or so when idle:
  ``<STX>P<FS>DIM1<FS>0<FS>1<FS>0<FS>78<ETX>``), ``I`` query for a sample, ``R`` result
  (patient id, sample no., sample type, location, priority, time, cups, dilution, number
  of tests, then name, value, units and error of each), ``C`` calibration, ``M`` request
  acceptance. From the host: ``N`` no request (``<STX>N<FS>6A<ETX>``), ``D`` sample
  request, ``M`` result acceptance.

A lab recognises it by ``02 50 1C`` (STX ``P`` FS) about every 15 s in a serial or TCP
capture. The daemon's link, waiting for ENQ, passes those blocks over without a word (after
a lone ENQ, which the public logs also show, it answers ACK, then NAKs the block: ``frame
not closed by C1 C2 CR LF``); the analyser, never answered ACK, reports a host
communication error. ``lis-middleware decode`` on such a capture says ``frame number
missing or invalid: 'P'`` and ``record type 'P' not followed by the field delimiter``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from drivers.base import Context, Driver, ResultRecords, field_name
from middleware.astm.records import Record
from middleware.domain import Comment, ReagentUse

#: C.5 of the Vista's comments after a result: reagent information, a condition.
_REAGENT, _CONDITION = "R", "E"
#: The reagent information read (C.4's first component): lot, expiry, cartridge number.
_LOT, _EXPIRY, _NUMBER = "R001", "R002", "R003"
_READ = (_LOT, _EXPIRY, _NUMBER)
#: R.3's sixth component (0-based 5): the method's abbreviation (``RF``, ``BHCG``).
_ABBREVIATION = 5
_DIGITS = re.compile(r"[0-9]{3}")


def _typed_code(comment: Record) -> bool:
    """A comment typed R or E whose code (C.4's first component) is that letter and
    three digits."""
    kind, code = comment.value(5), comment.value(4)
    return kind in (_REAGENT, _CONDITION) and code[:1] == kind and bool(_DIGITS.fullmatch(code[1:]))


def _condition(text: str) -> str:
    """An E comment's C.4 as one line: code and text (``E521 Above Assay Range``)."""
    code, _, said = text.partition("^")
    return f"{code.strip()} {said.strip()}".strip()


def _reagent_code(comment: Record) -> str:
    """The code of a reagent information comment this driver reads, else ``""``."""
    code = comment.value(4).strip()
    return code if comment.value(5) == _REAGENT and code in _READ else ""


class SiemensDimensionDriver(Driver):
    name = "siemens_dimension"
    description = "Siemens Dimension Vista 500 and 1500 (chemistry and immunoassay, ASTM)"
    # Inside a longer name ("AltaVista") the word says nothing of the analyser.
    sender_pattern = re.compile(r"DIMENSION|(?<![A-Z])VISTA(?![A-Z])", re.IGNORECASE)

    @classmethod
    def score(cls, records: Sequence[Record]) -> tuple[int, str]:
        """A comment after a result typed R or E, coded with that letter and three digits
        (``R001^<lot>``, ``E521^Above Assay Range``): the Vista's, no LIS2-A2 type."""
        after_result = False
        for record in records:
            if record.type == "C":
                if after_result and _typed_code(record):
                    return 2, "comments after results typed R or E (C.5), coded R001, E521 (C.4)"
            else:
                after_result = record.type == "R"
        return 0, ""

    def instrument_flags(self, group: ResultRecords) -> tuple[str, ...]:
        """The standard's (comments typed I), then the conditions the Vista reports
        (typed E), as code and text, in the order sent."""
        return tuple(
            _condition(c.text(4)) if c.value(5) == _CONDITION else c.text(4)
            for c in group.comments
            if c.value(5) in ("I", _CONDITION) and c.text(4)
        )

    def comments(self, group: ResultRecords) -> tuple[Comment, ...]:
        """The standard's, without the reagent information read as the result's reagent
        use; a condition written as its flag is."""
        kept = replace(group, comments=tuple(c for c in group.comments if not _reagent_code(c)))
        return tuple(
            replace(c, text=_condition(c.text)) if c.kind == _CONDITION else c
            for c in super().comments(kept)
        )

    def reagents(self, context: Context, group: ResultRecords, code: str) -> tuple[ReagentUse, ...]:
        """R001 the lot, R002 its expiry, R003 the cartridge's number; a code met again
        opens the next reagent. One without a lot is left out, and said."""
        sets: list[dict[str, Record]] = []
        for comment in group.comments:
            which = _reagent_code(comment)
            if which and (not sets or which in sets[-1]):
                sets.append({})
            if which:
                sets[-1][which] = comment
        name = f"Dimension Vista {group.result.value(3, _ABBREVIATION).strip() or code} reagent"
        uses = []
        for found in sets:
            lot = found[_LOT].value(4, 1).strip() if _LOT in found else ""
            if not lot:
                for comment in found.values():
                    self._refuse(
                        field_name(comment, 4),
                        comment.text(4),
                        "is of a reagent without a lot (R001); left out",
                    )
                continue
            expiry = found.get(_EXPIRY)
            number = found.get(_NUMBER)
            uses.append(
                ReagentUse(
                    reagent=name,
                    lot=lot,
                    test_code=self.lab_code(code),
                    expiry=self.read_date(expiry.value(4, 1), field_name(expiry, 4))
                    if expiry is not None
                    else None,
                    serial=number.value(4, 1).strip() if number is not None else "",
                )
            )
        return tuple(uses)
