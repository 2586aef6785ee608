"""E1394 records: decode and encode H, P, O, R, C, Q, M, S and L records.

A record is a type letter and fields. Each field holds repeats, each repeat holds
components, each component is text with escape sequences already undone. Fields are
numbered as the standard numbers them: field 1 is the record type, so ``R.4`` (the
measurement value) is ``record.field(4)``.

The delimiters come from the H record (``H|\\^&``: field, repeat, component, escape);
analysers use others (a backtick or ``@`` as repeat), so nothing assumes the usual ones.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

RECORD_TYPES = frozenset("HPORCQMSL")

Component = str
Repeat = tuple[Component, ...]
Field = tuple[Repeat, ...]


class RecordError(ValueError):
    """A record that cannot be read; ``index`` is its position in the message (0-based)."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True, slots=True)
class Delimiters:
    field: str = "|"
    repeat: str = "\\"
    component: str = "^"
    escape: str = "&"

    def __post_init__(self) -> None:
        chars = (self.field, self.repeat, self.component, self.escape)
        if any(len(c) != 1 for c in chars):
            raise RecordError("each delimiter must be one character")
        if len(set(chars)) != 4:
            raise RecordError(f"delimiters must differ: {''.join(chars)!r}")
        if any(c in "\r\n" or c.isalnum() for c in chars):
            raise RecordError(f"unusable delimiter in {''.join(chars)!r}")

    @property
    def definition(self) -> str:
        """H.2 as written after the field delimiter, e.g. ``\\^&``."""
        return self.repeat + self.component + self.escape

    @classmethod
    def from_header(cls, line: str) -> Delimiters:
        """Read the delimiters from the start of an H record (``H|\\^&|...``)."""
        if len(line) < 5 or line[0] != "H":
            raise RecordError("an H record starts with H and four delimiter characters")
        field = line[1]
        end = line.find(field, 2)
        definition = line[2:] if end < 0 else line[2:end]
        d = _delimiters_from_definition(field, definition)
        return d if cls is Delimiters else cls(d.field, d.repeat, d.component, d.escape)


@functools.lru_cache(maxsize=64)
def _delimiters_from_definition(field: str, definition: str) -> Delimiters:
    # Cached: every message starts with an H record, nearly always with the same delimiters.
    # Some exports double the repeat backslash (H|\\^&); a repeated character is that.
    deduplicated = "".join(c for i, c in enumerate(definition) if i == 0 or c != definition[i - 1])
    if len(deduplicated) < 3:
        raise RecordError(f"H record delimiter definition too short: {definition!r}")
    return Delimiters(field, deduplicated[0], deduplicated[1], deduplicated[2])


DEFAULT_DELIMITERS = Delimiters()


@dataclass(frozen=True, slots=True)
class Record:
    """One E1394 record. ``fields[0]`` is the type, so ``fields[n - 1]`` is field n."""

    fields: tuple[Field, ...]

    @property
    def type(self) -> str:
        return self.fields[0][0][0]

    def field(self, n: int) -> Field:
        """Field n (1-based, as the standard numbers it); empty when absent."""
        if 1 <= n <= len(self.fields):
            return self.fields[n - 1]
        return (("",),)

    def repeats(self, n: int) -> Field:
        return self.field(n)

    def components(self, n: int, repeat: int = 0) -> Repeat:
        reps = self.field(n)
        return reps[repeat] if repeat < len(reps) else ("",)

    def value(self, n: int, component: int = 0, repeat: int = 0) -> str:
        """One component of one repeat of field n; an empty string when absent."""
        # Written out rather than through components(): drivers call it for every field
        # of every record, and the calls were a tenth of reading a message.
        fields = self.fields
        if 1 <= n <= len(fields):
            reps = fields[n - 1]
            if repeat < len(reps):
                comps = reps[repeat]
                if component < len(comps):
                    return comps[component]
        return ""

    def text(self, n: int) -> str:
        """Field n as a person reads it: components joined by ``^`` and repeats by ``\\``,
        trailing empty components and repeats dropped, escapes undone."""
        repeats = ["^".join(_trim(rep)) for rep in self.field(n)]
        return "\\".join(_trim(repeats))

    @classmethod
    def of(cls, record_type: str, *fields: str | Sequence[str]) -> Record:
        """Build a record from plain values: a string, or a list of components."""
        built: list[Field] = [((record_type,),)]
        for value in fields:
            if isinstance(value, str):
                built.append(((value,),))
            else:
                built.append((tuple(value),))
        return cls(tuple(built))


def _trim(items: Sequence[str]) -> list[str]:
    out = list(items)
    while out and out[-1] == "":
        out.pop()
    return out


# --- escapes ------------------------------------------------------------------------------

_ESCAPE_BODY = re.compile(r"([FSRE])|X((?:[0-9A-Fa-f]{2})+)")


