"""What the orders port answers, byte for byte: the header of the order mirrored (MSH-5/6,
MSH-11, MSH-12, MSH-18 and its character set), AR for an order it does not take at all
(processing id, version, message type, no control id, too long), the reason in MSA-3 and
an ERR segment, never a Python exception's text; identifiers kept unescaped."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from middleware.hl7.orders import OrderRefused, acknowledgment, read_order
from middleware.orders_in import OrderReceiver
from middleware.store import Store, orders

AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
NOW = b"20261130120000+0000"
HEAD = "MSH|^~\\&|{sender}|LAB|MW|LAB|20261130120000||{kind}|{control}|{processing}|{version}"
BODY = ["PID|1||PAT7^^^^MR", "ORC|NW|ORD1|||||||20261130110000", "OBR|1|ORD1|S200|GLU^^L"]


def order(
    control: str = "O1",
    *,
    processing: str = "P",
    version: str = "2.5.1",
    kind: str = "ORM^O01",
    sender: str = "LIS",
    body: list[str] = BODY,
    charset: str = "",
    separator: str = "\r",
) -> str:
    head = HEAD.format(
        sender=sender, kind=kind, control=control, processing=processing, version=version
    )
    if charset:
        head += "||||||" + charset
    return separator.join([head, *body])


def plain(ack: bytes) -> bytes:
    """The ACK with its own control id (new each time) as ``MW``."""
    return re.sub(rb"\|ACK\^(\w+)\^ACK\|MW[0-9A-F]{18}\|", rb"|ACK^\1^ACK|MW|", ack)


async def exchange(
    store: Store, *blocks: bytes, trailer: bytes = b"\x1c\r", **receiving: Any
) -> list[bytes]:
    """Each block sent framed on one connection to the orders port, and the ACK it got,
    unframed."""
    receiver = OrderReceiver(store, clock=lambda: AT, **receiving)
    port = await receiver.start("127.0.0.1", 0)
    answers = []
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for data in blocks:
            writer.write(b"\x0b" + data + trailer)
            await writer.drain()
            answers.append((await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10))[1:-2])
        writer.close()
    finally:
        await receiver.close()
    return answers


def held(store: Store, *specimens: str) -> list[orders.Order]:
    return store.read(lambda conn: orders.orders_for(conn, list(specimens)))


@pytest.fixture
def sqlite(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'orders.db'}")


ACK_HEAD = b"MSH|^~\\&|LIS-MIDDLEWARE|LAB|LIS|LAB|" + NOW + b"||ACK^O01^ACK|MW|"


@pytest.mark.parametrize("processing", ["T", "D"])
def test_a_training_or_debugging_order_is_rejected_and_not_kept(
    database_url: str, processing: str
) -> None:
    store = Store(database_url)
    try:
        (ack,) = asyncio.run(exchange(store, order(processing=processing).encode()))
        assert held(store, "S200") == []
    finally:
        store.close()
    why = f"MSH-11: processing id {processing}; orders are taken in P (production) only"
    assert plain(ack) == (
        ACK_HEAD + processing.encode() + b"|2.5.1\r"
        + b"MSA|AR|O1|" + why.encode() + b"\r"
        + b"ERR||MSH^1^11|202^Unsupported processing id^HL70357|E||||" + why.encode()
    )  # fmt: skip


@pytest.mark.parametrize("version", ["9.9", "3.0"])
def test_an_order_in_a_version_other_than_2_x_is_rejected(sqlite: Store, version: str) -> None:
    try:
        (ack,) = asyncio.run(exchange(sqlite, order(version=version).encode()))
        assert held(sqlite, "S200") == []
    finally:
        sqlite.close()
    why = f"MSH-12: HL7 version {version}; orders are taken in 2.x"
    assert plain(ack) == (
        ACK_HEAD + b"P|2.5.1\rMSA|AR|O1|" + why.encode() + b"\r"
        + b"ERR||MSH^1^12|203^Unsupported version id^HL70357|E||||" + why.encode()
    )  # fmt: skip


def test_a_bare_header_without_processing_id_or_version_is_taken(sqlite: Store) -> None:
    # Only a training or test order, or another version, says it is not for production.
    try:
        (ack,) = asyncio.run(exchange(sqlite, order(processing="", version="").encode()))
        assert [o.specimen_id for o in held(sqlite, "S200")] == ["S200"]
    finally:
        sqlite.close()
    assert b"MSA|AA|O1" in plain(ack)


def test_an_order_ended_by_fs_without_cr_is_answered_at_once(sqlite: Store) -> None:
    # The LIS waits for our answer: nothing more comes after its FS.
    try:
        started = time.monotonic()
        (ack,) = asyncio.run(exchange(sqlite, order().encode(), trailer=b"\x1c"))
        assert time.monotonic() - started < 5
        assert [o.specimen_id for o in held(sqlite, "S200")] == ["S200"]
    finally:
        sqlite.close()
    assert b"MSA|AA|O1" in plain(ack)


def test_the_acknowledgment_is_sent_under_the_names_the_lis_knows_us_by(sqlite: Store) -> None:
    try:
        sent = order().encode()
        (ack,) = asyncio.run(exchange(sqlite, sent, sender=("MW|CHEM", "CENTRAL LAB")))
    finally:
        sqlite.close()
    assert plain(ack).startswith(b"MSH|^~\\&|MW\\F\\CHEM|CENTRAL LAB|LIS|LAB|")


def test_the_acknowledgment_mirrors_the_header_of_the_order(sqlite: Store) -> None:
    """MSH-5/6 the order's MSH-3/4 (every component), MSH-11 and MSH-12 its own."""
    sent = order(sender="HIS^1.2.3^ISO", version="2.3.1").replace("|LAB|MW|", "|SITE\\F\\A|MW|")
    try:
        (ack,) = asyncio.run(exchange(sqlite, sent.encode()))
    finally:
        sqlite.close()
    assert plain(ack) == (
        b"MSH|^~\\&|LIS-MIDDLEWARE|LAB|HIS^1.2.3^ISO|SITE\\F\\A|" + NOW
        + b"||ACK^O01^ACK|MW|P|2.3.1\rMSA|AA|O1"
    )  # fmt: skip


