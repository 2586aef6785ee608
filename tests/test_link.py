"""E1381 link layer, byte by byte: every rule, timer and tolerance."""

from __future__ import annotations

import time

import pytest

from middleware.astm.frames import (
    ACK,
    ENQ,
    EOT,
    NAK,
    FrameTolerances,
    build_frame,
    build_frames,
    checksum,
)
from middleware.astm.link import (
    Busy,
    Contention,
    DuplicateFrame,
    FrameRejected,
    Link,
    LinkSettings,
    MessageSent,
    Role,
    SendFailed,
    SendInterrupted,
    State,
    TextReceived,
    TimedOut,
    TransferEnded,
    TransferStarted,
)

B_ACK, B_NAK, B_ENQ, B_EOT = bytes([ACK]), bytes([NAK]), bytes([ENQ]), bytes([EOT])


def events(link: Link) -> list[object]:
    out = []
    while (event := link.next_event()) is not None:
        out.append(event)
    return out


def receiving(settings: LinkSettings | None = None) -> Link:
    link = Link(settings)
    link.receive_data(B_ENQ, 0.0)
    assert link.data_to_send() == B_ACK
    assert events(link) == [TransferStarted()]
    return link


def commit(link: Link, now: float) -> bytes:
    """Do what the shell does with a text that ends a message: keep it, then let the link
    answer; returns the text."""
    event = link.next_event()
    assert isinstance(event, TextReceived), event
    assert link.state is State.AWAITING_DECISION
    link.acknowledge(now)
    return event.text


def feed_bytewise(link: Link, data: bytes, now: float) -> bytes:
    """Feed ``data`` one byte at a time; returns what the link sent meanwhile."""
    sent = b""
    for i in range(len(data)):
        link.receive_data(data[i : i + 1], now)
        sent += link.data_to_send()
    return sent


# --- frames ----------------------------------------------------------------------------


def test_checksum_of_the_standard_example() -> None:
    assert checksum(b"1A|B|C|D\r\x03") == b"BF"
    assert build_frame(1, b"A|B|C|D\r", final=True) == b"\x021A|B|C|D\r\x03BF\r\n"


def test_frame_numbers_run_mod_8() -> None:
    frames = build_frames(b"x" * (240 * 9), first_number=1)
    assert [f[1:2] for f in frames] == [b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"0", b"1"]
    assert all(f[-5] == 0x17 for f in frames[:-1])  # ETB
    assert frames[-1][-5] == 0x03  # ETX
    assert all(len(f) == 240 + 7 for f in frames)


def test_long_record_split_at_240_characters() -> None:
    frames = build_frames(b"R|" + b"9" * 300, first_number=3)
    assert len(frames) == 2
    assert frames[0][2:-5] == (b"R|" + b"9" * 300)[:240]
    assert frames[1][2:-5] == (b"R|" + b"9" * 300)[240:]
    assert frames[0][1:2] == b"3" and frames[1][1:2] == b"4"


# --- receiver ----------------------------------------------------------------------------


def test_receives_a_record_and_acks_each_frame() -> None:
    link = receiving()
    link.receive_data(build_frame(1, b"H|\\^&\r", True), 1.0)
    assert commit(link, 1.5) == b"H|\\^&\r"
    assert link.data_to_send() == B_ACK
    link.receive_data(B_EOT, 2.0)
    assert events(link) == [TransferEnded()]
    assert link.state is State.NEUTRAL


def test_bytes_arriving_one_at_a_time() -> None:
    link = receiving()
    wire = build_frame(1, b"R|1|^^^GLU|5.4\r", True)
    for i in range(len(wire)):
        link.receive_data(wire[i : i + 1], 1.0)
        assert link.data_to_send() == b""
    assert commit(link, 1.0) == b"R|1|^^^GLU|5.4\r"
    assert link.data_to_send() == B_ACK


def test_message_delivered_only_when_the_etx_frame_arrives() -> None:
    link = receiving()
    text = b"R|1|" + b"7" * 400 + b"\r"
    first, second = build_frames(text, 1)
    link.receive_data(first, 1.0)
    assert link.data_to_send() == B_ACK
    assert events(link) == []
    link.receive_data(second, 2.0)
    assert commit(link, 2.0) == text
    assert link.data_to_send() == B_ACK
    assert events(link) == []


def test_bad_checksum_is_naked_and_the_resend_accepted() -> None:
    link = receiving()
    good = build_frame(1, b"P|1\r", True)
    bad = good[:-4] + b"00\r\n"
    link.receive_data(bad, 1.0)
    assert link.data_to_send() == B_NAK
    [rejected] = events(link)
    assert isinstance(rejected, FrameRejected) and rejected.kind == "checksum"
    assert rejected.offset == 1  # the frame starts after the ENQ
    link.receive_data(good, 2.0)
    assert commit(link, 2.0) == b"P|1\r"
    assert link.data_to_send() == B_ACK


def test_checksum_in_lowercase_hex_is_accepted() -> None:
    link = receiving()
    frame = build_frame(1, b"P|1\r", True)
    link.receive_data(frame[:-4] + frame[-4:-2].lower() + b"\r\n", 1.0)
    assert commit(link, 1.0) == b"P|1\r"
    assert link.data_to_send() == B_ACK


def test_unexpected_frame_number_is_naked() -> None:
    link = receiving()
    link.receive_data(build_frame(2, b"P|1\r", True), 1.0)
    assert link.data_to_send() == B_NAK
    [rejected] = events(link)
    assert isinstance(rejected, FrameRejected) and rejected.kind == "frame_number"
    assert "2 received, 1 expected" in rejected.detail


def test_repeated_frame_after_lost_ack_is_acked_not_delivered_twice() -> None:
    link = receiving()
    frame = build_frame(1, b"P|1\r", True)
    link.receive_data(frame, 1.0)
    assert commit(link, 1.0) == b"P|1\r"
    assert link.data_to_send() == B_ACK
    link.receive_data(frame, 2.0)  # our ACK was lost; the sender tries again
    assert link.data_to_send() == B_ACK
    assert events(link) == [DuplicateFrame(1)]
    link.receive_data(build_frame(2, b"L|1|N\r", True), 3.0)
    assert commit(link, 3.0) == b"L|1|N\r"
    assert link.data_to_send() == B_ACK


def test_same_number_with_other_text_is_not_a_repeat() -> None:
    link = receiving()
    link.receive_data(build_frame(1, b"P|1\r", True), 1.0)
    commit(link, 1.0)
    link.data_to_send()
    link.receive_data(build_frame(1, b"P|2\r", True), 2.0)
    assert link.data_to_send() == B_NAK


