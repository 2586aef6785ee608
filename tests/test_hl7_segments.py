"""HL7 v2 text as segments: numbering, delimiters, escapes, character sets, and text
that is not a message."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.hl7.results import escape
from middleware.hl7.segments import (
    Encoding,
    Hl7Error,
    decode_text,
    parse_message,
    unescape,
)

ORU = (
    "MSH|^~\\&|ANALYSER|LAB|||20260105101500||ORU^R01^ORU_R01|CTRL-1|P|2.5.1\r"
    "PID|1||P-77^^^HOSP||Doe^Jane||19800214|F\r"
    "OBR|1|PL-1|SMP-9|CBC^Blood count\r"
    "OBX|1|NM|WBC^White cells^L||7.2|10*3/uL|4.0-10.0|N~A|||F\r"
)


def test_fields_are_numbered_as_hl7_numbers_them() -> None:
    message = parse_message(ORU)
    msh = message.header
    assert msh.value(1) == "|"
    assert msh.value(2) == "^~\\&"
    assert msh.value(3) == "ANALYSER"
    assert message.message_type == "ORU^R01"
    assert message.control_id == "CTRL-1"
    assert message.sender == "ANALYSER LAB"
    obx = message.all("OBX")[0]
    assert obx.value(3) == "WBC" and obx.value(3, 2) == "White cells"
    assert obx.value(5) == "7.2"
    assert [rep[0] for rep in obx.repeats(8)] == ["N", "A"]
    assert obx.text(3) == "WBC^White cells^L"
    assert obx.value(40) == "" and obx.value(3, 9) == ""
    assert obx.where(5) == "OBX 1, OBX-5"
    assert message.all("PID")[0].value(3, 4) == "HOSP"


def test_a_message_declares_its_own_delimiters() -> None:
    text = ORU.replace("|", "#").replace("^", "$").replace("~", "%")
    message = parse_message(text)
    assert message.encoding == Encoding("#", "$", "%", "\\", "&")
    obx = message.all("OBX")[0]
    assert obx.value(3, 2) == "White cells"
    assert [rep[0] for rep in obx.repeats(8)] == ["N", "A"]


@pytest.mark.parametrize("separator", ["\r", "\n", "\r\n"])
def test_segments_end_with_cr_lf_or_both(separator: str) -> None:
    message = parse_message(ORU.replace("\r", separator))
    assert [s.name for s in message.segments] == ["MSH", "PID", "OBR", "OBX"]


def test_escapes_are_undone_in_each_component() -> None:
    text = ORU.replace(
        "|7.2|", "|a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X41\\\\.br\\g\\H\\h\\N\\\\Z99\\|"
    )
    obx = parse_message(text).all("OBX")[0]
    assert obx.value(5) == "a|b^c&d~e\\fA\ngh\\Z99\\"


def test_segments_that_cannot_be_read_are_left_out_and_said() -> None:
    text = ORU + "garbage line\r" + "MSH|^~\\&|AGAIN\r" + "NTE|1||after\r"
    message = parse_message(text)
    assert [s.name for s in message.segments] == ["MSH", "PID", "OBR", "OBX", "NTE"]
    assert message.problems == (
        "segment 5: 'garbage line' is not a segment; left out",
        "segment 6: a second MSH; left out",
    )


@pytest.mark.parametrize(
    "text",
    ["", "\r\n", "PID|1\r", "MSH|", "MSH|^~\r", "MSH|^^\\&|x", "MSH1^~\\&|x", "MSH|a~\\&|"],
)
def test_text_that_is_no_message_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(Hl7Error):
        parse_message(text)


def test_the_declared_character_set_reads_the_bytes() -> None:
    utf8 = ORU.replace("CTRL-1|P|2.5.1", "CTRL-1|P|2.5.1||||||UNICODE UTF-8").replace(
        "Doe^Jane", "Doé^Zoë"
    )
    text, problem = decode_text(utf8.encode("utf-8"))
    assert problem == "" and "Doé^Zoë" in text
    latin = ORU.replace("CTRL-1|P|2.5.1", "CTRL-1|P|2.5.1||||||8859/1").replace("Doe", "Doé")
    assert decode_text(latin.encode("latin-1"))[0] == latin
    # Declared UTF-8 but not: read all the same, and said.
    wrong = utf8.replace("Doé", "D\xe9").encode("latin-1", errors="replace")
    text, problem = decode_text(wrong)
    assert "D\xe9" in text and problem.startswith("MSH-18: not UNICODE UTF-8 text")
    # Nothing declared: the configured fallback.
    assert decode_text("MSH|^~\\&|Ö".encode("latin-1"), "latin-1") == ("MSH|^~\\&|Ö", "")
    # Unless the bytes are UTF-8 throughout, as latin-1 text practically never is.
    assert decode_text("MSH|^~\\&|PATÉ1".encode(), "latin-1") == ("MSH|^~\\&|PATÉ1", "")
    # A character set configured otherwise is believed: short GB 18030 text may pass
    # for UTF-8 (前 is C7 B0, which UTF-8 reads as ǰ).
    assert decode_text("MSH|^~\\&|前".encode("gb18030"), "gb18030") == ("MSH|^~\\&|前", "")
    # A byte order mark is no part of the text, whatever the character set.
    assert decode_text(b"\xef\xbb\xbfMSH|^~\\&|x", "latin-1") == ("MSH|^~\\&|x", "")
    declared = b"\xef\xbb\xbfMSH|^~\\&|\xc9" + b"|" * 14 + b"8859/1"
    assert decode_text(declared)[0].startswith("MSH|^~\\&|\xc9|")


_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\x0b\x1c"), max_size=60
).filter(lambda t: all(c == "\n" or (c >= " " and c != "\x7f") for c in t))


@given(_TEXT)
def test_what_the_builder_escapes_reads_back(value: str) -> None:
    text = f"MSH|^~\\&|A\rOBX|1|ST|X||{escape(value)}\r"
    assert parse_message(text).all("OBX")[0].value(5) == value.replace("\t", " ")


@given(st.text(max_size=300))
def test_any_text_is_read_or_refused_with_hl7_error(text: str) -> None:
    try:
        message = parse_message(text)
    except Hl7Error:
        return
    assert message.segments[0].name == "MSH"
    for segment in message.segments:
        for n in range(0, 30):
            segment.value(n)
            segment.text(n)


@given(st.text(max_size=80))
def test_unescape_never_fails(text: str) -> None:
    assert isinstance(unescape(text), str)