def test_an_order_without_a_control_id_is_rejected(sqlite: Store) -> None:
    try:
        (ack,) = asyncio.run(exchange(sqlite, order(control="").encode()))
        assert held(sqlite, "S200") == []
    finally:
        sqlite.close()
    why = b"MSH-10: no message control id"
    assert plain(ack) == (
        ACK_HEAD + b"P|2.5.1\rMSA|AR||" + why + b"\r"
        + b"ERR||MSH^1^10|101^Required field missing^HL70357|E||||" + why
    )  # fmt: skip


def test_a_message_that_is_no_order_is_rejected_naming_the_orders_taken(sqlite: Store) -> None:
    try:
        (ack,) = asyncio.run(exchange(sqlite, order(kind="ADT^A01").encode()))
    finally:
        sqlite.close()
    why = b"MSH-9: ADT\\S\\A01 is not an order; orders are OML\\S\\O21, OML\\S\\O33, ORM\\S\\O01"
    assert plain(ack) == (
        ACK_HEAD.replace(b"ACK^O01", b"ACK^A01") + b"P|2.5.1\rMSA|AR|O1|" + why + b"\r"
        + b"ERR||MSH^1^9|200^Unsupported message type^HL70357|E||||" + why
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("MSH", "MSH: the message does not begin with an MSH segment and its delimiters"),
        ("MSH|", "MSH-2: the encoding characters '' are not four delimiters"),
        ("MSH|^~\\&|\r\rPID", "MSH-9: no message type"),
        ("xMSH|^~\\&", "MSH: the message does not begin with an MSH segment and its delimiters"),
        ("MSH|^^^^|", "MSH-2: the encoding characters '^^^^' are not four delimiters"),
    ],
)
def test_a_refusal_says_what_was_wrong_never_a_python_error(text: str, said: str) -> None:
    with pytest.raises(OrderRefused) as refused:
        read_order(text)
    assert str(refused.value).startswith(said)
    for python in ("index out of range", "must be one of", "[", "Error"):
        assert python not in str(refused.value)


def test_text_not_in_its_character_set_is_refused_without_pythons_words(sqlite: Store) -> None:
    data = order("O9", sender="LABO\xc9").encode("latin-1")  # undeclared: read as UTF-8
    try:
        (ack,) = asyncio.run(exchange(sqlite, data))
    finally:
        sqlite.close()
    msa = plain(ack).split(b"\r")[1]
    assert msa == b"MSA|AE|O9|MSH-18: the message is not UTF-8 text (byte 0xC9 at offset 13)"


