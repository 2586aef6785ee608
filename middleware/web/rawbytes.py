"""Raw bytes as a person reads them when a message was refused: caret notation (what a
serial terminal shows: STX is ^B, CR is ^M) and a hex dump with offsets."""

from __future__ import annotations


def caret(data: bytes) -> str:
    """Printable ASCII as is; control characters as ^@..^_ and ^?; other bytes as \\xNN.
    A CR (^M) also ends the line, as the records it ends do."""
    out: list[str] = []
    for byte in data:
        if byte < 0x20:
            out.append("^" + chr(byte + 0x40))
            if byte == 0x0D:
                out.append("\n")
        elif byte == 0x7F:
            out.append("^?")
        elif byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02X}")
    return "".join(out)


def hexdump(data: bytes, width: int = 16) -> str:
    """Offset, bytes in hex, and the printable ones, ``width`` bytes a line."""
    lines = []
    for start in range(0, len(data), width):
        chunk = data[start : start + width]
        hexes = " ".join(f"{b:02X}" for b in chunk)
        shown = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{start:08X}  {hexes:<{width * 3 - 1}}  {shown}")
    return "\n".join(lines)