@pytest.mark.parametrize("char", [0x01, 0x02, 0x06, 0x10, 0x15, 0x16, 0x11, 0x14, 0x0A])
def test_restricted_character_in_text_is_naked(char: int) -> None:
    link = receiving()
    link.receive_data(build_frame(1, b"P|" + bytes([char]) + b"1\r", True), 1.0)
    assert link.data_to_send() == B_NAK
    [rejected] = events(link)
    assert isinstance(rejected, FrameRejected)
    # STX inside a frame abandons it (the sender restarted): what follows fails its checksum.
    assert rejected.kind == ("checksum" if char == 0x02 else "control_character")


def test_enq_inside_a_frame_abandons_it_and_restarts_the_transfer() -> None:
    link = receiving()
    first, _ = build_frames(b"R|" + b"1" * 300 + b"\r", 1)
    link.receive_data(first, 1.0)
    assert link.data_to_send() == B_ACK
    wire = build_frame(2, b"P|" + B_ENQ + b"1\r", True)
    assert feed_bytewise(link, wire, 2.0) == B_ACK  # the ENQ's, not the frame's
    [started] = events(link)
    assert isinstance(started, TransferStarted)
    assert started.start == len(B_ENQ + first) + wire.index(B_ENQ)
    # The tail of the abandoned frame is noise; the restarted transfer numbers from 1 and
    # the ETB frame before the ENQ is not part of its message.
    assert feed_bytewise(link, build_frame(1, b"L|1|N\r", True), 3.0) == b""
    assert commit(link, 3.0) == b"L|1|N\r"
    assert link.data_to_send() == B_ACK


@pytest.mark.parametrize("whole", [True, False], ids=["one-read", "bytewise"])
def test_eot_after_a_frame_without_its_lf_ends_the_transfer(whole: bool) -> None:
    link = receiving()
    first = build_frame(1, b"H|\\^&\r", True)
    link.receive_data(first, 1.0)
    commit(link, 1.0)
    assert link.data_to_send() == B_ACK
    cut = build_frame(2, b"P|1||X\r", True)[:-1]
    assert cut == b"\x022P|1||X\r\x038F\r"  # no LF: the EOT comes where it belongs
    if whole:
        link.receive_data(cut + B_EOT, 2.0)
        sent = link.data_to_send()
    else:
        sent = feed_bytewise(link, cut + B_EOT, 2.0)
    # The frame is dropped unanswered, like one cut short in its text; the EOT ends the
    # transfer at once, and the line stays quiet.
    assert sent == b""
    assert events(link) == [TransferEnded(1 + len(first) + len(cut) + 1)]
    assert link.state is State.NEUTRAL and link.deadline is None
    link.handle_timer(100.0)
    assert link.data_to_send() == b""
    assert feed_bytewise(link, B_ENQ, 101.0) == B_ACK


@pytest.mark.parametrize("kept", [0, 1, 2, 3], ids=["c1", "c2", "cr", "lf"])
@pytest.mark.parametrize("whole", [True, False], ids=["one-read", "bytewise"])
def test_control_character_in_a_frames_trailer_abandons_the_frame(kept: int, whole: bool) -> None:
    """STX, EOT or ENQ where the checksum, CR or LF belongs: the frame is dropped without
    a reply, as one cut short in its text is, and the byte is read for what it is."""
    frame = build_frame(1, b"P|1\r", True)
    cut = frame[: len(frame) - 4 + kept]
    following = build_frame(1, b"P|2\r", True)

    def run(wire: bytes) -> tuple[Link, bytes]:
        link = receiving()
        if whole:
            link.receive_data(wire, 1.0)
            return link, link.data_to_send()
        return link, feed_bytewise(link, wire, 1.0)

    link, sent = run(cut + B_EOT)
    assert sent == b""
    assert events(link) == [TransferEnded(1 + len(cut) + 1)]
    assert link.state is State.NEUTRAL

    link, sent = run(cut + B_ENQ)
    assert sent == B_ACK  # the ENQ's
    assert events(link) == [TransferStarted(1 + len(cut))]
    assert link.state is State.RECEIVING

    link, sent = run(cut + following)
    assert sent == b""
    [text] = events(link)
    assert text == TextReceived(b"P|2\r")
    assert (text.start, text.end) == (1 + len(cut), 1 + len(cut) + len(following))
    link.acknowledge(1.0)
    assert link.data_to_send() == B_ACK


def test_frame_longer_than_240_is_naked_by_default() -> None:
    link = receiving()
    link.receive_data(build_frame(1, b"x" * 241, True), 1.0)
    assert link.data_to_send() == B_NAK
    [rejected] = events(link)
    assert isinstance(rejected, FrameRejected) and rejected.kind == "frame_too_long"


def test_frame_must_close_with_cr_lf() -> None:
    link = receiving()
    frame = build_frame(1, b"P|1\r", True)
    link.receive_data(frame[:-2] + b"XX", 1.0)
    assert link.data_to_send() == B_NAK


def test_frame_numbers_wrap_across_records() -> None:
    link = receiving()
    texts = [f"R|{i}\r".encode() for i in range(1, 11)]
    for i, text in enumerate(texts, start=1):
        link.receive_data(build_frame(i % 8, text, True), float(i))
        assert commit(link, float(i)) == text
        assert link.data_to_send() == B_ACK


def test_receiver_interrupt_answers_eot_instead_of_ack() -> None:
    link = receiving()
    link.interrupt()
    link.receive_data(build_frame(1, b"H|\\^&\r", True), 1.0)
    assert commit(link, 1.0) == b"H|\\^&\r"
    assert link.data_to_send() == B_EOT
    link.receive_data(B_EOT, 2.0)  # the sender honours it
    assert events(link) == [TransferEnded()]


def test_final_frame_is_answered_only_after_the_commit() -> None:
    link = receiving()
    link.receive_data(build_frame(1, b"L|1|N\r", True), 1.0)
    assert link.data_to_send() == b""
    assert events(link) == [TextReceived(b"L|1|N\r")]
    assert link.state is State.AWAITING_DECISION
    # A commit may take as long as it takes: no timer runs meanwhile.
    assert link.deadline is None
    link.handle_timer(1000.0)
    assert link.state is State.AWAITING_DECISION
    assert events(link) == []
    link.acknowledge(1000.0)
    assert link.data_to_send() == B_ACK
    assert link.state is State.RECEIVING
    assert link.deadline == 1030.0


