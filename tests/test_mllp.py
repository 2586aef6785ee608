"""MLLP framing, byte by byte: whole messages out of any chunking, every byte accounted
for, and what is not a message said with its reason."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.hl7.mllp import (
    CR,
    FS,
    HEAD_KEPT,
    VT,
    Discarded,
    Event,
    MessageReceived,
    MllpReader,
    frame,
)

ADT = b"MSH|^~\\&|LIS|LAB|MW|LAB|20261130120000||ACK|42|P|2.5.1\rMSA|AA|17"


def feed(reader: MllpReader, *chunks: bytes, close: bool = False) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        events += reader.receive_data(chunk)
    if close:
        events += reader.end_of_stream()
    return events


def test_a_block_gives_its_message_with_the_offsets_of_its_bytes() -> None:
    events = feed(MllpReader(), frame(ADT) + frame(b"second"))
    assert events == [
        MessageReceived(ADT, 0, len(ADT) + 3),
        MessageReceived(b"second", len(ADT) + 3, len(ADT) + 12),
    ]


def test_a_message_comes_out_whole_from_one_byte_at_a_time() -> None:
    reader = MllpReader()
    data = frame(ADT)
    events = feed(reader, *(data[i : i + 1] for i in range(len(data))))
    assert events == [MessageReceived(ADT, 0, len(data))]
    assert reader.received == len(data)


def test_fs_without_cr_ends_the_block_and_is_noted() -> None:
    data = bytes((VT,)) + b"one" + bytes((FS,)) + frame(b"two")
    events = feed(MllpReader(), data)
    assert events == [
        MessageReceived(b"one", 0, 5, missing_cr=True),
        MessageReceived(b"two", 5, 11),
    ]
    # at the end of the stream too
    reader = MllpReader()
    assert feed(reader, bytes((VT,)) + b"last" + bytes((FS,))) == []
    assert reader.end_of_stream() == [MessageReceived(b"last", 0, 6, missing_cr=True)]


def test_fs_without_cr_then_quiet_is_a_message_and_reading_goes_on() -> None:
    # A sender that ends its block with FS alone and waits for our answer.
    reader = MllpReader()
    assert feed(reader, bytes((VT,)) + b"one" + bytes((FS,))) == []
    assert reader.awaiting_cr
    assert reader.quiet() == [MessageReceived(b"one", 0, 5, missing_cr=True)]
    assert not reader.awaiting_cr and reader.quiet() == []
    assert feed(reader, frame(b"two")) == [MessageReceived(b"two", 5, 11)]
    # Quiet in the middle of a block or outside one changes nothing.
    assert feed(reader, bytes((VT,)) + b"thr") == []
    assert not reader.awaiting_cr and reader.quiet() == []
    assert feed(reader, b"ee" + bytes((FS, CR))) == [MessageReceived(b"three", 11, 19)]


def test_bytes_outside_a_block_are_discarded_and_said() -> None:
    events = feed(MllpReader(), b"\r\nnoise" + frame(b"m"), close=True)
    assert events == [
        Discarded(b"\r\nnoise", 0, 7, "outside-block"),
        MessageReceived(b"m", 7, 11),
    ]
    assert feed(MllpReader(), b"trailing", close=True) == [
        Discarded(b"trailing", 0, 8, "outside-block")
    ]


def test_a_block_cut_by_a_new_one_or_by_the_end_of_the_stream_is_not_a_message() -> None:
    cut = bytes((VT,)) + b"half"
    assert feed(MllpReader(), cut + frame(b"whole"), cut, close=True) == [
        Discarded(cut, 0, 5, "cut-by-new-block"),
        MessageReceived(b"whole", 5, 13),
        Discarded(cut, 13, 18, "cut-by-end-of-stream"),
    ]


def test_a_message_past_the_bound_is_discarded_not_kept() -> None:
    reader = MllpReader(max_message_bytes=10)
    long = frame(b"x" * 11)
    events = feed(reader, long[:5], long[5:], frame(b"ok"))
    assert events == [
        Discarded(long, 0, len(long), "too-long"),  # its first HEAD_KEPT bytes at most
        MessageReceived(b"ok", len(long), len(long) + 5),
    ]
    # in one piece, and with a new block instead of the end
    events = feed(MllpReader(max_message_bytes=10), long + frame(b"ok"))
    assert [type(e).__name__ for e in events] == ["Discarded", "MessageReceived"]
    assert events[0] == Discarded(long[:HEAD_KEPT], 0, len(long), "too-long")
    chunks = bytes((VT,)) + b"y" * 20, b"y" * 20 + frame(b"ok")
    events = feed(MllpReader(max_message_bytes=10), *chunks)
    assert events[0].end == 41 and events[0].reason == "too-long"  # type: ignore[union-attr]
    assert events[1] == MessageReceived(b"ok", 41, 46)


def test_frame_refuses_a_message_holding_the_framing_bytes() -> None:
    for bad in (b"a\x0bb", b"a\x1cb"):
        with pytest.raises(ValueError, match="framing bytes"):
            frame(bad)
    assert frame(b"x") == b"\x0bx\x1c\r"


# --- properties ------------------------------------------------------------------------------

_messages = st.lists(
    st.binary(max_size=40).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b"")),
    max_size=6,
)


@st.composite
def _chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@given(messages=_messages, data=st.data())
def test_framed_messages_come_back_whatever_the_chunking(
    messages: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(frame(m) for m in messages)
    events = feed(MllpReader(), *data.draw(_chunked(stream)), close=True)
    assert [e.message for e in events if isinstance(e, MessageReceived)] == messages
    assert not [e for e in events if isinstance(e, Discarded)]


@given(stream=st.binary(max_size=300), data=st.data(), bound=st.integers(1, 50))
def test_every_byte_is_in_exactly_one_event(stream: bytes, data: st.DataObject, bound: int) -> None:
    """Whatever arrives, in whatever pieces: the events cover the stream, in order, without
    gap or overlap, and each whole message is the bytes between its VT and its FS."""
    reader = MllpReader(max_message_bytes=bound)
    events = feed(reader, *data.draw(_chunked(stream)), close=True)
    position = 0
    for event in events:
        assert event.start == position and event.end > event.start
        position = event.end
        if isinstance(event, MessageReceived):
            framed = stream[event.start : event.end]
            assert framed[0] == VT and len(event.message) <= bound
            body_end = len(framed) - (1 if event.missing_cr else 2)
            assert framed[body_end] == FS and framed[1:body_end] == event.message
            assert event.missing_cr or framed[-1] == CR
        elif event.reason != "too-long":
            assert stream[event.start : event.end] == event.data
    assert position == len(stream)