def test_crlf_between_segments_is_read(sqlite: Store) -> None:
    try:
        (ack,) = asyncio.run(exchange(sqlite, order("O2", separator="\r\n").encode()))
        assert [o.test_codes for o in held(sqlite, "S200")] == [("GLU",)]
    finally:
        sqlite.close()
    assert plain(ack) == ACK_HEAD + b"P|2.5.1\rMSA|AA|O2"


def test_an_order_over_the_size_limit_is_rejected_naming_it(sqlite: Store) -> None:
    """The LIS would send it again and again if it got no answer at all."""
    comment = "NTE|1||" + "x" * (1 << 20)
    big = order("BIG1", body=[*BODY, comment]).encode()
    try:
        too_long, after = asyncio.run(exchange(sqlite, big, order("O3").encode()))
        assert [o.test_codes for o in held(sqlite, "S200")] == [("GLU",)]  # O3 only
    finally:
        sqlite.close()
    why = b"the message is longer than 1048576 bytes (1 MiB), the most taken; not read"
    assert plain(too_long) == (
        ACK_HEAD + b"P|2.5.1\rMSA|AR|BIG1|" + why + b"\r"
        + b"ERR|||207^Application internal error^HL70357|E||||" + why
    )  # fmt: skip
    assert plain(after).endswith(b"\rMSA|AA|O3")


def test_escaped_identifiers_are_read_and_kept_plain(database_url: str) -> None:
    body = [
        "PID|1||P\\S\\7\\T\\X\\E\\^^^^MR",
        "ORC|NW|ORD1|||||||20261130110000",
        "OBR|1|ORD1|SP\\F\\X|GLU\\R\\2^^L",
        "OBR|2|ORD1|S\\H\\P2\\N\\|K^^L",
    ]
    read = read_order(order(body=body))
    assert [(c.order.specimen_id, c.order.test_codes) for c in read.changes] == [
        ("SP|X", ("GLU~2",)),
        ("SP2", ("K",)),
    ]
    assert read.changes[0].order.patient_id == "P^7&X\\"
    store = Store(database_url)
    try:
        (ack,) = asyncio.run(exchange(store, order(body=body).encode()))
        (kept,) = held(store, "SP|X")
    finally:
        store.close()
    assert plain(ack).endswith(b"\rMSA|AA|O1")
    assert (kept.specimen_id, kept.patient_id) == ("SP|X", "P^7&X\\")


def test_the_answer_is_in_the_character_set_of_the_order(sqlite: Store) -> None:
    latin = order("O4", sender="LABO \xc9ST", charset="8859/1").encode("latin-1")
    # Declared ASCII but not: refused, and the sender's name answered as best ASCII can.
    ascii_ = order("O5", sender="LABO \xc9ST", charset="ASCII").encode("latin-1")
    try:
        taken, refused = asyncio.run(exchange(sqlite, latin, ascii_))
    finally:
        sqlite.close()
    assert plain(taken) == (
        b"MSH|^~\\&|LIS-MIDDLEWARE|LAB|LABO \xc9ST|LAB|" + NOW
        + b"||ACK^O01^ACK|MW|P|2.5.1||||||8859/1\rMSA|AA|O4"
    )  # fmt: skip
    assert plain(refused).split(b"\r")[0] == (
        b"MSH|^~\\&|LIS-MIDDLEWARE|LAB|LABO ?ST|LAB|" + NOW
        + b"||ACK^O01^ACK|MW|P|2.5.1||||||ASCII"
    )  # fmt: skip
    assert plain(refused).split(b"\r")[1].startswith(b"MSA|AE|O5|MSH-18: the message is not ASCII")


def test_a_refusal_with_its_error_segment_is_valid_hl7() -> None:
    refusals = [
        OrderRefused("ORC-1 (segment 3): order control 'ZZ' not taken", "103", ("ORC", 1, 1)),
        OrderRefused("MSH-11: processing id T", "202", ("MSH", 1, 11), code="AR"),
        OrderRefused("OBR: the message orders no test", "100"),
    ]
    for refusal in refusals:
        text = acknowledgment("O1", refusal.code, AT, str(refusal), error=refusal)
        assert text.split("\r")[2].startswith("ERR|")
        strict = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        assert strict.validate()
    # before 2.5, the error's code and location are ERR-1
    older = acknowledgment("O1", "AE", AT, "why", version="2.3.1", error=refusals[0])
    assert older.split("\r")[2] == "ERR|ORC^1^1^103&Table value not found&HL70357"


