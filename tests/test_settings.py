"""Daemon configuration: YAML plus environment, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

import drivers
from middleware.astm.frames import FrameTolerances
from middleware.daemon import link_settings
from middleware.settings import ConfigError, load_settings

GOOD = """\
state_dir: data
instruments:
  - name: xn-1
    transport: tcp-server
    port: 5001
  - name: ia-1
    transport: serial
    serial:
      port: /dev/ttyUSB0
      baudrate: 19200
      parity: even
      bytesize: 7
    frame_timeout: 15
    contention_backoff: 5
    tolerances:
      long_frames: true
    test_map:
      TSH II: TSH
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "middleware.yaml"
    path.write_text(text)
    return path


def test_yaml_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIDDLEWARE_DATABASE_URL", raising=False)
    settings = load_settings(write(tmp_path, GOOD))
    assert settings.state_dir == tmp_path / "data"  # relative to the file
    assert settings.database == f"sqlite:///{(tmp_path / 'data' / 'middleware.db').resolve()}"
    serial = settings.instruments[1]
    assert serial.serial is not None and serial.serial.parity == "even"
    assert serial.test_map == {"TSH II": "TSH"}


def test_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIDDLEWARE_DATABASE_URL", "postgresql://lab@db/middleware")
    monkeypatch.setenv("MIDDLEWARE_LOG__LEVEL", "debug")
    settings = load_settings(write(tmp_path, GOOD + "database_url: sqlite:///x.db\n"))
    assert settings.database == "postgresql://lab@db/middleware"
    assert settings.log.level == "debug"


def test_link_settings_combine_driver_and_configuration(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD))
    config = settings.instruments[1]
    link = link_settings(config, drivers.get(config.driver))
    assert link.frame_timeout == 15 and link.reply_timeout == 15
    assert link.host_contention_backoff == 5
    assert (
        link_settings(settings.instruments[0], drivers.get("generic")).host_contention_backoff == 20
    )
    assert link.tolerances == FrameTolerances(long_frames=True)
    assert link.max_message_bytes == 8 << 20


def test_analysers_clocks_are_in_the_laboratory_zone_unless_they_name_their_own(
    tmp_path: Path,
) -> None:
    text = GOOD.replace("state_dir: data\n", "state_dir: data\ntimezone: Pacific/Auckland\n")
    text += "  - {name: old-1, transport: tcp-server, port: 5003, timezone: UTC}\n"
    settings = load_settings(write(tmp_path, text))
    assert str(settings.zone) == "Pacific/Auckland"
    assert [str(i.zone) for i in settings.instruments] == ["Pacific/Auckland"] * 2 + ["UTC"]
    host = load_settings(write(tmp_path, GOOD))
    assert host.zone is None and [i.zone for i in host.instruments] == [None, None]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "instruments:\n  - name: a\n    transport: tcp-server\n",
            ":2: instruments.0: Value error, transport tcp-server needs a port",
        ),
        (
            "instruments:\n  - name: a\n    transport: carrier-pigeon\n    port: 1\n",
            ":3: instruments.0.transport",
        ),
        (
            "instruments:\n  - name: a\n    transport: serial\n"
            "    serial:\n      port: /dev/x\n      parity: sideways\n",
            ":6: instruments.0.serial.parity",
        ),
        (
            "instruments:\n  - {name: a, transport: tcp-server, port: 1}\n"
            "  - {name: a, transport: tcp-server, port: 2}\n",
            "used twice",
        ),
        ("log:\n  level: loud\n", ":2: log.level"),
        ("timezone: Mars/Olympus\n", ":1: timezone: Value error, unknown time zone"),
        ("colour: blue\n", ":1: colour: Extra inputs are not permitted"),
        ("instruments: [\n", "not valid YAML"),
        ("- just\n- a list\n", ":1: the file must be a mapping"),
        (
            "lis:\n  host: h\n  port: 1\n  message_type: OUL^R22\n  version: 2.3.1\n",
            "message_type OUL^R22 is HL7 v2.5.1",
        ),
        ("lis:\n  host: h\n  port: 1\n  message_type: ORU^R03\n", ":4: lis.message_type"),
        (
            "lis:\n  host: h\n  port: 1\n  tests:\n    GLU: {nmae: Glucose}\n",
            ":5: lis.tests.GLU.nmae",
        ),
        (
            "lis:\n  host: h\n  port: 1\n  performing_laboratory:\n    city: Lyon\n",
            "lis.performing_laboratory.name",
        ),
    ],
)
def test_bad_configuration_names_file_line_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_the_lis_section_says_how_results_are_built(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            "lis:\n  host: h\n  port: 1\n  message_type: OUL^R22\n  review_notice: corrected\n"
            "  reagent_lots: observation\n  tests:\n    GLU: {name: Glucose, method: HK}\n"
            "  performing_laboratory: {name: Central lab, director_family_name: Martin}\n",
        )
    )
    assert settings.lis is not None
    sender = settings.lis.sender()
    assert (sender.message_type, sender.version, sender.review_status) == ("OUL^R22", "2.5.1", "C")
    assert sender.reagent_lots == "observation"
    assert sender.tests["GLU"].name == "Glucose" and sender.tests["GLU"].coding_system == "L"
    assert sender.performing_lab is not None
    assert sender.performing_lab.director_family_name == "Martin"


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.yaml")


def test_every_file_named_is_relative_to_the_configuration_file(tmp_path: Path) -> None:
    tls = "{ca_file: ca.pem, cert_file: certs/mw.pem, key_file: /abs/mw.key}"
    settings = load_settings(
        write(
            tmp_path,
            f"rules_dir: rules\narchive: {{key_file: archive.key}}\n"
            f"api: {{tls: {tls}}}\nlis: {{host: lis, port: 2575, tls: {tls}, orders_port: 2576,"
            f" orders_tls: {tls}}}\nevents: {{url: 'mqtts://broker', tls: {tls}}}\n"
            "instruments:\n"
            f"  - {{name: a, transport: tcp-server, port: 5001, tls: {tls}}}\n",
        )
    )
    assert settings.rules_dir == tmp_path / "rules"
    assert settings.archive.key_file == tmp_path / "archive.key"
    assert settings.api is not None and settings.lis is not None and settings.events is not None
    for each in (
        settings.api.tls,
        settings.lis.tls,
        settings.lis.orders_tls,
        settings.events.tls,
        settings.instruments[0].tls,
    ):
        assert each is not None
        assert each.ca_file == tmp_path / "ca.pem"
        assert each.cert_file == tmp_path / "certs" / "mw.pem"
        assert each.key_file == Path("/abs/mw.key")
