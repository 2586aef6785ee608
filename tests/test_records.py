"""E1394 record codec: round trips, escapes, delimiters read from H, errors, accessors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from middleware.astm.records import (
    DEFAULT_DELIMITERS,
    RECORD_TYPES,
    DecodedMessage,
    Delimiters,
    Field,
    Record,
    RecordError,
    decode_message,
    decode_record,
    encode_message,
    encode_record,
    escape,
    split_records,
    unescape,
)

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"

BACKTICK = Delimiters("|", "`", "^", "&")
AT = Delimiters("|", "@", "^", "&")

# --- strategies -----------------------------------------------------------------------

_USUAL = "|\\^&`@~!#$%*;:/,.-_+=?'\"<>()[]{} \t\x01\x02\x03\x17\x7f"


def _usable_delimiter(c: str) -> bool:
    return not c.isalnum() and c not in "\r\n"


delimiter_chars = st.one_of(
    st.sampled_from(_USUAL),
    st.characters(exclude_categories=("Cs", "L", "N")).filter(_usable_delimiter),
)

delimiters = st.lists(delimiter_chars, min_size=4, max_size=4, unique=True).map(
    lambda cs: Delimiters(*cs)
)


def content_text(d: Delimiters) -> st.SearchStrategy[str]:
    """Text that is hard on the codec: every delimiter, the letters and digits of escape
    sequences, CR, LF and other control characters, non-ASCII; or any text at all."""
    hard = d.field + d.repeat + d.component + d.escape + "|\\^&`@\r\nXFSRE0DA\x00\x1b\x7fµé中😀 "
    return st.one_of(st.text(alphabet=hard, max_size=8), st.text(max_size=6))


def field_strategy(d: Delimiters) -> st.SearchStrategy[Field]:
    repeat = st.lists(content_text(d), min_size=1, max_size=3).map(tuple)
    return st.lists(repeat, min_size=1, max_size=2).map(tuple)


@st.composite
def record_strategy(
    draw: st.DrawFn, d: Delimiters, record_type: str | None = None, max_fields: int = 5
) -> Record:
    kind = record_type or draw(st.sampled_from(sorted(RECORD_TYPES)))
    fields: list[Field] = [((kind,),)]
    if kind == "H":
        fields.append(((d.definition,),))
    fields += draw(st.lists(field_strategy(d), max_size=max_fields))
    return Record(tuple(fields))


@st.composite
def record_with_delimiters(draw: st.DrawFn) -> tuple[Record, Delimiters]:
    d = draw(delimiters)
    return draw(record_strategy(d)), d


@st.composite
def message_with_delimiters(draw: st.DrawFn) -> tuple[list[Record], Delimiters]:
    d = draw(delimiters)
    header = draw(record_strategy(d, "H", max_fields=3))
    rest = draw(st.lists(record_strategy(d, max_fields=3), max_size=3))
    return [header, *rest], d


# --- round trips ----------------------------------------------------------------------


_HEADER = Record(((("H",),), (("`^&",),), (("a`b", "c|d"),), (("\r\n&X0D&",), ("µ",))))
_RESULT = Record(
    (
        (("R",),),
        (("1",),),
        (("", "", "", "Na@K"),),
        (("<15", ""), ("@", "^")),
    )
)


@settings(max_examples=300)
@given(record_with_delimiters())
@example((_HEADER, BACKTICK))
@example((_RESULT, AT))
def test_record_round_trip(case: tuple[Record, Delimiters]) -> None:
    record, d = case
    line = encode_record(record, d)
    assert "\r" not in line and "\n" not in line
    assert decode_record(line, d) == record


@settings(max_examples=300)
@given(record_with_delimiters(), st.integers(-1, 20), st.integers(0, 4), st.integers(0, 4))
def test_a_value_is_its_component_of_its_repeat_of_its_field(
    case: tuple[Record, Delimiters], n: int, component: int, repeat: int
) -> None:
    record, _ = case
    comps = record.components(n, repeat)
    expected = comps[component] if component < len(comps) else ""
    assert record.value(n, component, repeat) == expected


@settings(max_examples=300)
@given(st.data())
def test_escape_round_trip_and_output_is_safe(data: st.DataObject) -> None:
    d = data.draw(delimiters)
    text = data.draw(content_text(d))
    escaped = escape(text, d)
    assert unescape(escaped, d) == text
    for c in (d.field, d.repeat, d.component, "\r", "\n"):
        assert c not in escaped
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in escaped if c != d.escape)


_SEPARATOR_LISTS = st.lists(st.sampled_from(["\r", "\n", "\r\n"]), min_size=4, max_size=4)


@settings(max_examples=100)
@given(message_with_delimiters(), _SEPARATOR_LISTS)
@example(([_HEADER, _RESULT], BACKTICK), ["\r\n", "\n", "\r", "\r"])
def test_message_round_trip_with_any_separator(
    case: tuple[list[Record], Delimiters], separators: list[str]
) -> None:
    records, d = case
    lines = encode_message(records, d)
    assert len(lines) <= len(separators)
    decoded = decode_message("\r".join(lines))
    assert decoded == DecodedMessage(tuple(records), d, ())
    for separator in ("\r\n", "\n"):
        assert decode_message(separator.join(lines)) == decoded
    mixed = "".join(line + sep for line, sep in zip(lines, separators, strict=False))
    assert decode_message(mixed) == decoded


def test_separators_give_the_same_records() -> None:
    text = "H|\\^&|||Echo\rP|1|12\rO|1|S1||^^^GLU\rR|1|^^^GLU|5.5|mmol/L\rL|1|N"
    expected = decode_message(text)
    assert [r.type for r in expected.records] == list("HPORL")
    assert expected.errors == ()
    for variant in (text.replace("\r", "\r\n"), text.replace("\r", "\n"), text + "\r\n"):
        assert decode_message(variant) == expected
    assert split_records("A\r\nB\n\nC\r\rD\n") == ["A", "B", "C", "D"]


def test_encode_uses_given_delimiters() -> None:
    record = Record.of("R", "1", ["", "", "", "Na"], "140", "mmol/L")
    assert encode_record(record) == "R|1|^^^Na|140|mmol/L"
    assert encode_record(record, Delimiters("!", "@", "~", "%")) == "R!1!~~~Na!140!mmol/L"
    header = Record(((("H",),), (("ignored",),), (("A", "B"), ("C",))))
    assert encode_record(header, BACKTICK) == "H|`^&|A^B`C"
    assert encode_message([header, record], AT) == ["H|@^&|A^B@C", "R|1|^^^Na|140|mmol/L"]


# --- escapes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("a&F&b", "a|b"),
        ("a&S&b", "a^b"),
        ("a&R&b", "a\\b"),
        ("a&E&b", "a&b"),
        ("&F&&S&&R&&E&", "|^\\&"),
        ("line&X0D&", "line\r"),
        ("&X0D0A&", "\r\n"),
        ("&X0d0a&", "\r\n"),
        ("&X41&&X09&", "A\t"),
        ("&XB5&mol/L", "µmol/L"),
    ],
)
def test_unescape(written: str, meant: str) -> None:
    assert unescape(written, DEFAULT_DELIMITERS) == meant


def test_unescape_follows_the_delimiters_in_use() -> None:
    d = Delimiters("!", "`", "~", "%")
    assert unescape("%F%%S%%R%%E%", d) == "!~`%"
    # with another escape character, the usual sequences are plain text
    assert unescape("&F&", d) == "&F&"


@pytest.mark.parametrize(
    "literal",
    [
        "Bread & butter",
        "a & b & c",
        "&",
        "&&",
        "ends with &",
        "&F",
        "&Q&",
        "&FS&",
        "&X&",
        "&X0&",
        "&X0G&",
        "&XABC&",
        "&f&",
    ],
)
def test_unknown_or_unterminated_escapes_stay_literal(literal: str) -> None:
    assert unescape(literal, DEFAULT_DELIMITERS) == literal


def test_a_stray_escape_character_does_not_swallow_a_real_sequence() -> None:
    assert unescape("Bread & butter &F& jam", DEFAULT_DELIMITERS) == "Bread & butter | jam"


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("a|b^c\\d&e", "a&F&b&S&c&R&d&E&e"),
        ("\r\n", "&X0D&&X0A&"),
        ("tab\there", "tab&X09&here"),
        ("\x00\x1f\x7f", "&X00&&X1F&&X7F&"),
        ("µmol/L é 中", "µmol/L é 中"),
        ("plain", "plain"),
        ("", ""),
    ],
)
def test_escape(text: str, written: str) -> None:
    assert escape(text, DEFAULT_DELIMITERS) == written


def test_escape_with_a_backtick_repeat() -> None:
    assert escape("a`b\\c", BACKTICK) == "a&R&b\\c"
    assert decode_record("C|1|a&R&b\\c", BACKTICK).value(3) == "a`b\\c"


def test_escape_sequences_inside_a_field_from_the_corpus() -> None:
    text = (CORPUS / "astm" / "ortho-vision_records_escape-sequences.txt").read_text("latin-1")
    decoded = decode_message(text)
    assert decoded.errors == ()
    assert [r.value(5) for r in decoded.records] == [
        "Type | Screen",
        "Type \\ Screen",
        "Type ^ Screen",
        "Type & Screen",
    ]
    # the escaped delimiters did not split anything
    assert all(len(r.fields) == 16 and r.value(16) == "CENTBLOOD" for r in decoded.records)


# --- delimiters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("H|\\^&|||Echo|||||LIS", Delimiters("|", "\\", "^", "&")),
        ("H|\\^&", Delimiters("|", "\\", "^", "&")),
        ("H|`^&||||||||||P|E 1394-97|20200928132312", Delimiters("|", "`", "^", "&")),
        ("H|@^&|||X", Delimiters("|", "@", "^", "&")),
        ("H|\\\\^&|||H550^909YAXH02732^1.2.1.4", Delimiters("|", "\\", "^", "&")),
        ("H!@~%!!!sender", Delimiters("!", "@", "~", "%")),
    ],
)
def test_delimiters_from_header(header: str, expected: Delimiters) -> None:
    assert Delimiters.from_header(header) == expected
    decoded = decode_message(header + f"\rL{expected.field}1{expected.field}N")
    assert decoded.delimiters == expected
    assert decoded.errors == ()
    assert decoded.records[0].type == "H"


def test_doubled_backslash_header_reads_backslash_as_repeat() -> None:
    decoded = decode_message("H|\\\\^&|||H550\rR|1|^^^WBC|3.22|10E3/uL\rM|3|REAGENT|A\\B\rL|1|N")
    assert decoded.delimiters == Delimiters("|", "\\", "^", "&")
    assert decoded.errors == ()
    header, result, manufacturer, _ = decoded.records
    assert header.field(2) == (("\\\\^&",),)  # H.2 is kept as written
    assert header.value(5) == "H550"
    assert result.value(3, 3) == "WBC"
    assert result.value(4) == "3.22"
    assert manufacturer.repeats(4) == (("A",), ("B",))


def test_backtick_and_at_repeats_split_repeats_and_not_backslashes() -> None:
    for d, char in ((BACKTICK, "`"), (AT, "@")):
        text = f"H|{char}^&\rQ|1|^1007149{char}1007152{char}A\\B||ALL\rL|1|N"
        decoded = decode_message(text)
        assert decoded.delimiters == d
        query = decoded.records[1]
        assert query.repeats(3) == (("", "1007149"), ("1007152",), ("A\\B",))
        assert query.value(5) == "ALL"


@pytest.mark.parametrize(
    "header",
    [
        "",
        "H",
        "H|",
        "H|\\^",
        "H|\\^|||",
        "H|\\|&",
        "H|\\^^",
        "H|\\^\\",
        "H|a^&",
        "H|\\^1",
        "P|\\^&",
        "H|\\\r&",
    ],
)
def test_invalid_delimiter_definitions_raise(header: str) -> None:
    with pytest.raises(RecordError):
        Delimiters.from_header(header)


@pytest.mark.parametrize(
    "chars",
    [
        ("|", "\\", "^", "^"),
        ("|", "\\", "^", "||"),
        ("|", "\\", "^", ""),
        ("|", "\\", "^", "A"),
        ("|", "\\", "^", "7"),
        ("|", "\\", "^", "\r"),
        ("\n", "\\", "^", "&"),
    ],
)
def test_invalid_delimiters_raise(chars: tuple[str, str, str, str]) -> None:
    with pytest.raises(RecordError):
        Delimiters(*chars)


def test_record_error_is_a_value_error() -> None:
    assert issubclass(RecordError, ValueError)


# --- records that are not records -----------------------------------------------------


@pytest.mark.parametrize(
    "line",
    ["", "X|1|2", "1H|\\^&", "Z", "R1|2", "O 1|2", "rum|||", "|P|1"],
)
def test_not_a_record_raises(line: str) -> None:
    with pytest.raises(RecordError):
        decode_record(line)


def test_errors_name_the_record_and_the_others_are_decoded() -> None:
    text = "H|\\^&|||Echo\rX|1|oops\rP|1|12\rR1|2\rR|1|^^^GLU|5.5\rL|1|N"
    decoded = decode_message(text)
    assert [r.type for r in decoded.records] == ["H", "P", "R", "L"]
    assert [e.index for e in decoded.errors] == [1, 3]
    assert "record 2" in str(decoded.errors[0]) and "'X'" in str(decoded.errors[0])
    assert "record 4" in str(decoded.errors[1])
    assert decoded.records[2].value(4) == "5.5"


def test_a_bad_header_is_reported_and_the_usual_delimiters_are_kept() -> None:
    decoded = decode_message(["H|\\^", "P|1|12", "L|1|N"])
    assert [e.index for e in decoded.errors] == [0]
    assert decoded.delimiters == DEFAULT_DELIMITERS
    assert [r.type for r in decoded.records] == ["P", "L"]


def test_an_empty_line_in_a_list_is_an_error_not_a_crash() -> None:
    decoded = decode_message(["H|\\^&", "", "L|1|N"])
    assert [e.index for e in decoded.errors] == [1]
    assert [r.type for r in decoded.records] == ["H", "L"]


def test_a_later_header_changes_the_delimiters() -> None:
    decoded = decode_message("H|\\^&\rP|1|a\\b\rL|1|N\rH|`^&\rP|1|a\\b`c\rL|1|N")
    assert decoded.errors == ()
    assert decoded.records[1].repeats(3) == (("a",), ("b",))
    assert decoded.records[4].repeats(3) == (("a\\b",), ("c",))
    assert decoded.delimiters == BACKTICK


# --- accessors ------------------------------------------------------------------------

RESULT = "R|1|^^^GLU^1\\^^^NA|5.5^mmol/L^^|mg/dL|3.9 to 6.1^normal|N\\H||F||Type &F& A||20240101"


def test_fields_are_numbered_from_the_record_type() -> None:
    record = decode_record(RESULT)
    assert record.type == "R"
    assert record.field(1) == (("R",),)
    assert record.field(2) == (("1",),)
    assert record.field(4) == (("5.5", "mmol/L", "", ""),)
    assert record.value(4) == "5.5"
    assert record.value(5) == "mg/dL"
    assert record.value(9) == "F"
    assert record.value(13) == "20240101"
    assert len(record.fields) == 13


def test_value_components_and_repeats() -> None:
    record = decode_record(RESULT)
    assert record.components(3) == ("", "", "", "GLU", "1")
    assert record.components(3, 1) == ("", "", "", "NA")
    assert record.value(3, 3) == "GLU"
    assert record.value(3, 4) == "1"
    assert record.value(3, 3, repeat=1) == "NA"
    assert record.value(4, 1) == "mmol/L"
    assert record.repeats(7) == (("N",), ("H",))
    assert record.repeats(3) == record.field(3)
    assert record.value(11) == "Type | A"


def test_absent_parts_are_empty() -> None:
    record = decode_record(RESULT)
    assert record.field(14) == (("",),)
    assert record.field(99) == (("",),)
    assert record.value(99) == ""
    assert record.value(4, 9) == ""
    assert record.value(3, 0, repeat=5) == ""
    assert record.components(7, 2) == ("",)
    assert record.components(99) == ("",)


def test_text_joins_components_and_repeats_and_drops_trailing_empties() -> None:
    record = decode_record(RESULT)
    assert record.text(3) == "^^^GLU^1\\^^^NA"
    assert record.text(4) == "5.5^mmol/L"
    assert record.text(6) == "3.9 to 6.1^normal"
    assert record.text(7) == "N\\H"
    assert record.text(8) == ""
    assert record.text(11) == "Type | A"
    assert record.text(99) == ""
    flags = decode_record("R|1|^^^X|1||^1^\\^0^\\\\")
    assert flags.text(6) == "^1\\^0"


def test_text_reads_the_same_whatever_the_delimiters() -> None:
    record = decode_record("R|1|^^^DBILL`^^^TBIL|0.3|mg/dl|^DEFAULT", BACKTICK)
    assert record.repeats(3) == (("", "", "", "DBILL"), ("", "", "", "TBIL"))
    assert record.text(3) == "^^^DBILL\\^^^TBIL"
    assert record.text(6) == "^DEFAULT"


def test_record_of_builds_plain_fields() -> None:
    record = Record.of("O", "1", "S1", "", ["", "", "", "GLU"])
    assert record.fields == (
        (("O",),),
        (("1",),),
        (("S1",),),
        (("",),),
        (("", "", "", "GLU"),),
    )
    assert record.value(5, 3) == "GLU"
    assert decode_record(encode_record(record)) == record