def test_bytes_fed_while_awaiting_the_commit_are_read_after_it() -> None:
    link = receiving()
    link.receive_data(build_frame(1, b"P|1\r", True), 1.0)
    assert events(link) == [TextReceived(b"P|1\r")]
    later = build_frame(2, b"P|2\r", True) + B_EOT
    assert feed_bytewise(link, later, 1.5) == b""
    assert events(link) == []
    assert link.state is State.AWAITING_DECISION
    link.acknowledge(2.0)
    # The ACK goes out, then frame 2 is read and awaits its own commit.
    assert link.data_to_send() == B_ACK
    assert commit(link, 2.5) == b"P|2\r"
    assert link.data_to_send() == B_ACK
    assert events(link) == [TransferEnded()]
    assert link.state is State.NEUTRAL


def test_etb_frames_are_acked_at_once_and_only_the_etx_frame_waits() -> None:
    link = receiving()
    first, second = build_frames(b"R|" + b"1" * 300 + b"\r", 1)
    link.receive_data(first, 1.0)
    assert link.data_to_send() == B_ACK
    assert events(link) == []
    link.receive_data(second, 1.0)
    assert link.data_to_send() == b""
    assert commit(link, 1.1) == b"R|" + b"1" * 300 + b"\r"
    assert link.data_to_send() == B_ACK


def test_refused_final_frame_is_naked_and_taken_again() -> None:
    link = receiving()
    frame = build_frame(1, b"L|1|N\r", True)
    link.receive_data(frame, 1.0)
    assert events(link) == [TextReceived(b"L|1|N\r")]
    link.refuse(1.1)  # e.g. the store could not commit it
    assert link.data_to_send() == B_NAK
    assert link.state is State.RECEIVING
    assert link.deadline == 31.1
    link.receive_data(frame, 2.0)  # the sender tries again: delivered again, not a repeat
    assert events(link) == [TextReceived(b"L|1|N\r")]
    link.acknowledge(2.1)
    assert link.data_to_send() == B_ACK


def test_a_commit_outlasting_the_senders_timer_is_naked_in_time() -> None:
    """Kept after the NAK: its repeat is ACKed as a duplicate, not delivered again."""
    link = receiving()
    frame = build_frame(1, b"L|1|N\r", True)
    link.receive_data(frame, 1.0)
    assert events(link) == [TextReceived(b"L|1|N\r")]
    link.refuse_in_time()
    link.refuse_in_time()  # said once
    assert link.data_to_send() == B_NAK
    assert link.state is State.AWAITING_DECISION
    link.acknowledge(20.0)  # the commit, late
    assert link.data_to_send() == b""  # answered already
    link.receive_data(frame, 20.1)
    assert link.data_to_send() == B_ACK
    assert events(link) == [DuplicateFrame(1)]
    link.receive_data(B_EOT, 20.2)
    assert events(link) == [TransferEnded()]


def test_a_commit_failing_after_its_nak_in_time_takes_the_repeat_again() -> None:
    link = receiving()
    first, second = build_frames(b"R|" + b"1" * 300 + b"\r", 1)
    assert feed_bytewise(link, first, 1.0) == B_ACK
    link.receive_data(second, 2.0)
    assert events(link) == [TextReceived(b"R|" + b"1" * 300 + b"\r")]
    link.refuse_in_time()
    assert link.data_to_send() == B_NAK
    link.refuse(12.0)
    assert link.data_to_send() == b""
    link.receive_data(second, 12.5)
    assert commit(link, 12.5) == b"R|" + b"1" * 300 + b"\r"
    assert link.data_to_send() == B_ACK


def test_refuse_keeps_the_text_of_the_etb_frames_before() -> None:
    link = receiving()
    text = b"R|1|^^^WBC|" + b"8" * 300 + b"\r"
    first, second = build_frames(text, 1)
    assert first[-5] == 0x17 and second[-5] == 0x03
    assert feed_bytewise(link, first, 1.0) == B_ACK
    assert feed_bytewise(link, second, 2.0) == b""
    assert events(link) == [TextReceived(text)]
    link.refuse(2.5)
    assert link.data_to_send() == B_NAK
    assert feed_bytewise(link, second, 3.0) == b""  # only the final frame comes again
    assert commit(link, 3.0) == text
    assert link.data_to_send() == B_ACK


def test_refuse_with_an_interrupt_asked_naks_and_interrupts_the_repeat() -> None:
    link = receiving()
    frame = build_frame(1, b"P|1\r", True)
    link.receive_data(frame, 1.0)
    link.interrupt()
    link.refuse(1.5)
    assert link.data_to_send() == B_NAK  # a NAK asks for the frame again; it is not lost
    link.receive_data(frame, 2.0)
    assert commit(link, 2.0) == b"P|1\r"
    assert link.data_to_send() == B_EOT


def test_acknowledge_without_pending_frame_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        Link().acknowledge(0.0)
    with pytest.raises(RuntimeError):
        Link().refuse(0.0)


def test_busy_receiver_naks_enq() -> None:
    link = Link()
    link.busy = True
    link.receive_data(B_ENQ, 0.0)
    assert link.data_to_send() == B_NAK
    assert link.state is State.NEUTRAL
    link.busy = False
    link.receive_data(B_ENQ, 10.0)
    assert link.data_to_send() == B_ACK


def test_frame_timer_returns_to_neutral_and_discards_partial_record() -> None:
    link = receiving()
    first, _ = build_frames(b"R|" + b"1" * 300 + b"\r", 1)
    link.receive_data(first, 1.0)
    link.data_to_send()
    assert link.deadline == 31.0
    link.handle_timer(30.9)
    assert link.state is State.RECEIVING
    link.handle_timer(31.0)
    assert link.state is State.NEUTRAL
    assert events(link) == [TimedOut("frame", "no frame within 30 s")]
    assert link.data_to_send() == b""


def test_frame_timer_is_configurable() -> None:
    link = receiving(LinkSettings(frame_timeout=15.0))
    assert link.deadline == 15.0
    link.handle_timer(15.0)
    assert link.state is State.NEUTRAL


def test_enq_during_transfer_restarts_it() -> None:
    link = receiving()
    first, _ = build_frames(b"R|" + b"1" * 300 + b"\r", 1)
    link.receive_data(first, 1.0)
    link.data_to_send()
    link.receive_data(B_ENQ, 2.0)
    assert link.data_to_send() == B_ACK
    assert events(link) == [TransferStarted()]
    link.receive_data(build_frame(1, b"H|\\^&\r", True), 3.0)
    assert commit(link, 3.0) == b"H|\\^&\r"  # frame 1's text is not part of it
    assert link.data_to_send() == B_ACK


