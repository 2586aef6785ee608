"""Daemon configuration: a YAML file, overridden by ``MIDDLEWARE_*`` environment variables.

``MIDDLEWARE_DATABASE_URL``, ``MIDDLEWARE_STATE_DIR`` and ``MIDDLEWARE_LOG_LEVEL`` override
their keys; nested keys use a double underscore (``MIDDLEWARE_LOG__FORMAT``) and lists are
given as JSON (``MIDDLEWARE_INSTRUMENTS='[...]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

import drivers
from middleware.astm.frames import FrameTolerances
from middleware.yamlfile import FileError, describe, read_mapping


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the file, line and field."""


class SerialLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    port: str
    baudrate: int = Field(9600, gt=0)
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["none", "even", "odd", "mark", "space"] = "none"
    stopbits: float = 1

    @field_validator("stopbits")
    @classmethod
    def _stopbits(cls, value: float) -> float:
        if value not in (1, 1.5, 2):
            raise ValueError("stop bits must be 1, 1.5 or 2")
        return value

    xonxoff: bool = False
    rtscts: bool = False
    dsrdtr: bool = False


class Tolerances(BaseModel):
    model_config = ConfigDict(extra="forbid")

    long_frames: bool | None = None
    no_frame_numbers: bool | None = None
    no_checksum: bool | None = None
    line_feeds_in_text: bool | None = None
    records_span_frames: bool | None = None
    numbering_restarts: bool | None = None

    def over(self, base: FrameTolerances) -> FrameTolerances:
        values = {name: getattr(base, name) for name in FrameTolerances.names()}
        values.update({k: v for k, v in self.model_dump().items() if v is not None})
        return FrameTolerances(**values)


class InstrumentConfig(BaseModel):
    """One analyser connection."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    driver: str = "generic"
    transport: Literal["tcp-server", "tcp-client", "serial"]
    host: str = "0.0.0.0"
    port: int | None = Field(None, ge=0, le=65535)
    serial: SerialLine | None = None
    tolerances: Tolerances = Tolerances()
    reply_timeout: float | None = Field(None, gt=0)
    frame_timeout: float | None = Field(None, gt=0)
    test_map: dict[str, str] = {}
    control_pattern: str | None = None
    encoding: str = "latin-1"
    timezone: str | None = None
    """IANA name (Europe/Paris) of the analyser's clock; the host's local zone by default."""
    enabled: bool = True

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("driver")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if value not in drivers.names():
            raise ValueError(f"unknown driver {value!r}; known: {', '.join(drivers.names())}")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        return value

    @model_validator(mode="after")
    def _transport_needs(self) -> InstrumentConfig:
        if self.transport in ("tcp-server", "tcp-client") and self.port is None:
            raise ValueError(f"transport {self.transport} needs a port")
        if self.transport == "serial" and self.serial is None:
            raise ValueError("transport serial needs a serial section (port, baudrate...)")
        return self


class LogConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class ApiConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8470, ge=0, le=65535)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MIDDLEWARE_", env_nested_delimiter="__", extra="forbid"
    )

    state_dir: Path = Path("state")
    database_url: str | None = None
    rules_dir: Path | None = None
    """The laboratory's rule files; none loaded when not given."""
    log: LogConfig = LogConfig()
    api: ApiConfig | None = None
    """The control API (rules reload, corrective actions); off unless configured."""
    instruments: list[InstrumentConfig] = []

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        seen: set[str] = set()
        for instrument in self.instruments:
            if instrument.name in seen:
                raise ValueError(f"instrument name {instrument.name!r} used twice")
            seen.add(instrument.name)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file, which is given as init values.
        return (env_settings, init_settings)

    @property
    def database(self) -> str:
        from middleware.store.database import default_url

        return self.database_url or default_url(self.state_dir)


def load_settings(path: Path | None) -> Settings:
    """Settings from the YAML file at ``path`` (if any) and the environment."""
    data: dict[str, Any] = {}
    root: yaml.Node | None = None
    if path is not None:
        try:
            data, root = read_mapping(path)
        except FileError as exc:
            raise ConfigError(str(exc)) from None
        for key in ("state_dir", "rules_dir"):
            value = data.get(key)
            if isinstance(value, str) and not Path(value).is_absolute():
                data[key] = str(path.parent / value)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError("\n".join(describe(exc, path, root))) from None


__all__ = ["ConfigError", "InstrumentConfig", "Settings", "load_settings"]