def unescape(text: str, d: Delimiters) -> str:
    """Undo ``&F& &S& &R& &E&`` and ``&Xhh..&``; anything else stays as written."""
    esc = d.escape
    if esc not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    mapping = {"F": d.field, "S": d.component, "R": d.repeat, "E": esc}
    while i < n:
        c = text[i]
        if c == esc:
            end = text.find(esc, i + 1)
            if end > i:
                match = _ESCAPE_BODY.fullmatch(text, i + 1, end)
                if match:
                    if match.group(1):
                        out.append(mapping[match.group(1)])
                    else:
                        out.append(bytes.fromhex(match.group(2)).decode("latin-1"))
                    i = end + 1
                    continue
        out.append(c)
        i += 1
    return "".join(out)


def _needs_hex(c: str) -> bool:
    return c in "\r\n" or ord(c) < 0x20 or ord(c) == 0x7F


def escape(text: str, d: Delimiters) -> str:
    """Write delimiters and control characters inside content as escape sequences."""
    specials = {d.field: "F", d.component: "S", d.repeat: "R", d.escape: "E"}
    if not any(c in specials or _needs_hex(c) for c in text):
        return text
    out: list[str] = []
    for c in text:
        if c in specials:
            out.append(f"{d.escape}{specials[c]}{d.escape}")
        elif _needs_hex(c):
            out.append(f"{d.escape}X{ord(c):02X}{d.escape}")
        else:
            out.append(c)
    return "".join(out)


# --- one record ---------------------------------------------------------------------------


def decode_record(line: str, d: Delimiters = DEFAULT_DELIMITERS) -> Record:
    """Decode one record (no terminator). Raises RecordError when it is not a record."""
    if not line:
        raise RecordError("empty record")
    record_type = line[0].upper()
    if record_type not in RECORD_TYPES:
        raise RecordError(f"unknown record type {line[0]!r}")
    if len(line) > 1 and line[1] != d.field:
        raise RecordError(f"record type {line[0]!r} not followed by the field delimiter")
    raw_fields = line.split(d.field)
    repeat = d.repeat
    component = d.component
    escape = d.escape
    fields: list[Field] = [((record_type,),)]
    if record_type == "H" and len(raw_fields) > 1:
        # H.2 is the delimiter definition itself, kept as written; the rest may hold
        # anything, so each field is looked at on its own.
        fields.append(((raw_fields[1],),))
        del raw_fields[:2]
        plain = False
    else:
        del raw_fields[0]
        # The type letter and the field delimiter are neither, so this covers all fields.
        plain = escape not in line and repeat not in line
    if plain:
        # The usual record: no escapes, no repeats; most fields have no components either.
        fields += [
            (tuple(raw.split(component)),) if component in raw else ((raw,),) for raw in raw_fields
        ]
    else:
        # Each field read the cheapest way that is right for it: escapes undone only where
        # the escape character is, repeats and components split only where they occur.
        fields += [
            _unescaped_field(raw, d)
            if escape in raw
            else tuple([tuple(rep.split(component)) for rep in raw.split(repeat)])
            if repeat in raw
            else (tuple(raw.split(component)),)
            if component in raw
            else ((raw,),)
            for raw in raw_fields
        ]
    return Record(tuple(fields))


def _unescaped_field(raw: str, d: Delimiters) -> Field:
    return tuple(
        tuple([unescape(comp, d) for comp in rep.split(d.component)]) for rep in raw.split(d.repeat)
    )


def encode_record(record: Record, d: Delimiters = DEFAULT_DELIMITERS) -> str:
    parts: list[str] = [record.type]
    for position, fld in enumerate(record.fields[1:], start=2):
        if record.type == "H" and position == 2:
            parts.append(d.definition)
            continue
        parts.append(d.repeat.join(d.component.join(escape(c, d) for c in rep) for rep in fld))
    return d.field.join(parts)


# --- whole messages -----------------------------------------------------------------------

_SEPARATORS = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class DecodedMessage:
    """Records of one message, the delimiters used, and what could not be read."""

    records: tuple[Record, ...]
    delimiters: Delimiters
    errors: tuple[RecordError, ...]


def split_records(text: str) -> list[str]:
    """Record texts separated by CR, CR LF or LF; empty lines dropped."""
    return [line for line in _SEPARATORS.split(text) if line]


def decode_message(
    lines: Iterable[str] | str, delimiters: Delimiters | None = None
) -> DecodedMessage:
    """Decode records; an H record sets the delimiters for what follows it.

    A record that cannot be read is reported in ``errors`` and the rest are still read.
    """
    if isinstance(lines, str):
        lines = split_records(lines)
    d = delimiters or DEFAULT_DELIMITERS
    records: list[Record] = []
    errors: list[RecordError] = []
    for index, line in enumerate(lines):
        try:
            if line[:1] in ("H", "h"):
                d = Delimiters.from_header(line)
            records.append(decode_record(line, d))
        except RecordError as exc:
            errors.append(RecordError(f"record {index + 1}: {exc}", index))
    return DecodedMessage(tuple(records), d, tuple(errors))


def encode_message(records: Iterable[Record], delimiters: Delimiters | None = None) -> list[str]:
    """Encode records with the given delimiters (the usual ones by default)."""
    d = delimiters or DEFAULT_DELIMITERS
    return [encode_record(r, d) for r in records]