def test_stray_bytes_in_neutral_are_ignored() -> None:
    link = Link()
    link.receive_data(b"\x06\x15garbage\r\n" + build_frame(1, b"P|1\r", True), 0.0)
    assert link.data_to_send() == b""
    assert events(link) == []
    assert link.state is State.NEUTRAL


# --- robustness, bounds and offsets ------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "replies"),
    [
        # The second ENQ abandons the frame and restarts the transfer, so it is answered.
        (b"\x05\x02\x05", B_ACK + B_ACK),
        # A frame cut short in its checksum: the line fell silent.
        (b"\x05\x021P\x03A", B_ACK),
        # An ENQ where the checksum belongs abandons the frame just the same.
        (b"\x05\x021P\x03\x05", B_ACK + B_ACK),
    ],
)
def test_frame_half_received_when_the_timer_expires_is_discarded(
    before: bytes, replies: bytes
) -> None:
    link = Link()
    assert feed_bytewise(link, before, 0.0) == replies
    link.handle_timer(30.0)
    assert link.state is State.NEUTRAL
    [*_, timed_out] = events(link)
    assert isinstance(timed_out, TimedOut) and timed_out.end == len(before)
    assert link.data_to_send() == b""
    # Exactly one ACK for the peer's next ENQ, and what follows is read as frames.
    assert feed_bytewise(link, B_ENQ, 40.0) == B_ACK
    [started] = events(link)
    assert isinstance(started, TransferStarted) and started.start == len(before)
    assert feed_bytewise(link, build_frame(1, b"H|\\^&\r", True), 41.0) == b""
    assert commit(link, 41.0) == b"H|\\^&\r"
    assert link.data_to_send() == B_ACK
    assert feed_bytewise(link, B_EOT, 42.0) == b""
    assert events(link) == [TransferEnded()]


def test_frame_longer_than_max_frame_bytes_is_naked_and_the_link_goes_on() -> None:
    link = receiving(LinkSettings(max_frame_bytes=100))
    runaway = b"\x021" + b"x" * 200
    sent = b""
    for i in range(len(runaway)):
        link.receive_data(runaway[i : i + 1], 1.0)
        sent += link.data_to_send()
        if i == 100:  # STX and 100 more bytes without ETB/ETX
            assert sent == B_NAK
    assert sent == B_NAK
    [rejected] = events(link)
    assert isinstance(rejected, FrameRejected) and rejected.kind == "frame_too_long"
    assert rejected.offset == 1
    # The rest of the refused frame, terminator included, is noise; the repeat is read.
    assert feed_bytewise(link, b"x" * 50 + b"\x03AB\r\n", 2.0) == b""
    assert events(link) == []
    assert feed_bytewise(link, build_frame(1, b"P|1\r", True), 3.0) == b""
    assert commit(link, 3.0) == b"P|1\r"
    assert link.data_to_send() == B_ACK


def test_message_longer_than_max_message_bytes_is_naked_and_the_link_goes_on() -> None:
    text = b"R|1|" + b"7" * 400 + b"\r"
    first, second = build_frames(text, 1)
    link = receiving(LinkSettings(max_message_bytes=len(text) - 1))
    assert feed_bytewise(link, first, 1.0) == B_ACK
    for attempt in range(2):  # every repeat is refused alike
        assert feed_bytewise(link, second, 2.0 + attempt) == B_NAK
        [rejected] = events(link)
        assert isinstance(rejected, FrameRejected) and rejected.kind == "message_too_long"
        assert rejected.offset == 1 + len(first) + attempt * len(second)
    assert feed_bytewise(link, B_EOT, 4.0) == b""  # the sender gives up
    assert events(link) == [TransferEnded()]
    assert feed_bytewise(link, B_ENQ + build_frame(1, b"L|1|N\r", True), 5.0) == B_ACK
    assert events(link)[0] == TransferStarted()
    assert link.state is State.AWAITING_DECISION
    link.acknowledge(5.0)
    assert link.data_to_send() == B_ACK
    # A message of exactly the bound is taken.
    exact = receiving(LinkSettings(max_message_bytes=len(text)))
    assert feed_bytewise(exact, first + second, 1.0) == B_ACK
    assert commit(exact, 1.0) == text


@pytest.mark.parametrize(
    "settings",
    [
        LinkSettings(),
        LinkSettings(max_frame_bytes=8 << 20, tolerances=FrameTolerances(long_frames=True)),
    ],
    ids=["refused", "read"],
)
def test_huge_frame_in_small_reads_is_scanned_in_linear_time(settings: LinkSettings) -> None:
    link = receiving(settings)
    text = b"x" * (4 << 20)
    wire = build_frame(1, text, True)
    started = time.perf_counter()
    for i in range(0, len(wire), 256):
        link.receive_data(wire[i : i + 256], 1.0)
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0
    if settings.max_frame_bytes < len(wire):
        assert link.data_to_send() == B_NAK
        [rejected] = events(link)
        assert isinstance(rejected, FrameRejected) and rejected.kind == "frame_too_long"
    else:
        assert link.data_to_send() == b""
        assert commit(link, 1.0) == text
    assert link.received == 1 + len(wire)


def test_events_carry_stream_offsets() -> None:
    link = Link()
    # More noise than the link keeps of consumed bytes, so offsets must survive that.
    noise = b"\x06\x15" + b"noise\r\n" * 20_000
    first, second = build_frames(b"R|" + b"5" * 300 + b"\r", 1)
    bad = build_frame(2, b"P|1\r", True)[:-4] + b"00\r\n"
    wire = noise + B_ENQ + first + b"\r\n" + bad + second + B_EOT
    link.receive_data(noise, 0.0)
    assert feed_bytewise(link, wire[len(noise) :], 1.0) == B_ACK + B_ACK + B_NAK
    assert link.received == len(wire)
    link.acknowledge(2.0)
    assert link.data_to_send() == B_ACK
    started, rejected, text, ended = events(link)
    assert isinstance(started, TransferStarted) and started.start == len(noise)
    assert isinstance(rejected, FrameRejected) and rejected.offset == wire.index(bad)
    assert isinstance(text, TextReceived)
    assert text.start == wire.index(first)  # its first frame, not the final one
    assert text.end == wire.index(second) + len(second)  # just past its CR LF
    assert isinstance(ended, TransferEnded) and ended.end == len(wire)
    # A transfer that times out ends past the bytes it discarded.
    link.receive_data(B_ENQ + first[:100], 3.0)
    link.handle_timer(33.0)
    started, timed_out = events(link)
    assert isinstance(started, TransferStarted) and started.start == len(wire)
    assert isinstance(timed_out, TimedOut) and timed_out.end == len(wire) + 101


