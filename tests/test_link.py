"""E1381 link layer, byte by byte: every rule, timer and tolerance."""

from __future__ import annotations

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
    assert link.data_to_send() == B_ACK
    assert events(link) == [TextReceived(b"H|\\^&\r")]
    link.receive_data(B_EOT, 2.0)
    assert events(link) == [TransferEnded()]
    assert link.state is State.NEUTRAL


def test_bytes_arriving_one_at_a_time() -> None:
    link = receiving()
    wire = build_frame(1, b"R|1|^^^GLU|5.4\r", True)
    for i in range(len(wire)):
        link.receive_data(wire[i : i + 1], 1.0)
        if i < len(wire) - 1:
            assert link.data_to_send() == b""
    assert link.data_to_send() == B_ACK
    assert events(link) == [TextReceived(b"R|1|^^^GLU|5.4\r")]


def test_message_delivered_only_when_the_etx_frame_arrives() -> None:
    link = receiving()
    text = b"R|1|" + b"7" * 400 + b"\r"
    first, second = build_frames(text, 1)
    link.receive_data(first, 1.0)
    assert link.data_to_send() == B_ACK
    assert events(link) == []
    link.receive_data(second, 2.0)
    assert link.data_to_send() == B_ACK
    assert events(link) == [TextReceived(text)]


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
    assert link.data_to_send() == B_ACK
    assert events(link) == [TextReceived(b"P|1\r")]


def test_checksum_in_lowercase_hex_is_accepted() -> None:
    link = receiving()
    frame = build_frame(1, b"P|1\r", True)
    link.receive_data(frame[:-4] + frame[-4:-2].lower() + b"\r\n", 1.0)
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
    assert link.data_to_send() == B_ACK
    assert events(link) == [TextReceived(b"P|1\r")]
    link.receive_data(frame, 2.0)  # our ACK was lost; the sender tries again
    assert link.data_to_send() == B_ACK
    assert events(link) == [DuplicateFrame(1)]
    link.receive_data(build_frame(2, b"L|1|N\r", True), 3.0)
    assert link.data_to_send() == B_ACK
    assert events(link) == [TextReceived(b"L|1|N\r")]


def test_same_number_with_other_text_is_not_a_repeat() -> None:
    link = receiving()
    link.receive_data(build_frame(1, b"P|1\r", True), 1.0)
    link.data_to_send()
    events(link)
    link.receive_data(build_frame(1, b"P|2\r", True), 2.0)
    assert link.data_to_send() == B_NAK


@pytest.mark.parametrize("char", [0x01, 0x02, 0x05, 0x06, 0x10, 0x15, 0x16, 0x11, 0x14, 0x0A])
def test_restricted_character_in_text_is_naked(char: int) -> None:
    link = receiving()
    link.receive_data(build_frame(1, b"P|" + bytes([char]) + b"1\r", True), 1.0)
    assert link.data_to_send() == B_NAK
    [rejected] = events(link)
    assert isinstance(rejected, FrameRejected)
    # STX inside a frame abandons it (the sender restarted): what follows fails its checksum.
    assert rejected.kind == ("checksum" if char == 0x02 else "control_character")


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
        assert link.data_to_send() == B_ACK
    assert [e.text for e in events(link) if isinstance(e, TextReceived)] == texts


def test_receiver_interrupt_answers_eot_instead_of_ack() -> None:
    link = receiving()
    link.interrupt()
    link.receive_data(build_frame(1, b"H|\\^&\r", True), 1.0)
    assert link.data_to_send() == B_EOT
    assert events(link) == [TextReceived(b"H|\\^&\r")]
    link.receive_data(B_EOT, 2.0)  # the sender honours it
    assert events(link) == [TransferEnded()]


def test_deferred_final_ack_waits_for_the_shell() -> None:
    link = receiving(LinkSettings(defer_final_ack=True))
    link.receive_data(build_frame(1, b"L|1|N\r", True), 1.0)
    assert link.data_to_send() == b""
    assert events(link) == [TextReceived(b"L|1|N\r")]
    assert link.state is State.AWAITING_DECISION
    link.receive_data(B_EOT, 1.5)  # nothing is read while the decision is pending
    assert events(link) == []
    link.acknowledge(2.0)
    assert link.data_to_send() == B_ACK
    assert events(link) == [TransferEnded()]


def test_deferred_ack_only_for_final_frames() -> None:
    link = receiving(LinkSettings(defer_final_ack=True))
    first, second = build_frames(b"R|" + b"1" * 300 + b"\r", 1)
    link.receive_data(first, 1.0)
    assert link.data_to_send() == B_ACK
    link.receive_data(second, 1.0)
    assert link.data_to_send() == b""
    link.acknowledge(1.1)
    assert link.data_to_send() == B_ACK