def test_a_nul_in_an_order_is_refused_rather_than_answered_send_it_again(
    database_url: str,
) -> None:
    """PostgreSQL keeps no NUL in text: stored, the order failed every time and was
    answered AR (send it again), for ever."""
    body = ["PID|1||PAT7", "ORC|NW|ORD1", "OBR|1|ORD1|S\x00200|GLU^^L"]
    store = Store(database_url)
    try:
        (ack,) = asyncio.run(exchange(store, order(body=body).encode()))
    finally:
        store.close()
    why = b"OBR-3 (segment 4): a NUL character, which no text may hold"
    assert plain(ack).split(b"\r")[1:] == [
        b"MSA|AE|O1|" + why,
        b"ERR||OBR^1^3|102^Data type error^HL70357|E||||" + why,
    ]
    # written as an escape, it is shown as a character that could not be read
    escaped = ["ORC|NW|ORD1", "OBR|1|ORD1|S\\X00\\201|GLU^^L"]
    assert read_order(order(body=escaped)).changes[0].order.specimen_id == "S\ufffd201"


def test_an_order_message_with_an_event_not_taken_names_the_event() -> None:
    with pytest.raises(OrderRefused) as refused:
        read_order(order(kind="ORM^O02"))
    assert (refused.value.code, refused.value.condition) == ("AR", "201")
    assert str(refused.value).startswith("MSH-9: ORM^O02 is not an order; orders are OML^O21")


def test_text_that_is_no_hl7_message_is_rejected_saying_so(sqlite: Store) -> None:
    try:
        (ack,) = asyncio.run(exchange(sqlite, b"hello"))
    finally:
        sqlite.close()
    why = b"MSH: the message does not begin with an MSH segment and its delimiters"
    assert plain(ack).split(b"\r")[1:] == [
        b"MSA|AR||" + why,
        b"ERR||MSH^1|100^Segment sequence error^HL70357|E||||" + why,
    ]


def test_a_second_patient_in_one_order_message_is_refused_naming_it(database_url: str) -> None:
    """ORM^O01, OML^O21 and OML^O33 have one PATIENT group: SN011, after a second PID, was
    kept under the first patient. Nothing of the message is kept."""
    body = [
        "PID|1||PATA^^^^MR", "ORC|NW|ORD1", "OBR|1|ORD1|SN010|GLU^^L",
        "PID|2||PATB^^^^MR", "ORC|NW|ORD2", "OBR|1|ORD2|SN011|GLU^^L",
    ]  # fmt: skip
    store = Store(database_url)
    try:
        (ack,) = asyncio.run(exchange(store, order(body=body).encode()))
        assert held(store, "SN010", "SN011") == []
    finally:
        store.close()
    why = (
        b"PID (segment 5): a second patient; an order message carries one patient's orders"
        b" (send each patient's in a message of their own)"
    )
    assert plain(ack).split(b"\r")[1:] == [
        b"MSA|AE|O1|" + why,
        b"ERR||PID^2|100^Segment sequence error^HL70357|E||||" + why,
    ]


def test_the_same_patient_repeated_in_each_order_group_is_taken() -> None:
    body = [
        "PID|1||PATA^^^^MR", "ORC|NW|ORD1", "OBR|1|ORD1|SN010|GLU^^L",
        "PID|1||PATA^^^^MR", "ORC|NW|ORD2", "OBR|1|ORD2|SN011|K^^L",
    ]  # fmt: skip
    changes = read_order(order(body=body)).changes
    assert [(c.order.specimen_id, c.order.patient_id) for c in changes] == [
        ("SN010", "PATA"), ("SN011", "PATA"),
    ]  # fmt: skip


def test_the_patient_is_the_first_identifier_pid_3_gives() -> None:
    body = ["PID|1||~PATR1^^^H^MR~PATR2^^^H^MR", *BODY[1:]]
    assert read_order(order(body=body)).changes[0].order.patient_id == "PATR1"
    body = ["PID|1||^^^H^MR~P\\F\\R3^^^H^MR", *BODY[1:]]
    assert read_order(order(body=body)).changes[0].order.patient_id == "P|R3"