# --- corner cases found by the stateful test --------------------------------------------


def test_etx_frame_like_the_previous_etb_frame_is_not_acked_as_a_repeat() -> None:
    link = receiving()
    link.receive_data(build_frame(1, b"P|1", False), 1.0)
    assert link.data_to_send() == B_ACK
    # Same number and text, but it ends the message: it is not the ETB frame again, so it
    # must either be refused or wait for a commit; it must never be ACKed as it stands.
    link.receive_data(build_frame(1, b"P|1", True), 2.0)
    assert link.data_to_send() != B_ACK


@pytest.mark.parametrize(
    "wire",
    [
        # A long frame (long_frames tolerance) whose ETX comes in the same read.
        build_frame(1, b"x" * 150 + b"\r", True),
        # A runaway frame abandoned by the next frame's STX in the same read.
        b"\x021" + b"x" * 150 + build_frame(1, b"P|1\r", True),
    ],
    ids=["terminated", "abandoned"],
)
def test_frame_longer_than_max_frame_bytes_is_refused_however_it_is_read(wire: bytes) -> None:
    settings = LinkSettings(max_frame_bytes=100, tolerances=FrameTolerances(long_frames=True))
    bytewise = receiving(settings)
    assert feed_bytewise(bytewise, wire, 1.0) == B_NAK  # refused at its 101st byte
    whole = receiving(settings)
    whole.receive_data(wire, 1.0)
    assert whole.data_to_send() == B_NAK


def test_busy_enq_during_a_transfer_does_not_leave_half_a_message() -> None:
    link = receiving()
    link.receive_data(build_frame(1, b"R|1|", False), 1.0)
    assert link.data_to_send() == B_ACK
    link.busy = True
    link.receive_data(B_ENQ, 2.0)  # the sender restarts; we cannot take a message now
    assert link.data_to_send() == B_NAK
    link.receive_data(build_frame(2, b"^^^GLU|5.4\r", True), 3.0)
    # Frame 1's text is gone, so frame 2 must not complete a message on its own.
    assert [e for e in events(link) if isinstance(e, TextReceived)] == []


def test_text_starts_at_its_first_frame_even_an_empty_one() -> None:
    link = receiving()
    first, second = build_frame(1, b"", False), build_frame(2, b"L|1|N\r", True)
    link.receive_data(first + second, 1.0)
    assert link.data_to_send() == B_ACK
    [text] = events(link)
    assert isinstance(text, TextReceived) and text.start == 1


# --- tolerances ---------------------------------------------------------------------------


def test_tolerance_long_frames() -> None:
    link = receiving(LinkSettings(tolerances=FrameTolerances(long_frames=True)))
    link.receive_data(build_frame(1, b"x" * 2000 + b"\r", True), 1.0)
    assert commit(link, 1.0) == b"x" * 2000 + b"\r"
    assert link.data_to_send() == B_ACK


def test_tolerance_no_frame_numbers_and_no_checksum() -> None:
    tolerances = FrameTolerances(no_frame_numbers=True, no_checksum=True)
    link = receiving(LinkSettings(tolerances=tolerances))
    link.receive_data(b"\x02H|\\^&\rP|1\rL|1|N\r\x03", 1.0)
    assert commit(link, 1.0) == b"H|\\^&\rP|1\rL|1|N\r"
    assert link.data_to_send() == B_ACK
    link.receive_data(B_EOT, 2.0)
    assert events(link) == [TransferEnded()]


def test_without_tolerance_missing_frame_number_is_naked() -> None:
    link = receiving()
    frame = b"H|\\^&\r\x03"
    link.receive_data(b"\x02" + frame + checksum(frame) + b"\r\n", 1.0)
    assert link.data_to_send() == B_NAK


def test_no_checksum_tolerance_still_reads_frames_that_have_one() -> None:
    link = receiving(LinkSettings(tolerances=FrameTolerances(no_checksum=True)))
    link.receive_data(build_frame(1, b"P|1\r", True) + build_frame(2, b"L|1\r", True), 1.0)
    assert link.data_to_send() == b""
    assert commit(link, 1.0) == b"P|1\r"
    assert commit(link, 1.0) == b"L|1\r"
    assert link.data_to_send() == B_ACK + B_ACK


def test_tolerance_line_feeds_in_text() -> None:
    strict = receiving()
    strict.receive_data(build_frame(1, b"P|1\r\nO|1\r\n", True), 1.0)
    assert strict.data_to_send() == B_NAK
    tolerant = receiving(LinkSettings(tolerances=FrameTolerances(line_feeds_in_text=True)))
    tolerant.receive_data(build_frame(1, b"P|1\r\nO|1\r\n", True), 1.0)
    assert commit(tolerant, 1.0) == b"P|1\r\nO|1\r\n"
    assert tolerant.data_to_send() == B_ACK


def test_tolerance_records_span_frames() -> None:
    tolerant = receiving(LinkSettings(tolerances=FrameTolerances(records_span_frames=True)))
    tolerant.receive_data(build_frame(1, b"R|1|^^^GL", True), 1.0)
    # That ETX frame ends no record, so it completes no text: it is answered at once.
    assert tolerant.data_to_send() == B_ACK
    assert events(tolerant) == []
    second = build_frame(2, b"U|5.4\r", True)
    tolerant.receive_data(second, 2.0)
    assert tolerant.data_to_send() == b""
    assert events(tolerant) == [TextReceived(b"R|1|^^^GLU|5.4\r")]
    # A refused commit keeps the text of the earlier ETX frame too.
    tolerant.refuse(2.5)
    assert tolerant.data_to_send() == B_NAK
    tolerant.receive_data(second, 3.0)
    assert commit(tolerant, 3.0) == b"R|1|^^^GLU|5.4\r"
    assert tolerant.data_to_send() == B_ACK
    strict = receiving()
    strict.receive_data(build_frame(1, b"R|1|^^^GL", True), 1.0)
    assert commit(strict, 1.0) == b"R|1|^^^GL"


# --- sender ------------------------------------------------------------------------------


def sending(records: list[bytes], settings: LinkSettings | None = None) -> tuple[Link, int]:
    link = Link(settings)
    message_id = link.send_message(records, 0.0)
    assert link.data_to_send() == B_ENQ
    assert link.state is State.ESTABLISHING
    return link, message_id