def test_refused_final_frame_is_naked_and_taken_again() -> None:
    link = receiving(LinkSettings(defer_final_ack=True))
    frame = build_frame(1, b"L|1|N\r", True)
    link.receive_data(frame, 1.0)
    assert events(link) == [TextReceived(b"L|1|N\r")]
    link.refuse(1.1)  # e.g. the store could not commit it
    assert link.data_to_send() == B_NAK
    link.receive_data(frame, 2.0)  # the sender tries again: delivered again, not a repeat
    assert events(link) == [TextReceived(b"L|1|N\r")]
    link.acknowledge(2.1)
    assert link.data_to_send() == B_ACK


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
    assert events(link) == [TextReceived(b"H|\\^&\r")]


def test_stray_bytes_in_neutral_are_ignored() -> None:
    link = Link()
    link.receive_data(b"\x06\x15garbage\r\n" + build_frame(1, b"P|1\r", True), 0.0)
    assert link.data_to_send() == b""
    assert events(link) == []
    assert link.state is State.NEUTRAL


# --- tolerances ---------------------------------------------------------------------------


def test_tolerance_long_frames() -> None:
    link = receiving(LinkSettings(tolerances=FrameTolerances(long_frames=True)))
    link.receive_data(build_frame(1, b"x" * 2000 + b"\r", True), 1.0)
    assert link.data_to_send() == B_ACK


def test_tolerance_no_frame_numbers_and_no_checksum() -> None:
    tolerances = FrameTolerances(no_frame_numbers=True, no_checksum=True)
    link = receiving(LinkSettings(tolerances=tolerances))
    link.receive_data(b"\x02H|\\^&\rP|1\rL|1|N\r\x03", 1.0)
    assert link.data_to_send() == B_ACK
    assert events(link) == [TextReceived(b"H|\\^&\rP|1\rL|1|N\r")]
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
    assert link.data_to_send() == B_ACK + B_ACK
    assert [e for e in events(link) if isinstance(e, TextReceived)] == [
        TextReceived(b"P|1\r"),
        TextReceived(b"L|1\r"),
    ]


def test_tolerance_line_feeds_in_text() -> None:
    strict = receiving()
    strict.receive_data(build_frame(1, b"P|1\r\nO|1\r\n", True), 1.0)
    assert strict.data_to_send() == B_NAK
    tolerant = receiving(LinkSettings(tolerances=FrameTolerances(line_feeds_in_text=True)))
    tolerant.receive_data(build_frame(1, b"P|1\r\nO|1\r\n", True), 1.0)
    assert tolerant.data_to_send() == B_ACK
    assert events(tolerant) == [TextReceived(b"P|1\r\nO|1\r\n")]


def test_tolerance_records_span_frames() -> None:
    tolerant = receiving(LinkSettings(tolerances=FrameTolerances(records_span_frames=True)))
    tolerant.receive_data(build_frame(1, b"R|1|^^^GL", True), 1.0)
    tolerant.receive_data(build_frame(2, b"U|5.4\r", True), 2.0)
    assert tolerant.data_to_send() == B_ACK + B_ACK
    assert events(tolerant) == [TextReceived(b"R|1|^^^GLU|5.4\r")]
    strict = receiving()
    strict.receive_data(build_frame(1, b"R|1|^^^GL", True), 1.0)
    assert events(strict) == [TextReceived(b"R|1|^^^GL")]


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
    # The instrument is done, so the host bids at once rather than after the 20 s.
    assert link.data_to_send() == B_ACK + B_ENQ
    assert link.pending_messages == 1
    link.receive_data(B_ACK, 4.0)
    link.receive_data(B_ACK, 4.1)
    assert events(link)[-1] == MessageSent(message_id)


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
        received += [e.text for e in events(host) if isinstance(e, TextReceived)]
        received += [e.text for e in events(analyser) if isinstance(e, TextReceived)]
        if host.pending_messages == 0 and analyser.pending_messages == 0:
            break
    assert host.pending_messages == 0 and analyser.pending_messages == 0
    assert [r.rstrip(b"\r") for r in received] == [*records, b"H|\\^&", b"O|1|123", b"L|1|N"]


def test_tolerance_numbering_restarts_for_each_message() -> None:
    again = [build_frame(1, b"H|\\^&\r", True), build_frame(2, b"L|1|N\r", True)]
    strict = receiving()
    strict.receive_data(b"".join(again + again), 1.0)
    # the second frame 1 is refused; its frame 2 then looks like a repeat of the first's
    assert strict.data_to_send() == B_ACK + B_ACK + B_NAK + B_ACK
    assert [e for e in events(strict) if isinstance(e, TextReceived)] == [
        TextReceived(b"H|\\^&\r"),
        TextReceived(b"L|1|N\r"),
    ]
    tolerant = receiving(LinkSettings(tolerances=FrameTolerances(numbering_restarts=True)))
    tolerant.receive_data(b"".join(again + again), 1.0)
    assert tolerant.data_to_send() == B_ACK * 4
    assert len([e for e in events(tolerant) if isinstance(e, TextReceived)]) == 4
    # Only a frame 1 that starts a message restarts the count.
    tolerant.receive_data(build_frame(1, b"P|1\r", True), 2.0)
    assert tolerant.data_to_send() == B_NAK
