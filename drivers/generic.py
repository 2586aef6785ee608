"""The generic CLSI LIS2-A2 (E1394) reading, for any analyser without a driver of its own."""

from __future__ import annotations

from drivers.base import Driver, MessageReading, ReadResult, parse_timestamp
from middleware.astm.records import Record


def test_code(record: Record, field: int) -> str:
    """The analyser's own test code: the manufacturer's component (4th) of the universal
    test id, else its first non-empty component."""
    components = record.components(field)
    if len(components) > 3 and components[3]:
        return components[3]
    return next((c for c in components if c), "")


def value_text(record: Record, field: int) -> str:
    """A measurement as text: the value alone, or all its parts when several are given."""
    components = record.components(field)
    if not any(components[1:]):
        return components[0] if components else ""
    return record.text(field)


class GenericDriver(Driver):
    name = "generic"

    def read(self, records: tuple[Record, ...]) -> MessageReading:
        sender: str | None = None
        control_message = False
        patient_id = ""
        specimen_id = ""
        control_order = False
        results: list[ReadResult] = []
        for record in records:
            kind = record.type
            if kind == "H":
                sender = record.text(5) or None
                control_message = record.value(12) == "Q"
            elif kind == "P":
                patient_id = record.value(3) or record.value(4) or record.value(5)
                specimen_id = ""
                control_order = False
            elif kind == "O":
                specimen_id = record.value(3) or record.value(4)
                control_order = record.value(12) == "Q"
            elif kind == "R":
                flags = tuple(rep[0] for rep in record.repeats(7) if rep and rep[0])
                results.append(
                    ReadResult(
                        specimen_id=specimen_id,
                        test_code=test_code(record, 3),
                        value=value_text(record, 4),
                        units=record.value(5),
                        reference_range=record.value(6),
                        flags=flags,
                        status=record.value(9),
                        completed_at=parse_timestamp(record.value(13)),
                        control=control_message or control_order,
                        patient_id=patient_id,
                        sequence=record.value(2),
                    )
                )
        return MessageReading(sender, results)