def test_sends_a_message_frame_by_frame() -> None:
    link, message_id = sending([b"H|\\^&", b"L|1|N"])
    link.receive_data(B_ACK, 1.0)
    assert link.data_to_send() == build_frame(1, b"H|\\^&\r", True)
    link.receive_data(B_ACK, 2.0)
    assert link.data_to_send() == build_frame(2, b"L|1|N\r", True)
    link.receive_data(B_ACK, 3.0)
    assert link.data_to_send() == B_EOT
    assert events(link) == [MessageSent(message_id)]
    assert link.state is State.NEUTRAL


def test_long_record_sent_in_etb_frames() -> None:
    record = b"O|1|" + b"A" * 500
    link, _ = sending([record])
    link.receive_data(B_ACK, 0.1)
    sent = b""
    for _ in range(3):
        sent += link.data_to_send()
        link.receive_data(B_ACK, 0.2)
    assert sent == b"".join(build_frames(record + b"\r", 1))
    assert link.data_to_send() == B_EOT


def test_resends_on_nak_and_on_any_other_reply() -> None:
    link, _ = sending([b"P|1"])
    link.receive_data(B_ACK, 0.1)
    frame = link.data_to_send()
    link.receive_data(B_NAK, 0.2)
    assert link.data_to_send() == frame
    link.receive_data(b"?", 0.3)
    assert link.data_to_send() == frame
    link.receive_data(B_ACK, 0.4)
    assert link.data_to_send() == B_EOT


def test_a_doubled_ack_moves_the_sender_on_one_frame() -> None:
    link, message_id = sending([b"H|\\^&", b"O|1|123", b"L|1|N"])
    link.receive_data(B_ACK, 1.0)
    assert link.data_to_send() == build_frame(1, b"H|\\^&\r", True)
    before = link.received
    link.receive_data(B_ACK + B_ACK, 2.0)
    # The second ACK came before frame 2 was sent: it cannot be frame 2's reply.
    assert link.data_to_send() == build_frame(2, b"O|1|123\r", True)
    assert link.received == before + 2  # discarded, but counted
    link.receive_data(B_ACK, 3.0)
    assert link.data_to_send() == build_frame(3, b"L|1|N\r", True)
    link.receive_data(B_ACK, 4.0)
    assert link.data_to_send() == B_EOT
    assert events(link) == [MessageSent(message_id)]


@pytest.mark.parametrize(
    ("replies", "after"),
    [
        # To the ENQ: the second ACK is not frame 1's reply.
        (B_ACK + B_ACK, build_frame(1, b"P|1\r", True)),
        # Noise, then the ACK: the frame goes again once, and that ACK is not its reply.
        (b"\r" + B_ACK, build_frame(1, b"P|1\r", True)),
        (B_NAK + B_NAK + B_NAK, build_frame(1, b"P|1\r", True)),
    ],
    ids=["ack-ack-to-enq", "noise-ack", "nak-nak-nak"],
)
def test_replies_that_came_with_the_one_acted_on_are_not_read(replies: bytes, after: bytes) -> None:
    link, message_id = sending([b"P|1"])
    if replies.startswith(B_ACK):
        link.receive_data(replies, 1.0)  # to the ENQ
    else:
        link.receive_data(B_ACK, 0.5)
        assert link.data_to_send() == after
        link.receive_data(replies, 1.0)
    assert link.data_to_send() == after
    assert events(link) == []
    assert link.state is State.SENDING and link.deadline == 16.0
    link.receive_data(B_ACK, 2.0)
    assert link.data_to_send() == B_EOT
    assert events(link) == [MessageSent(message_id)]


def test_an_ack_that_came_with_the_last_frames_ack_is_not_the_next_enqs_reply() -> None:
    link, first = sending([b"P|1"])
    second = link.send_message([b"P|2"], 0.0)
    link.receive_data(B_ACK, 0.1)
    link.data_to_send()
    link.receive_data(B_ACK + B_ACK, 0.2)
    # EOT ends the first message and ENQ bids for the second; the second ACK came before
    # that ENQ and does not start the transfer.
    assert link.data_to_send() == B_EOT + B_ENQ
    assert link.state is State.ESTABLISHING
    link.receive_data(B_ACK, 0.3)
    assert link.data_to_send() == build_frame(1, b"P|2\r", True)
    link.receive_data(B_ACK, 0.4)
    assert link.data_to_send() == B_EOT
    assert events(link) == [MessageSent(first), MessageSent(second)]


def test_bytes_that_came_with_an_interrupt_are_not_read() -> None:
    link, message_id = sending([b"H|\\^&", b"L|1|N"])
    link.receive_data(B_ACK, 0.5)
    link.data_to_send()
    before = link.received
    link.receive_data(B_EOT + B_ACK + B_ENQ, 1.0)
    assert link.data_to_send() == B_EOT
    assert events(link) == [SendInterrupted(message_id, 16.0)]
    assert link.state is State.NEUTRAL
    assert link.received == before + 3
    # The peer, having seen our EOT, bids again.
    link.receive_data(B_ENQ, 2.0)
    assert link.data_to_send() == B_ACK


def test_gives_up_after_six_attempts_and_sends_eot() -> None:
    link, message_id = sending([b"P|1"])
    link.receive_data(B_ACK, 0.1)
    frame = link.data_to_send()
    for attempt in range(2, 7):
        link.receive_data(B_NAK, float(attempt))
        assert link.data_to_send() == frame, f"attempt {attempt}"
    link.receive_data(B_NAK, 7.0)
    assert link.data_to_send() == B_EOT
    assert events(link) == [SendFailed(message_id, "6 attempts refused")]
    assert link.state is State.NEUTRAL
    assert link.pending_messages == 0


def test_reply_timer_aborts_with_eot() -> None:
    link, message_id = sending([b"P|1"])
    link.receive_data(B_ACK, 1.0)
    link.data_to_send()
    assert link.deadline == 16.0
    link.handle_timer(15.9)
    assert link.data_to_send() == b""
    link.handle_timer(16.0)
    assert link.data_to_send() == B_EOT
    assert events(link) == [
        TimedOut("reply", "no reply to frame within 15 s"),
        SendFailed(message_id, "no reply to frame"),
    ]


def test_no_reply_to_enq_times_out() -> None:
    link, message_id = sending([b"P|1"])
    assert link.deadline == 15.0
    link.handle_timer(15.0)
    assert link.data_to_send() == B_EOT
    assert events(link)[-1] == SendFailed(message_id, "no reply to ENQ")


