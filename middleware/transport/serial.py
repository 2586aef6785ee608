"""ASTM over an RS-232 line (pyserial), reopened when the port goes away."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

import serial
import serial_asyncio_fast

from middleware.astm.link import LinkSettings
from middleware.transport.channel import EventHandler
from middleware.transport.reconnect import Backoff, ChannelCallback, Reconnecting

_PARITY = {
    "none": serial.PARITY_NONE,
    "even": serial.PARITY_EVEN,
    "odd": serial.PARITY_ODD,
    "mark": serial.PARITY_MARK,
    "space": serial.PARITY_SPACE,
}


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """Line settings; the defaults (9600 8N1, no flow control) are the analysers' usual."""

    port: str
    baudrate: int = 9600
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["none", "even", "odd", "mark", "space"] = "none"
    stopbits: float = 1
    xonxoff: bool = False
    rtscts: bool = False
    dsrdtr: bool = False

    def __post_init__(self) -> None:
        if self.baudrate <= 0:
            raise ValueError(f"invalid baud rate {self.baudrate}")
        if self.bytesize not in (5, 6, 7, 8):
            raise ValueError(f"invalid data bits {self.bytesize}")
        if self.parity not in _PARITY:
            raise ValueError(f"invalid parity {self.parity!r}")
        if self.stopbits not in (1, 1.5, 2):
            raise ValueError(f"invalid stop bits {self.stopbits}")

    def pyserial_options(self) -> dict[str, Any]:
        return {
            "baudrate": self.baudrate,
            "bytesize": self.bytesize,
            "parity": _PARITY[self.parity],
            "stopbits": self.stopbits,
            "xonxoff": self.xonxoff,
            "rtscts": self.rtscts,
            "dsrdtr": self.dsrdtr,
        }


async def open_serial(line: SerialSettings) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await serial_asyncio_fast.open_serial_connection(
        url=line.port, **line.pyserial_options()
    )


class SerialConnection(Reconnecting):
    """Serves one serial line; if the port fails or vanishes it is opened again."""

    open_errors = (OSError, serial.SerialException)

    def __init__(
        self,
        line: SerialSettings,
        settings: LinkSettings | None = None,
        handler: EventHandler | None = None,
        *,
        name: str | None = None,
        backoff: Backoff | None = None,
        on_connect: ChannelCallback | None = None,
    ) -> None:
        super().__init__(
            name or line.port, settings, handler, backoff=backoff, on_connect=on_connect
        )
        self.line = line

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await open_serial(self.line)

    def describe(self) -> dict[str, object]:
        return {"port": self.line.port, "baudrate": self.line.baudrate}
