"""Malformed input: every case is a typed FrameError (with the reply code we send back), never a hang,
and the connection.close telling the broker why is queued before the error is raised."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import body, commands
from pamqp import frame as pframe

from protocol.core import frames
from protocol.core.connection import State
from protocol.errors import ConnectionLost, FrameError
from tests.unit.peer import Broker, content_header, opened, parse, raw_frame


def assert_closed_with(broker: Broker, err: FrameError, reply_code: int) -> None:
    """The error carries `reply_code`, and the client told the broker the same in connection.close."""
    assert err.reply_code == reply_code
    got = parse(broker.heard_bytes())
    assert len(got) == 1, got
    channel, close = got[0]
    assert channel == 0
    assert isinstance(close, commands.Connection.Close)
    assert close.reply_code == reply_code
    assert close.reply_text == err.what[:255]
    assert broker.conn.state is State.CLOSED
    # a dead connection ignores whatever else arrives
    assert broker.say(commands.Connection.Blocked("late")) == []


def fail(broker: Broker, data: bytes) -> FrameError:
    with pytest.raises(FrameError) as info:
        broker.say_bytes(data)
    return info.value


def test_frame_error_is_a_protocol_error_with_context():
    err = FrameError("bad", reply_code=505, channel=3)
    assert "channel 3" in str(err)
    assert (err.what, err.reply_code, err.channel) == ("bad", 505, 3)
    assert FrameError("x").reply_code == 501


# ---- framing --------------------------------------------------------------------------------


def test_truncated_frame_waits_for_the_rest_then_completes():
    broker = opened()
    data = pframe.marshal(commands.Connection.Blocked("low on memory"), 0)
    half = len(data) // 2
    assert broker.say_bytes(data[:half]) == []
    assert broker.heard() == []
    (event,) = broker.say_bytes(data[half:])
    assert event.reason == "low on memory"


def test_frame_complete_except_its_frame_end_octet_is_still_incomplete():
    broker = opened()
    data = pframe.marshal(commands.Connection.Blocked("x"), 0)
    assert broker.say_bytes(data[:-1]) == []
    assert len(broker.say_bytes(data[-1:])) == 1


def test_eof_in_the_middle_of_a_frame_is_a_typed_error():
    broker = opened()
    data = pframe.marshal(commands.Connection.Blocked("x"), 0)
    assert broker.say_bytes(data[:5]) == []
    with pytest.raises((FrameError, ConnectionLost)) as info:
        broker.conn.receive_eof()
    assert "middle of a frame" in str(info.value)
    assert broker.conn.state is State.CLOSED


def test_bad_frame_end_octet():
    broker = opened()
    err = fail(broker, raw_frame(frames.FRAME_METHOD, 0, b"\x00\x0a\x00\x3d", frame_end=b"\x00"))
    assert "frame-end" in err.what
    assert_closed_with(broker, err, 501)


def test_frame_larger_than_negotiated_frame_max_is_refused_from_its_header_alone():
    broker = opened(server_frame_max=4096)
    assert broker.conn.frame_max == 4096
    # only the 7-byte frame header: the client must not wait for 5000 bytes it will never accept
    err = fail(broker, struct.pack(">BHI", frames.FRAME_BODY, 1, 5000))
    assert "frame_max" in err.what
    assert_closed_with(broker, err, 501)


def test_frame_of_exactly_frame_max_is_accepted():
    broker = opened(server_frame_max=4096)
    number = broker.open_channel()
    chunk = 4096 - frames.FRAME_OVERHEAD
    data = broker.deliver_bytes(number, [b"a" * chunk, b"b" * 10])
    (message,) = broker.say_bytes(data)
    assert message.body == b"a" * chunk + b"b" * 10


def test_unknown_method_on_channel_zero_is_not_implemented():
    broker = opened()
    err = fail(broker, raw_frame(frames.FRAME_METHOD, 0, struct.pack(">HH", 10, 99)))
    assert "10.99" in err.what
    assert_closed_with(broker, err, 540)


def test_unknown_class_on_a_channel_is_not_implemented():
    broker = opened()
    number = broker.open_channel()
    err = fail(broker, raw_frame(frames.FRAME_METHOD, number, struct.pack(">HH", 999, 1) + b"\x00" * 8))
    assert err.channel == number
    assert_closed_with(broker, err, 540)


def test_undecodable_method_arguments():
    broker = opened()
    number = broker.open_channel()
    # channel.close whose reply-text claims 200 bytes that are not there
    err = fail(broker, raw_frame(frames.FRAME_METHOD, number, struct.pack(">HHHB", 20, 40, 404, 200) + b"short"))
    assert "Channel.Close" in err.what
    assert_closed_with(broker, err, 501)


def test_unknown_frame_type_on_channel_zero():
    broker = opened()
    err = fail(broker, raw_frame(5, 0, b"hello"))
    assert_closed_with(broker, err, 505)


def test_unknown_frame_type_on_a_channel():
    broker = opened()
    number = broker.open_channel()
    err = fail(broker, raw_frame(5, number, b"hello"))
    assert "frame type 5" in err.what
    assert_closed_with(broker, err, 501)


def test_content_frames_on_channel_zero_are_unexpected():
    broker = opened()
    err = fail(broker, pframe.marshal(body.ContentBody(b"x"), 0))
    assert_closed_with(broker, err, 505)


def test_heartbeat_on_a_channel_other_than_zero():
    broker = opened()
    number = broker.open_channel()
    err = fail(broker, raw_frame(frames.FRAME_HEARTBEAT, number, b""))
    assert_closed_with(broker, err, 501)


def test_frame_on_a_channel_never_opened_is_channel_error():
    broker = opened()
    broker.open_channel()
    err = fail(broker, pframe.marshal(commands.Basic.Deliver("ctag", 1, False, "", "rk"), 7))
    assert "channel 7" in err.what
    assert_closed_with(broker, err, 504)


def test_frame_on_a_channel_the_broker_closed_is_channel_error():
    broker = opened()
    number = broker.open_channel()
    broker.say(commands.Channel.Close(404, "NOT_FOUND", 50, 10), channel=number)
    broker.heard()
    err = fail(broker, pframe.marshal(commands.Basic.Deliver("ctag", 1, False, "", "rk"), number))
    assert_closed_with(broker, err, 504)


# ---- content --------------------------------------------------------------------------------


def test_body_longer_than_the_content_header_declared():
    broker = opened()
    number = broker.open_channel()
    data = pframe.marshal(commands.Basic.Deliver("ctag", 1, False, "ex", "rk"), number)
    data += content_header(5, b"\x00\x00", number)
    data += pframe.marshal(body.ContentBody(b"abc"), number)
    data += pframe.marshal(body.ContentBody(b"defg"), number)
    err = fail(broker, data)
    assert "exceeds the 5 bytes" in err.what
    assert_closed_with(broker, err, 501)


def test_content_header_without_a_preceding_method():
    broker = opened()
    number = broker.open_channel()
    err = fail(broker, content_header(3, b"\x00\x00", number))
    assert err.channel == number
    assert_closed_with(broker, err, 505)


def test_body_without_a_content_header():
    broker = opened()
    number = broker.open_channel()
    data = pframe.marshal(commands.Basic.Deliver("ctag", 1, False, "ex", "rk"), number)
    data += pframe.marshal(body.ContentBody(b"abc"), number)
    err = fail(broker, data)
    assert_closed_with(broker, err, 505)


def test_second_content_header_for_one_message():
    broker = opened()
    number = broker.open_channel()
    data = pframe.marshal(commands.Basic.Deliver("ctag", 1, False, "ex", "rk"), number)
    data += content_header(3, b"\x00\x00", number) + content_header(3, b"\x00\x00", number)
    err = fail(broker, data)
    assert_closed_with(broker, err, 505)


@pytest.mark.parametrize("after", ["method", "header", "partial body"])
def test_method_in_the_middle_of_content_is_unexpected_frame(after):
    broker = opened()
    number = broker.open_channel()
    data = pframe.marshal(commands.Basic.Deliver("ctag", 1, False, "ex", "rk"), number)
    if after in ("header", "partial body"):
        data += content_header(10, b"\x00\x00", number)
    if after == "partial body":
        data += pframe.marshal(body.ContentBody(b"abc"), number)
    data += pframe.marshal(commands.Basic.Ack(1, False), number)
    err = fail(broker, data)
    assert "content" in err.what
    assert_closed_with(broker, err, 505)


def test_content_header_for_a_class_other_than_basic():
    broker = opened()
    number = broker.open_channel()
    data = pframe.marshal(commands.Basic.Deliver("ctag", 1, False, "ex", "rk"), number)
    data += content_header(3, b"\x00\x00", number, class_id=50)
    err = fail(broker, data)
    assert_closed_with(broker, err, 501)


def test_content_header_too_short():
    broker = opened()
    number = broker.open_channel()
    data = pframe.marshal(commands.Basic.Deliver("ctag", 1, False, "ex", "rk"), number)
    data += raw_frame(frames.FRAME_HEADER, number, b"\x00\x3c\x00\x00")
    err = fail(broker, data)
    assert_closed_with(broker, err, 501)


def test_truncated_confirm():
    broker = opened()
    number = broker.open_channel()
    err = fail(broker, raw_frame(frames.FRAME_METHOD, number, b"\x00\x3c\x00\x50\x00\x00\x00\x01"))
    assert_closed_with(broker, err, 501)


def test_good_frames_before_a_broken_one_in_the_same_read_still_end_in_close():
    broker = opened()
    data = pframe.marshal(commands.Connection.Blocked("x"), 0) + raw_frame(5, 0, b"")
    err = fail(broker, data)
    assert_closed_with(broker, err, 505)


# ---- crashes that are not FrameError: real bugs --------------------------------------------


def test_method_frame_too_short_for_its_ids_on_a_channel():
    broker = opened()
    number = broker.open_channel()
    err = fail(broker, raw_frame(frames.FRAME_METHOD, number, b"\x00\x3c"))
    assert_closed_with(broker, err, 501)


def test_truncated_basic_deliver():
    broker = opened()
    number = broker.open_channel()
    payload = struct.pack(">HH", 60, 60) + b"\x04ctag" + b"\x00\x00\x01"  # delivery-tag cut short
    err = fail(broker, raw_frame(frames.FRAME_METHOD, number, payload))
    assert_closed_with(broker, err, 501)


def test_basic_deliver_with_trailing_garbage():
    broker = opened()
    number = broker.open_channel()
    good = pframe.marshal(commands.Basic.Deliver("ctag", 1, False, "ex", "rk"), number)
    payload = good[7:-1] + b"extra"
    err = fail(broker, raw_frame(frames.FRAME_METHOD, number, payload))
    assert "Basic.Deliver" in err.what
    assert_closed_with(broker, err, 501)


# ---- fuzz: arbitrary bytes on a connection with no channel open -----------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=6), st.binary(max_size=200))
def test_arbitrary_frames_give_events_or_a_frame_error_never_anything_else(payloads, tail):
    broker = opened()
    data = b"".join(raw_frame(p[0] % 10 if p else 1, p[1] if len(p) > 1 else 0, p[2:]) for p in payloads) + tail
    try:
        broker.say_bytes(data)
    except FrameError as err:
        got = parse(broker.heard_bytes())
        if any(isinstance(m, commands.Connection.CloseOk) for _, m in got):
            return  # the garbage happened to contain a connection.close from the "broker"
        assert [(ch, type(m), m.reply_code) for ch, m in got] == [(0, commands.Connection.Close, err.reply_code)]