def test_nak_to_enq_means_busy_retry_after_10_s() -> None:
    link, _ = sending([b"P|1"])
    link.receive_data(B_NAK, 2.0)
    assert events(link) == [Busy(12.0)]
    assert link.state is State.NEUTRAL
    assert link.deadline == 12.0
    link.handle_timer(11.9)
    assert link.data_to_send() == b""
    link.handle_timer(12.0)
    assert link.data_to_send() == B_ENQ


def test_contention_host_backs_off_20_s_and_answers_the_instrument() -> None:
    link, message_id = sending([b"P|1"])
    link.receive_data(B_ENQ, 1.0)  # the instrument bid at the same time
    assert link.data_to_send() == b""  # the host does not answer the colliding ENQ
    assert events(link) == [Contention(21.0)]
    link.receive_data(B_ENQ, 2.0)  # the instrument tries again after 1 s
    assert link.data_to_send() == B_ACK
    link.receive_data(build_frame(1, b"H|\\^&\r", True) + B_EOT, 3.0)
    assert link.data_to_send() == b""
    assert events(link) == [TransferStarted(), TextReceived(b"H|\\^&\r")]
    link.acknowledge(3.0)
    # The instrument is done, but the host still waits the 20 s before bidding again.
    assert link.data_to_send() == B_ACK
    assert events(link) == [TransferEnded()]
    assert link.pending_messages == 1
    assert link.deadline == 21.0
    link.handle_timer(20.9)
    assert link.data_to_send() == b""
    link.handle_timer(21.0)
    assert link.data_to_send() == B_ENQ
    link.receive_data(B_ACK, 21.1)
    link.receive_data(B_ACK, 21.2)
    assert events(link)[-1] == MessageSent(message_id)


@pytest.mark.parametrize(
    ("refusal", "not_before"),
    [
        (B_ENQ, 21.0),  # contention: the host waits 20 s
        (B_NAK, 11.0),  # busy: 10 s
    ],
    ids=["contention", "busy"],
)
def test_the_peers_eot_never_shortens_a_hold_off(refusal: bytes, not_before: float) -> None:
    link, _ = sending([b"H|\\^&", b"L|1|N"])
    for byte in refusal:
        link.receive_data(bytes([byte]), 1.0)
    assert link.state is State.NEUTRAL and link.deadline == not_before
    link.data_to_send()
    events(link)
    # The peer takes the line for a message of its own, and ends it with EOT.
    link.receive_data(B_ENQ + build_frame(1, b"H|\\^&\r", True), 2.0)
    link.acknowledge(2.0)
    link.receive_data(B_EOT, 3.0)
    assert link.data_to_send() == B_ACK + B_ACK
    assert [type(e) for e in events(link)] == [TransferStarted, TextReceived, TransferEnded]
    assert link.deadline == not_before
    link.handle_timer(not_before - 0.1)
    assert link.data_to_send() == b""
    link.handle_timer(not_before)
    assert link.data_to_send() == B_ENQ


def test_the_message_the_peer_interrupted_for_ends_the_interrupt_hold_off() -> None:
    link, _ = sending([b"H|\\^&", b"L|1|N"])
    link.receive_data(B_ACK, 1.0)  # frame 1 taken
    link.receive_data(B_EOT, 1.0)  # then the receiver interrupts
    assert link.data_to_send().endswith(B_EOT) and link.deadline == 16.0
    events(link)
    link.receive_data(B_ENQ + build_frame(1, b"H|\\^&\r", True), 2.0)
    link.acknowledge(2.0)
    assert link.data_to_send() == B_ACK + B_ACK
    link.receive_data(B_EOT, 3.0)  # its message done: ours goes again at once
    assert link.data_to_send() == B_ENQ


def test_an_interrupt_then_contention_keeps_the_contention_hold_off() -> None:
    link, _ = sending([b"H|\\^&", b"L|1|N"])
    link.receive_data(B_ACK, 1.0)
    link.receive_data(B_EOT, 1.0)  # interrupted: no bid before 16 s
    link.data_to_send()
    link.handle_timer(16.0)
    assert link.data_to_send() == B_ENQ
    link.receive_data(B_ENQ, 16.5)  # contention: no bid before 36.5 s
    link.receive_data(B_ENQ + build_frame(1, b"H|\\^&\r", True), 17.0)
    link.acknowledge(17.0)
    link.receive_data(B_EOT, 18.0)
    link.data_to_send()
    assert link.deadline == 36.5


def test_the_peers_eot_after_a_hold_off_lets_the_host_bid_at_once() -> None:
    link, _ = sending([b"P|1"])
    link.receive_data(B_ENQ, 1.0)  # contention: no bid before 21 s
    link.receive_data(B_ENQ, 2.0)
    link.receive_data(build_frame(1, b"H|\\^&\r", True), 30.0)
    link.acknowledge(30.0)
    assert link.data_to_send() == B_ACK + B_ACK
    link.receive_data(B_EOT, 31.0)
    assert link.data_to_send() == B_ENQ


def test_contention_host_waits_20_s_when_instrument_stays_silent() -> None:
    link, _ = sending([b"P|1"])
    link.receive_data(B_ENQ, 1.0)
    events(link)
    link.handle_timer(20.9)
    assert link.data_to_send() == b""
    link.handle_timer(21.0)
    assert link.data_to_send() == B_ENQ


def test_contention_instrument_retries_after_1_s() -> None:
    link, _ = sending([b"R|1"], LinkSettings(role=Role.INSTRUMENT))
    link.receive_data(B_ENQ, 5.0)
    assert events(link) == [Contention(6.0)]
    assert link.data_to_send() == b""
    link.handle_timer(6.0)
    assert link.data_to_send() == B_ENQ


def test_sender_honours_receiver_interrupt() -> None:
    link, message_id = sending([b"H|\\^&", b"P|1", b"L|1|N"])
    link.receive_data(B_ACK, 1.0)
    link.data_to_send()
    link.receive_data(B_EOT, 2.0)  # frame 1 taken, but the receiver wants the line
    assert link.data_to_send() == B_EOT
    assert events(link) == [SendInterrupted(message_id, 17.0)]
    assert link.state is State.NEUTRAL
    assert link.pending_messages == 1
    link.handle_timer(16.0)
    assert link.data_to_send() == b""
    link.handle_timer(17.0)
    assert link.data_to_send() == B_ENQ
    link.receive_data(B_ACK, 17.1)
    assert link.data_to_send() == build_frame(1, b"H|\\^&\r", True)  # the whole message again


