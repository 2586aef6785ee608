"""HL7 v2 message text as segments, fields, repeats and components: our own small reader
for what analysers send, tolerant where they are sloppy and saying where they are wrong.

The delimiters are the message's own (MSH-1 and MSH-2). Segments are separated by CR, or
by LF or CR LF as files and logs have them. Fields are numbered as HL7 numbers them: in
MSH, field 1 is the field separator itself and field 2 the encoding characters. Escapes
(``\\F\\``, ``\\S\\``, ``\\T\\``, ``\\R\\``, ``\\E\\``, ``\\Xhh\\``, ``\\.br\\``) are undone in
each component; subcomponents stay joined by their delimiter. Nothing here raises on a
segment it cannot read: the segment is left out and the message says why, by number.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

#: A field: its repeats, each a tuple of components.
Field = tuple[tuple[str, ...], ...]

_EMPTY: Field = (("",),)
_SEPARATORS = re.compile(r"\r\n|\r|\n")
_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")


class Hl7Error(ValueError):
    """Text that is not an HL7 message at all (no MSH segment to start it)."""


@dataclass(frozen=True, slots=True)
class Encoding:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"


@dataclass(frozen=True, slots=True)
class Segment:
    name: str
    fields: tuple[Field, ...]
    """Field 1 first: ``fields[n - 1]`` is field n."""
    index: int = 0
    """Position in its message, 0 for MSH."""
    line: str = ""
    """The segment as written, escapes and all (what an answer repeats of a query)."""

    def field(self, n: int) -> Field:
        return self.fields[n - 1] if 1 <= n <= len(self.fields) else _EMPTY

    def components(self, n: int, repeat: int = 0) -> tuple[str, ...]:
        reps = self.field(n)
        return reps[repeat] if repeat < len(reps) else ("",)

    def value(self, n: int, component: int = 1, repeat: int = 0) -> str:
        """Component ``component`` (1-based, as HL7 numbers them) of a repeat of field n."""
        comps = self.components(n, repeat)
        return comps[component - 1] if 1 <= component <= len(comps) else ""

    def repeats(self, n: int) -> Field:
        return tuple(rep for rep in self.field(n) if any(rep))

    def text(self, n: int) -> str:
        """Field n as a person reads it: components joined by ``^``, repeats by ``~``."""
        shown = ["^".join(_trimmed(rep)) for rep in self.field(n)]
        return "~".join(_trimmed(shown))

    def where(self, n: int, component: int = 0) -> str:
        """``OBX 7, OBX-5`` (``OBX-5.2`` for a component): where a field is, for a person."""
        place = f"{self.name}-{n}" + (f".{component}" if component else "")
        return f"{self.name} {self.value(1)}, {place}" if self.name != "MSH" else place


@dataclass(frozen=True, slots=True)
class Hl7Message:
    segments: tuple[Segment, ...]
    encoding: Encoding
    problems: tuple[str, ...] = ()
    """Segments left out, each with its number and why."""

    @property
    def header(self) -> Segment:
        return self.segments[0]

    @property
    def control_id(self) -> str:
        """MSH-10."""
        return self.header.value(10)

    @property
    def message_type(self) -> str:
        """MSH-9 as ``ORU^R01``."""
        return "^".join(_trimmed(self.header.components(9)[:2]))

    @property
    def sender(self) -> str:
        """MSH-3 and MSH-4 (sending application and facility) as one text."""
        parts = (self.header.text(3), self.header.text(4))
        return " ".join(" ".join(p.split()) for p in parts if p.strip())

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]


def _trimmed(items: tuple[str, ...] | list[str]) -> list[str]:
    out = list(items)
    while out and out[-1] == "":
        out.pop()
    return out


#: Character sets of MSH-18 and how their bytes are read; the first repeat counts.
CHARSETS = {
    "": "utf-8",
    "ASCII": "ascii",
    "UNICODE": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "8859/1": "latin-1",
    "8859/15": "iso-8859-15",
}


def header_fields(text: str) -> list[str]:
    """The fields of a message's MSH as written, escapes and all, split on its own
    separator: MSH-n is at index n - 1 (from MSH-2 on). Read so, a message that cannot be
    parsed (or only its head) still gives its control id and character set. Empty when
    the text does not begin with an MSH."""
    lines = split_segments(text)
    first = lines[0] if lines else ""
    return first.split(first[3]) if first.startswith("MSH") and len(first) > 3 else []


_BOM = b"\xef\xbb\xbf"


def declared_charset(data: bytes) -> str:
    """MSH-18 as far as the first segment's bytes give it ("" when absent)."""
    fields = header_fields(data.removeprefix(_BOM).decode("ascii", errors="replace"))
    return fields[17].split("~")[0].strip().upper() if len(fields) > 17 else ""


