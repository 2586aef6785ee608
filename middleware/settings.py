"""Daemon configuration: a YAML file, overridden by ``MIDDLEWARE_*`` environment variables.

``MIDDLEWARE_DATABASE_URL`` and ``MIDDLEWARE_STATE_DIR`` override their keys; nested keys
use a double underscore (``MIDDLEWARE_LOG__LEVEL``, ``MIDDLEWARE_LOG__FORMAT``) and lists
are given as JSON (``MIDDLEWARE_INSTRUMENTS='[...]'``). Paths in the file are relative to it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

import drivers
from middleware.astm.frames import FrameTolerances
from middleware.hl7.results import CatalogEntry, PerformingLab, Sender
from middleware.yamlfile import FileError, describe, line_of, read_mapping


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


class TlsConfig(BaseModel):
    """TLS on a connection (D5): to or from the LIS, to or from an analyser."""

    model_config = ConfigDict(extra="forbid")

    ca_file: Path | None = None
    """Certificates the peer's must chain to; the system's when not given."""
    cert_file: Path | None = None
    """Our certificate (a server's; a client's for mutual TLS)."""
    key_file: Path | None = None
    server_name: str | None = None
    """The name the server's certificate must carry (the host connected to by default)."""
    require_client_certificate: bool = False
    """For a server: the peer must show a certificate that chains to ca_file."""

    @model_validator(mode="after")
    def _pairs(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.require_client_certificate and self.ca_file is None:
            raise ValueError("require_client_certificate needs ca_file")
        return self


def _networks(value: list[str]) -> list[str]:
    """Addresses or networks (CIDR) as written, each checked."""
    import ipaddress

    for item in value:
        ipaddress.ip_network(item, strict=False)  # a ValueError names what is wrong
    return value


def _zone_name(value: str | None) -> str | None:
    """An IANA zone name this host knows, or None."""
    if value is not None:
        from zoneinfo import ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
    return value


class WorklistConfig(BaseModel):
    """An analyser that takes a downloaded worklist: orders are sent to it as they come."""

    model_config = ConfigDict(extra="forbid")

    tests: list[str] = Field(min_length=1)
    """The laboratory's codes of the tests it runs: orders for them are sent to it (in its
    own codes, after its test map), each with only the tests it runs."""


class InstrumentConfig(BaseModel):
    """One analyser connection."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    driver: str = "auto"
    """A driver's name, or auto: the driver each message's sender (or layout) names."""
    transport: Literal["tcp-server", "tcp-client", "serial"]
    protocol: Literal["astm", "hl7"] | None = None
    """What the analyser speaks: ASTM (E1381 link), or HL7 over MLLP. By default, the
    driver's (an HL7 driver speaks HL7); with ``driver: auto``, told from each
    connection's first bytes on a ``tcp-server`` (:attr:`sniffs`), else ASTM."""
    host: str = "0.0.0.0"
    port: int | None = Field(None, ge=0, le=65535)
    serial: SerialLine | None = None
    tolerances: Tolerances = Tolerances()
    reply_timeout: float | None = Field(None, gt=0)
    frame_timeout: float | None = Field(None, gt=0)
    contention_backoff: float | None = Field(None, gt=0)
    """How long the middleware waits to bid again after its ENQ crossed the analyser's;
    E1381's 20 s by default."""
    test_map: dict[str, str] = {}
    control_pattern: str | None = None
    encoding: str = "latin-1"
    timezone: str | None = None
    """IANA name (Europe/Paris) of the analyser's clock; the laboratory's zone by default."""
    enabled: bool = True
    connections: Literal["newest", "all"] = "newest"
    """tcp-server: when a second connection arrives, ``newest`` closes the older one (an
    analyser reconnecting while its old socket is half open); ``all`` serves each one
    (modules behind one port). Each connection has its own pipeline either way."""
    max_frame_bytes: int = Field(1 << 20, ge=256, le=1 << 30)
    max_message_bytes: int = Field(8 << 20, ge=1024, le=1 << 30)
    """Larger frames and messages are refused (NAK) and kept raw."""
    tls: TlsConfig | None = None
    """TLS on the link (D5). A tcp-server shows cert_file and key_file, and checks the
    analyser's certificate with require_client_certificate; a tcp-client checks the
    certificate of the analyser (or its terminal server) it connects to."""
    allow: list[str] = []
    """tcp-server: the addresses or networks (CIDR) the analyser may connect from; any
    when empty."""
    worklist: WorklistConfig | None = None
    """Orders from the LIS sent to the analyser as they arrive (download); without it the
    analyser asks for them (host query)."""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        return _zone_name(value)

    @field_validator("driver")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if value != drivers.AUTO and value not in drivers.names():
            known = ", ".join([drivers.AUTO, *drivers.names()])
            raise ValueError(f"unknown driver {value!r}; known: {known}")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        ascii_bytes = bytes(range(128))
        ascii_text = ascii_bytes.decode("ascii")
        try:
            # The pipeline decodes with errors="replace" and encodes answers strictly.
            same = (
                ascii_bytes.decode(value, errors="replace") == ascii_text
                and ascii_text.encode(value) == ascii_bytes
            )
        except LookupError:  # unknown, or not a text codec (hex, rot13)
            raise ValueError(f"unknown encoding {value!r}") from None
        except ValueError:  # idna, undefined: they refuse the pipeline's use
            same = False
        if not same:
            # Records are split on ASCII delimiters: a codec that reads ASCII otherwise
            # (utf-16, EBCDIC) cannot carry ASTM text.
            raise ValueError(f"encoding {value!r} does not read and write ASCII as ASCII")
        return value

    @field_validator("control_pattern")
    @classmethod
    def _valid_pattern(cls, value: str | None) -> str | None:
        import re

        if value is not None:
            # the driver compiles it when the instrument starts: refused here instead
            try:
                re.compile(value)
            except (re.error, OverflowError) as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
            except RecursionError:
                raise ValueError("not a valid regular expression: nested too deeply") from None
        return value

    @field_validator("reply_timeout", "frame_timeout", "contention_backoff")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        import math

        # pydantic reads "inf" and 1e999 as an infinite float, a timer that never fires
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number of seconds")
        return value

    @property
    def driver_options(self) -> drivers.DriverOptions:
        """What this instrument's configuration changes in its driver."""
        return drivers.DriverOptions(
            test_map=dict(self.test_map), control_pattern=self.control_pattern
        )

    @property
    def zone(self) -> ZoneInfo | None:
        """The analyser's clock's zone (the laboratory's when it names none: the settings
        fill it in); None for the host's."""
        return ZoneInfo(self.timezone) if self.timezone else None

    @property
    def sniffs(self) -> bool:
        """Whether each connection's first bytes choose its protocol: a port analysers
        connect to, no protocol or driver naming one, and no worklist (which the daemon
        sends unasked, so it must know the protocol before the analyser speaks)."""
        return (
            self.protocol is None
            and self.driver == drivers.AUTO
            and self.transport == "tcp-server"
            and self.worklist is None
        )

    @property
    def speaks(self) -> str:
        """The protocol in force: the one configured, else the driver's; ``auto`` when
        each connection's first bytes tell."""
        if self.sniffs:
            return "auto"
        return self.protocol or drivers.protocol(self.driver)

    @model_validator(mode="after")
    def _protocol_fits(self) -> InstrumentConfig:
        driver_speaks = drivers.protocol(self.driver)
        named = self.driver != drivers.AUTO
        if self.protocol is not None and named and self.protocol != driver_speaks:
            raise ValueError(
                f"driver {self.driver} reads {driver_speaks.upper()}, "
                f"not the protocol {self.protocol} configured"
            )
        if self.speaks == "hl7" and self.transport == "serial":
            raise ValueError("an HL7 analyser connects over TCP (MLLP): tcp-server or tcp-client")
        if self.speaks == "hl7" and self.worklist is not None:
            raise ValueError("worklist: orders are sent to analysers speaking ASTM only")
        return self

    @field_validator("allow")
    @classmethod
    def _allow_networks(cls, value: list[str]) -> list[str]:
        return _networks(value)

    @model_validator(mode="after")
    def _transport_needs(self) -> InstrumentConfig:
        if self.transport in ("tcp-server", "tcp-client") and self.port is None:
            raise ValueError(f"transport {self.transport} needs a port")
        if self.transport == "serial" and self.serial is None:
            raise ValueError("transport serial needs a serial section (port, baudrate...)")
        if self.tls is not None and self.transport == "serial":
            raise ValueError("tls is for a TCP link, not transport serial")
        if self.tls is not None and self.transport == "tcp-server" and self.tls.cert_file is None:
            raise ValueError("tls on a tcp-server needs cert_file and key_file: it serves")
        if self.allow and self.transport != "tcp-server":
            raise ValueError(f"allow lists who may connect to a tcp-server, not {self.transport}")
        return self


class LogConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    """``auto``: readable lines on a terminal, JSON otherwise (under systemd, to a file)."""


class EventsConfig(BaseModel):
    """Events published to an MQTT broker (docs/events.md)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^mqtts?://")
    """``mqtt://[user[:password]@]host[:port]``, or ``mqtts://`` for TLS (port 8883)."""
    prefix: str = Field(default="lis-middleware", min_length=1, max_length=200)
    """Topics begin with it; no wildcard characters."""
    client_id: str | None = Field(default=None, min_length=1, max_length=200)
    """The MQTT client id; the daemon's node name by default."""
    qos: Literal[0, 1] = 1
    queue_limit: int = Field(default=1000, ge=1, le=1_000_000)
    """Events waiting while the broker is slow or away; more are dropped and counted."""
    tls: TlsConfig | None = None
    """For ``mqtts://``: whose certificates the broker's must chain to, ours if it asks."""

    @field_validator("prefix")
    @classmethod
    def _plain_topic(cls, value: str) -> str:
        if any(c in value for c in "+#\x00") or value.startswith("/") or value.endswith("/"):
            raise ValueError("prefix: topic levels without +, # or a leading or trailing /")
        return value

    @model_validator(mode="after")
    def _address(self) -> EventsConfig:
        from urllib.parse import urlsplit

        try:
            address = urlsplit(self.url)
            address.port  # noqa: B018 - a port that is not a number raises here
        except ValueError as exc:
            raise ValueError(f"url: {exc}") from None
        if not address.hostname:
            raise ValueError("url: no broker host")
        if self.tls is not None and address.scheme != "mqtts":
            raise ValueError("tls goes with an mqtts:// url")
        return self


class ApiConfig(BaseModel):
    """The status page and the control API: who may use them is checked for every request
    (users and roles, docs/operations.md), so they may listen beyond the loopback."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    """The address listened on: a loopback address unless people reach the status page
    from other machines; then with ``tls``."""
    port: int = Field(default=8470, ge=0, le=65535)
    allowed_hosts: list[str] = ["127.0.0.1", "localhost", "::1"]
    """Names a request's Host header may give (with any port); ``host`` is always one.
    Other names are refused, so a web page cannot reach the API by DNS rebinding."""
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    """Larger request bodies are refused (413) before they are read."""
    tls: TlsConfig | None = None
    """HTTPS (D5): cert_file and key_file shown to browsers and clients; the session
    cookie is then sent over HTTPS only."""
    session_key_file: Path | None = None
    """The key session cookies are signed with; ``state_dir/session.key`` by default,
    made at first use. Daemons serving one lab behind one name share it."""
    session_idle_minutes: float = Field(default=15, gt=0, le=24 * 60)
    """A session not used for this long ends."""
    session_hours: float = Field(default=12, gt=0, le=7 * 24)
    """A session ends this long after its login, used or not."""

    @field_validator("host")
    @classmethod
    def _an_address(cls, value: str) -> str:
        import ipaddress

        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", value):
                raise ValueError(f"{value!r} is neither an IP address nor a host name") from None
        return value

    @field_validator("tls")
    @classmethod
    def _serves(cls, value: TlsConfig | None) -> TlsConfig | None:
        if value is not None and value.cert_file is None:
            raise ValueError("api.tls needs cert_file and key_file: the API serves")
        return value


class BackoffConfig(BaseModel):
    """Waits between attempts to reach the LIS: base, times multiplier after each failure,
    at most ceiling, each shortened or lengthened at random by up to jitter (a fraction)."""

    model_config = ConfigDict(extra="forbid")

    base: float = Field(default=1.0, gt=0, le=3600)
    multiplier: float = Field(default=2.0, ge=1, le=10)
    ceiling: float = Field(default=60.0, gt=0, le=3600)
    jitter: float = Field(default=0.2, ge=0, le=1)


class LisTestConfig(BaseModel):
    """How the LIS knows one of the laboratory's tests."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200)
    """Sent with the code (OBX-3's text)."""
    code: str = Field(default="", max_length=100)
    """The LIS's code for it (a LOINC code, say) when not the laboratory's."""
    coding_system: str = Field(default="L", min_length=1, max_length=20)
    """``LN`` for LOINC, ``L`` for a local code (HL7 table 0396)."""
    method: str = Field(default="", max_length=200)
    """The observation method (OBX-17)."""


class PerformingLabConfig(BaseModel):
    """The laboratory that produced the results (OBX-23 to OBX-25, HL7 v2.5.1)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    street: str = Field(default="", max_length=200)
    city: str = Field(default="", max_length=100)
    postal_code: str = Field(default="", max_length=20)
    country: str = Field(default="", max_length=3)
    """ISO 3166 code (``FRA``)."""
    director_id: str = Field(default="", max_length=100)
    director_family_name: str = Field(default="", max_length=100)
    director_given_name: str = Field(default="", max_length=100)


class LisConfig(BaseModel):
    """The LIS results are delivered to, over MLLP; no outbox is kept without it."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    ack_timeout: float = Field(default=30.0, gt=0, le=3600)
    """Seconds to wait for the LIS's ACK of a message before sending it again."""
    on_error: Literal["stop", "dead-letter"] = "stop"
    """What an AE or AR answer does: stop that specimen's queue for a person (default), or
    set the message aside as a dead letter and go on."""
    backoff: BackoffConfig = BackoffConfig()
    version: Literal["2.5.1", "2.3.1"] = "2.5.1"
    """HL7 version of the results sent (docs/hl7.md says what 2.3.1 leaves out)."""
    message_type: Literal["ORU^R01", "OUL^R22"] = "ORU^R01"
    """ORU^R01, or OUL^R22 (IHE laboratory, v2.5.1 only) for a LIS that takes it."""
    reagent_lots: Literal["note", "observation"] = "note"
    """How an ORU^R01 carries a result's reagent lots: an NTE after it, or an OBX of its
    own; OUL^R22 carries them in SID segments."""
    tests: dict[str, LisTestConfig] = {}
    """By laboratory test code: its name, the LIS's code and the method sent with it."""
    performing_laboratory: PerformingLabConfig | None = None
    """Named in each result (v2.5.1), for a LIS that reports it."""
    review_notice: Literal["note", "corrected"] = "note"
    """How a released result put under review by a later QC failure is told to the LIS:
    sent again as final with a note (NTE), or as corrected (OBX-11 C) with the note."""
    tls: TlsConfig | None = None
    """TLS to the LIS, with its certificate checked; plain TCP without it."""
    orders_tls: TlsConfig | None = None
    """TLS on the orders port: needs cert_file and key_file."""
    orders_allow: list[str] = []
    """Addresses or networks (CIDR) the LIS may send orders from; any when empty."""
    orders_host: str = "0.0.0.0"
    orders_port: int | None = Field(default=None, ge=0, le=65535)
    """Where the LIS sends orders (ORM^O01, OML^O21/O33) over MLLP; none taken without it."""
    sending_application: str = Field(default="LIS-MIDDLEWARE", min_length=1, max_length=180)
    sending_facility: str = Field(default="LAB", min_length=1, max_length=180)
    receiving_application: str = Field(default="LIS", min_length=1, max_length=180)
    receiving_facility: str = Field(default="LAB", min_length=1, max_length=180)

    @field_validator("orders_allow")
    @classmethod
    def _orders_networks(cls, value: list[str]) -> list[str]:
        return _networks(value)

    def sender(self) -> Sender:
        """What the results are built with: who sends to whom, and how."""
        lab = self.performing_laboratory
        return Sender(
            application=self.sending_application,
            facility=self.sending_facility,
            receiving_application=self.receiving_application,
            receiving_facility=self.receiving_facility,
            version=self.version,
            message_type=self.message_type,
            review_status="C" if self.review_notice == "corrected" else "F",
            reagent_lots=self.reagent_lots,
            tests={
                code: CatalogEntry(t.name, t.code, t.coding_system, t.method)
                for code, t in self.tests.items()
            },
            performing_lab=PerformingLab(**lab.model_dump()) if lab else None,
        )

    @model_validator(mode="after")
    def _oul_version(self) -> LisConfig:
        if self.message_type == "OUL^R22" and self.version != "2.5.1":
            raise ValueError("message_type OUL^R22 is HL7 v2.5.1: version must be 2.5.1")
        return self

    @model_validator(mode="after")
    def _orders_tls(self) -> LisConfig:
        if self.orders_tls is not None and self.orders_tls.cert_file is None:
            raise ValueError("orders_tls needs cert_file and key_file: the orders port serves")
        return self


class RetentionConfig(BaseModel):
    """How many years each kind of record is kept before ``purge`` may delete it (D9):
    at least what the regulations ask, and the audit log as long as the longest."""

    model_config = ConfigDict(extra="forbid")

    patient_results: int = Field(default=5, ge=5, le=100)
    """Patient results, with their decisions, specimens and reagent lots."""
    chronological_register: int = Field(default=10, ge=10, le=100)
    """The chronological register: raw transmissions, messages, quarantine, the messages
    sent to the LIS and their log."""
    qc: int = Field(default=5, ge=3, le=100)
    """Control results, QC evaluations, corrective actions, reviews, limits, QC events."""
    audit: int = Field(default=10, ge=1, le=100)
    """The audit log and the rules put in force."""

    @model_validator(mode="after")
    def _audit_longest(self) -> RetentionConfig:
        longest = max(self.patient_results, self.chronological_register, self.qc)
        if self.audit < longest:
            raise ValueError(
                f"audit ({self.audit} years) must be kept at least as long as the longest "
                f"other kind ({longest} years)"
            )
        return self


class ArchiveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key_file: Path | None = None
    """The key archive manifests are signed with (HMAC-SHA256); ``state_dir/archive.key``,
    made on first use, when not given. Keep a copy apart from the archives."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MIDDLEWARE_", env_nested_delimiter="__", extra="forbid"
    )

    state_dir: Path = Path("state")
    database_url: str | None = None
    node_name: str | None = Field(None, min_length=1, max_length=200)
    """This daemon's name among those sharing one database (the host name by default)."""
    lease_seconds: float = Field(15.0, ge=1, le=3600)
    """An instrument whose daemon has not renewed its lease for this long may be taken
    over by another daemon on the same database."""
    database_lock_timeout: float = Field(10.0, gt=0, le=3600)
    """Seconds a write waits for a lock held elsewhere; then it fails and the analyser's
    frame is refused (NAK), to be sent again, rather than answered late."""
    rules_dir: Path | None = None
    """The laboratory's rule files; none loaded when not given."""
    log: LogConfig = LogConfig()
    api: ApiConfig | None = None
    """The control API (rules reload, corrective actions); off unless configured."""
    instruments: list[InstrumentConfig] = []
    lis: LisConfig | None = None
    """Where released results go; without it nothing is queued for a LIS."""
    retention: RetentionConfig = RetentionConfig()
    """Years each kind of record is kept (``purge``)."""
    archive: ArchiveConfig = ArchiveConfig()
    events: EventsConfig | None = None
    """The MQTT broker events are published to; none when not given."""
    figures_interval: float = Field(5.0, gt=0, le=3600)
    """Seconds between readings of the store's figures (outbox, holds, QC states) for
    the metrics and the events."""
    timezone: str | None = None
    """IANA name (Europe/Paris) of the laboratory's zone: its calendar says whether a
    reagent lot had expired and what "today" is on the pages, and analysers' clocks are
    in it unless an instrument names its own. The host's local zone by default."""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        return _zone_name(value)

    @property
    def zone(self) -> ZoneInfo | None:
        """The laboratory's zone; None for the host's."""
        return ZoneInfo(self.timezone) if self.timezone else None

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        seen: set[str] = set()
        for instrument in self.instruments:
            if instrument.name in seen:
                raise ValueError(f"instrument name {instrument.name!r} used twice")
            seen.add(instrument.name)
        return self

    @model_validator(mode="after")
    def _clocks_in_the_laboratory(self) -> Settings:
        # Every reader of an analyser's times takes its instrument's zone, so the
        # laboratory's is given there once rather than looked up beside each of them.
        for instrument in self.instruments:
            if instrument.timezone is None:
                instrument.timezone = self.timezone
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


#: Keys naming a file or directory, wherever they are in the file: relative to the file.
_PATHS = {"state_dir", "rules_dir", "key_file", "session_key_file", "ca_file", "cert_file"}


def _beside(value: Any, directory: Path) -> Any:
    """``value`` read from a file in ``directory``, each relative path of a ``_PATHS``
    key made relative to that directory: the file means the same from any working
    directory (a shell's, the service's)."""
    if isinstance(value, list):
        return [_beside(item, directory) for item in value]
    if not isinstance(value, dict):
        return value
    return {
        key: str(directory / item)
        if key in _PATHS and isinstance(item, str) and not Path(item).is_absolute()
        else _beside(item, directory)
        for key, item in value.items()
    }


def load_settings(path: Path | None) -> Settings:
    """Settings from the YAML file at ``path`` (if any) and the environment."""
    data: dict[str, Any] = {}
    root: yaml.Node | None = None
    if path is not None:
        try:
            data, root = read_mapping(path)
        except FileError as exc:
            raise ConfigError(str(exc)) from None
        data = _beside(data, path.parent)
    # BaseSettings would take _env_prefix, _secrets_dir... as options of its own: from the
    # file they are unknown keys like any other.
    problems = [
        f"{path}:{line_of(root, (key,))}: {key}: Extra inputs are not permitted"
        for key in data
        if key.startswith("_")
    ]
    try:
        settings = Settings(**{k: v for k, v in data.items() if not k.startswith("_")})
    except ValidationError as exc:
        problems += describe(exc, path, root)
    except SettingsError as exc:  # a MIDDLEWARE_* variable that is not valid JSON
        problems.append(f"environment: {exc}")
    if problems:
        raise ConfigError("\n".join(problems))
    return settings


__all__ = ["ConfigError", "InstrumentConfig", "Settings", "load_settings"]