def test_interrupt_on_the_last_frame_completes_the_message() -> None:
    link, message_id = sending([b"L|1|N"])
    link.receive_data(B_ACK, 1.0)
    link.data_to_send()
    link.receive_data(B_EOT, 2.0)
    assert link.data_to_send() == B_EOT
    assert events(link) == [MessageSent(message_id)]


def test_messages_queued_while_receiving_are_sent_after() -> None:
    link = receiving()
    link.send_message([b"O|1"], 0.5)
    assert link.data_to_send() == b""
    link.receive_data(build_frame(1, b"Q|1\r", True), 1.0)
    assert commit(link, 1.0) == b"Q|1\r"
    assert link.data_to_send() == B_ACK
    link.receive_data(B_EOT, 2.0)
    assert link.data_to_send() == B_ENQ


def test_two_queued_messages_go_one_after_the_other() -> None:
    link, first = sending([b"P|1"])
    second = link.send_message([b"P|2"], 0.0)
    link.receive_data(B_ACK, 0.1)
    link.receive_data(B_ACK, 0.2)
    assert link.data_to_send() == build_frame(1, b"P|1\r", True) + B_EOT + B_ENQ
    link.receive_data(B_ACK, 0.3)
    link.receive_data(B_ACK, 0.4)
    assert link.data_to_send() == build_frame(1, b"P|2\r", True) + B_EOT
    assert events(link) == [MessageSent(first), MessageSent(second)]


def test_a_peer_link_pair_exchanges_messages_both_ways() -> None:
    host = Link(LinkSettings(role=Role.HOST))
    analyser = Link(LinkSettings(role=Role.INSTRUMENT))
    records = [b"H|\\^&|||XN-550", b"R|1|^^^WBC|" + b"8" * 600, b"L|1|N"]
    analyser.send_message(records, 0.0)
    host.send_message([b"H|\\^&", b"O|1|123", b"L|1|N"], 0.0)  # contention
    received: list[bytes] = []
    for step in range(200):
        now = step * 0.5
        host.handle_timer(now)
        analyser.handle_timer(now)
        host.receive_data(analyser.data_to_send(), now)
        analyser.receive_data(host.data_to_send(), now)
        for link in (host, analyser):
            for event in events(link):
                if isinstance(event, TextReceived):
                    received.append(event.text)
                    link.acknowledge(now)
        if host.pending_messages == 0 and analyser.pending_messages == 0:
            break
    assert host.pending_messages == 0 and analyser.pending_messages == 0
    assert [r.rstrip(b"\r") for r in received] == [*records, b"H|\\^&", b"O|1|123", b"L|1|N"]


def test_tolerance_numbering_restarts_for_each_message() -> None:
    again = [build_frame(1, b"H|\\^&\r", True), build_frame(2, b"L|1|N\r", True)]
    strict = receiving()
    strict.receive_data(b"".join(again + again), 1.0)
    assert commit(strict, 1.0) == b"H|\\^&\r"
    assert commit(strict, 1.0) == b"L|1|N\r"
    # the second frame 1 is refused; its frame 2 then looks like a repeat of the first's
    assert strict.data_to_send() == B_ACK + B_ACK + B_NAK + B_ACK
    assert [type(e) for e in events(strict)] == [FrameRejected, DuplicateFrame]
    tolerant = receiving(LinkSettings(tolerances=FrameTolerances(numbering_restarts=True)))
    tolerant.receive_data(b"".join(again + again), 1.0)
    assert [commit(tolerant, 1.0) for _ in range(4)] == [b"H|\\^&\r", b"L|1|N\r"] * 2
    assert tolerant.data_to_send() == B_ACK * 4
    # Only a frame 1 that starts a message restarts the count.
    tolerant.receive_data(build_frame(1, b"P|1\r", True), 2.0)
    assert tolerant.data_to_send() == B_NAK


# --- closing -----------------------------------------------------------------------------


def test_closing_while_sending_ends_our_transfer_with_eot_and_fails_the_queue() -> None:
    link, first = sending([b"P|1"])
    second = link.send_message([b"P|2"], 0.0)
    link.receive_data(B_ACK, 1.0)
    assert link.data_to_send() == build_frame(1, b"P|1\r", True)
    link.close()
    assert link.data_to_send() == B_EOT
    assert events(link) == [SendFailed(first, "link closed"), SendFailed(second, "link closed")]
    assert link.pending_messages == 0 and link.deadline is None
    # The peer's late ACK starts nothing, and nothing more is ever sent.
    link.receive_data(B_ACK, 2.0)
    later = link.send_message([b"P|3"], 3.0)
    link.handle_timer(100.0)
    assert link.data_to_send() == b""
    assert events(link) == [SendFailed(later, "link closed")]


def test_closing_while_establishing_sends_eot_for_the_enq() -> None:
    link, message_id = sending([b"P|1"])
    link.close()
    assert link.data_to_send() == B_EOT
    assert events(link) == [SendFailed(message_id, "link closed")]


def test_closing_while_the_peer_sends_answers_nothing_more_but_counts_every_byte() -> None:
    link = receiving()
    link.receive_data(build_frame(1, b"H|\\^&\r", False), 1.0)
    assert link.data_to_send() == B_ACK
    link.close()
    assert link.data_to_send() == b""  # the line is the peer's: no EOT from us
    late = build_frame(2, b"L|1|N\r", True) + B_EOT + B_ENQ
    before = link.received
    link.receive_data(late, 2.0)
    assert link.data_to_send() == b""
    assert events(link) == []
    assert link.received == before + len(late)
    assert link.pending_text == b"H|\\^&\r"  # kept for the shell to store as unfinished


def test_closing_while_a_commit_is_under_way_still_answers_it_then_nothing() -> None:
    link = receiving()
    link.receive_data(build_frame(1, b"L|1|N\r", True), 1.0)
    event = link.next_event()
    assert isinstance(event, TextReceived)
    link.close()
    assert link.data_to_send() == b""
    link.receive_data(B_EOT + B_ENQ, 1.5)
    link.acknowledge(2.0)
    assert link.data_to_send() == B_ACK  # what was kept is acknowledged
    assert events(link) == []  # the EOT and ENQ that came after are not read
    assert link.deadline is None


def test_closing_while_a_commit_is_under_way_and_it_fails_naks_it() -> None:
    link = receiving()
    link.receive_data(build_frame(1, b"L|1|N\r", True), 1.0)
    assert isinstance(link.next_event(), TextReceived)
    link.close()
    link.refuse(2.0)
    assert link.data_to_send() == B_NAK
    assert link.deadline is None