def can_carry(text: str, encoding: str) -> bool:
    """Whether a character set (by its Python codec) can write every character of
    ``text``: what a peer's set cannot carry is left out or declared otherwise, never sent
    with a character replaced."""
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def encoding_of(data: bytes, fallback: str = "latin-1") -> str:
    """The codec of the character set a message's MSH-18 declares; ``fallback`` when it
    declares one we do not know. When it declares none and ``fallback`` is latin-1 (the
    default), UTF-8 for bytes beyond ASCII that are UTF-8 throughout (a byte order mark
    among them), as latin-1 text practically never is; else ``fallback``: a character set
    configured otherwise (GB 18030, whose short names may pass for UTF-8) is believed."""
    charset = declared_charset(data)
    if charset:
        return CHARSETS.get(charset, fallback)
    if codecs.lookup(fallback).name == "iso8859-1" and not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return fallback
        return "utf-8"
    return fallback


def decode_text(data: bytes, fallback: str = "latin-1") -> tuple[str, str]:
    """A message's bytes as text, in the character set :func:`encoding_of` finds, and what
    was wrong with them ("" when nothing)."""
    charset = declared_charset(data)
    encoding = encoding_of(data, fallback)
    # A byte order mark before the MSH is no part of the text, whatever MSH-18 says.
    data = data.removeprefix(_BOM)
    try:
        return data.decode(encoding), ""
    except UnicodeDecodeError as exc:
        problem = f"MSH-18: not {charset or encoding} text ({exc.reason}); read as latin-1"
        return data.decode("latin-1"), problem


def split_segments(text: str) -> list[str]:
    """A message's segments, whatever separates them (CR, LF, CR LF), without empty ones
    and past a byte order mark some senders put before the MSH, which would hide it."""
    return [line for line in _SEPARATORS.split(text.lstrip("\ufeff")) if line.strip()]


def read_encoding(msh: str) -> Encoding:
    """The delimiters an MSH segment's first characters declare."""
    if not msh.startswith("MSH") or len(msh) < 8:
        raise Hl7Error("an HL7 message begins with MSH and its delimiters (MSH|^~\\&)")
    field = msh[3]
    declared = msh[4:].split(field, 1)[0]
    if len(declared) < 4:
        raise Hl7Error(f"MSH-2 {declared!r} does not declare four encoding characters")
    chars = (field, *declared[:4])
    if len(set(chars)) != 5 or any(c.isalnum() or c in "\r\n " for c in chars):
        raise Hl7Error(f"unusable delimiters {''.join(chars)!r} in MSH")
    return Encoding(field, declared[0], declared[1], declared[2], declared[3])


def parse_message(text: str) -> Hl7Message:
    """Read a message; :class:`Hl7Error` when it does not begin with a usable MSH."""
    lines = split_segments(text)
    if not lines:
        raise Hl7Error("no segments")
    encoding = read_encoding(lines[0])
    segments: list[Segment] = []
    problems: list[str] = []
    for index, line in enumerate(lines):
        name = line[:3]
        if not _SEGMENT_NAME.fullmatch(name) or line[3:4] not in ("", encoding.field):
            problems.append(f"segment {index + 1}: {line[:20]!r} is not a segment; left out")
            continue
        if name == "MSH" and index > 0:
            problems.append(f"segment {index + 1}: a second MSH; left out")
            continue
        segments.append(_segment(name, line, encoding, index))
    return Hl7Message(tuple(segments), encoding, tuple(problems))


def _segment(name: str, line: str, enc: Encoding, index: int) -> Segment:
    raw = line[4:].split(enc.field) if len(line) > 4 else []
    if name == "MSH":
        # MSH-1 is the separator and MSH-2 the encoding characters, taken as they are.
        head: list[Field] = [((enc.field,),), ((raw[0] if raw else "",),)]
        return Segment(name, tuple(head + [_field(f, enc) for f in raw[1:]]), index, line)
    return Segment(name, tuple(_field(f, enc) for f in raw), index, line)


def _field(raw: str, enc: Encoding) -> Field:
    if not raw:
        return _EMPTY
    return tuple(
        tuple(unescape(c, enc) for c in rep.split(enc.component))
        for rep in raw.split(enc.repetition)
    )


_HEX = re.compile(r"X((?:[0-9A-Fa-f]{2})+)")


def unescape(text: str, enc: Encoding = Encoding()) -> str:
    """A component's text with HL7's escapes undone; an escape not understood stays."""
    e = enc.escape
    if e not in text:
        return text
    plain = {
        "F": enc.field,
        "S": enc.component,
        "T": enc.subcomponent,
        "R": enc.repetition,
        "E": e,
        ".br": "\n",
        "H": "",
        "N": "",
    }
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        end = text.find(e, i + 1) if char == e else -1
        if end < 0:
            out.append(char)
            i += 1
            continue
        body = text[i + 1 : end]
        hex_digits = _HEX.fullmatch(body)
        if body in plain:
            out.append(plain[body])
        elif hex_digits:
            # A NUL can be kept in no text column (PostgreSQL refuses it): shown as such.
            decoded = bytes.fromhex(hex_digits.group(1)).decode("latin-1")
            out.append(decoded.replace("\x00", "\ufffd"))
        else:
            out.append(text[i : end + 1])
        i = end + 1
    return "".join(out)
