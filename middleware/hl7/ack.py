"""Reading the LIS's answer to a message: the acknowledgment code and the control id it
names (MSA-1, MSA-2), with python-hl7."""

from __future__ import annotations

from dataclasses import dataclass

import hl7

from middleware.hl7.segments import split_segments

#: MSA-1 codes that accept a message (original and enhanced acknowledgment modes).
ACCEPTED = frozenset({"AA", "CA"})
#: Codes that refuse it: an error in the message (AE, CE) or a rejection (AR, CR).
REFUSED = frozenset({"AE", "AR", "CE", "CR"})


@dataclass(frozen=True, slots=True)
class Answer:
    code: str
    """MSA-1, upper case."""
    control_id: str
    """MSA-2: the control id of the message it answers."""
    text: str = ""
    """MSA-3 and the ERR segments, for a person."""

    @property
    def accepted(self) -> bool:
        return self.code in ACCEPTED


def read_answer(message: str) -> Answer:
    """The answer a message holds; ValueError, saying why, when it is not an answer."""
    try:
        # CR LF between segments (as many LISes write) or LF alone, no empty segment, and
        # no byte order mark before the MSH (passed over, its message went again for ever).
        parsed = hl7.parse("\r".join(split_segments(message)))
        msa = parsed.segment("MSA")
    # python-hl7 asserts as well as raising on some malformed text.
    except (KeyError, IndexError, ValueError, AssertionError, hl7.ParseException) as exc:
        raise ValueError(f"not an HL7 acknowledgment: {exc!s:.200}") from None
    code = str(msa(1)).strip().upper() if len(msa) > 1 else ""
    if code not in ACCEPTED | REFUSED:
        raise ValueError(f"MSA-1 {code!r} is no acknowledgment code")
    control_id = str(msa(2)).strip() if len(msa) > 2 else ""
    parts = [str(msa(3)).strip()] if len(msa) > 3 and str(msa(3)).strip() else []
    for segment in parsed:
        if len(segment) and str(segment[0]) == "ERR":
            parts.append(str(segment)[:500])
    return Answer(code, control_id, "; ".join(parts))
