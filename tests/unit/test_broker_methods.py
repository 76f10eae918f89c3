"""Methods the broker starts on its own: closes, flow, cancels, blocked; the core answers what the
protocol requires without asking anyone."""

from __future__ import annotations

import pytest
from pamqp import body, commands
from pamqp import frame as pframe

from protocol.core.connection import State
from protocol.core.events import (
    Blocked,
    ChannelClosedByPeer,
    ChannelFlow,
    ConnectionClosedByPeer,
    ConsumerCancelledByBroker,
    MethodReceived,
    Unblocked,
)
from protocol.core.message import Message
from protocol.errors import ChannelClosed, FrameError
from tests.unit.peer import Broker, content_header, opened


def test_channel_close_from_broker_is_an_event_and_answered_with_close_ok():
    broker = opened()
    number = broker.open_channel()
    (event,) = broker.say(
        commands.Channel.Close(404, "NOT_FOUND - no queue 'missing' in vhost '/'", 50, 10), channel=number
    )
    assert event == ChannelClosedByPeer(number, 404, "NOT_FOUND - no queue 'missing' in vhost '/'", 50, 10)
    broker.heard_one(commands.Channel.CloseOk, number)
    assert number not in broker.conn.channels
    assert broker.conn.state is State.OPEN  # only the channel is gone
    with pytest.raises(ChannelClosed):
        broker.conn.publish(number, "", "q", b"x", b"\x00\x00")


def test_channel_close_from_broker_leaves_other_channels_working():
    broker = opened()
    one, two = broker.open_channel(), broker.open_channel()
    broker.say(commands.Channel.Close(406, "PRECONDITION_FAILED - unknown delivery tag 9", 60, 80), channel=one)
    broker.heard()
    (message,) = broker.say_bytes(broker.deliver_bytes(two, [b"still here"]))
    assert message.channel == two
    assert message.body == b"still here"


def test_channel_close_from_broker_mid_content_abandons_the_message():
    broker = opened()
    number = broker.open_channel()
    data = pframe.marshal(commands.Basic.Deliver("c", 1, False, "", "q"), number)
    data += content_header(10, b"\x00\x00", number)
    broker.say_bytes(data)
    # a method where content is expected is an error, even a close: the spec forbids interleaving
    with pytest.raises(FrameError) as info:
        broker.say(commands.Channel.Close(320, "forced", 0, 0), channel=number)
    assert info.value.reply_code == 505


def test_connection_close_from_broker_is_an_event_and_answered_with_close_ok():
    broker = opened()
    number = broker.open_channel()
    (event,) = broker.say(commands.Connection.Close(320, "CONNECTION_FORCED - broker forced connection closure", 0, 0))
    assert event == ConnectionClosedByPeer(320, "CONNECTION_FORCED - broker forced connection closure", 0, 0)
    broker.heard_one(commands.Connection.CloseOk, 0)
    assert broker.conn.state is State.CLOSED
    assert broker.conn.channels[number].closing
    # nothing more is read, and the socket closing afterwards is expected, not an error
    assert broker.say(commands.Connection.Blocked("x")) == []
    broker.conn.receive_eof()
    with pytest.raises(ChannelClosed):
        broker.conn.open_channel()


def test_connection_close_during_handshake_is_reported_with_its_code():
    """RabbitMQ refuses bad credentials with connection.close 403 after start-ok."""
    broker = Broker()
    broker.start()
    (event,) = broker.say(commands.Connection.Close(403, "ACCESS_REFUSED - Login was refused", 10, 11))
    assert event == ConnectionClosedByPeer(403, "ACCESS_REFUSED - Login was refused", 10, 11)
    broker.heard_one(commands.Connection.CloseOk, 0)
    assert broker.conn.state is State.CLOSED


@pytest.mark.parametrize("active", [False, True])
def test_channel_flow_is_an_event_and_answered_with_flow_ok(active):
    broker = opened()
    number = broker.open_channel()
    (event,) = broker.say(commands.Channel.Flow(active), channel=number)
    assert event == ChannelFlow(number, active)
    flow_ok = broker.heard_one(commands.Channel.FlowOk, number)
    assert flow_ok.active is active


def test_basic_cancel_from_broker_with_nowait_needs_no_reply():
    broker = opened()
    number = broker.open_channel()
    (event,) = broker.say(commands.Basic.Cancel("amq.ctag-xyz", nowait=True), channel=number)
    assert event == ConsumerCancelledByBroker(number, "amq.ctag-xyz")
    assert broker.heard() == []


def test_basic_cancel_from_broker_asking_for_a_reply_gets_cancel_ok():
    broker = opened()
    number = broker.open_channel()
    (event,) = broker.say(commands.Basic.Cancel("amq.ctag-xyz", nowait=False), channel=number)
    assert event == ConsumerCancelledByBroker(number, "amq.ctag-xyz")
    cancel_ok = broker.heard_one(commands.Basic.CancelOk, number)
    assert cancel_ok.consumer_tag == "amq.ctag-xyz"


def test_blocked_and_unblocked():
    broker = opened()
    events = broker.say(commands.Connection.Blocked("low on memory"), commands.Connection.Unblocked())
    assert events == [Blocked("low on memory"), Unblocked()]
    assert broker.heard() == []
    (event,) = broker.say(commands.Connection.Blocked())
    assert event == Blocked("")


def test_update_secret_ok_is_passed_on():
    broker = opened()
    (event,) = broker.say(commands.Connection.UpdateSecretOk())
    assert isinstance(event, MethodReceived)
    assert event.channel == 0


def test_heartbeat_frames_produce_no_events():
    broker = opened()
    assert broker.say_bytes(b"\x08\x00\x00\x00\x00\x00\x00\xce" * 3) == []


# ---- channels we close ourselves ----------------------------------------------------------


def test_our_channel_close_completes_on_close_ok():
    broker = opened()
    number = broker.open_channel()
    broker.conn.close_channel(number, 200, "done")
    close = broker.heard_one(commands.Channel.Close, number)
    assert (close.reply_code, close.reply_text) == (200, "done")
    broker.conn.close_channel(number)  # already closing: nothing more is sent
    assert broker.heard() == []
    with pytest.raises(ChannelClosed):
        broker.conn.send_method(number, commands.Basic.Qos(0, 10))
    (event,) = broker.say(commands.Channel.CloseOk(), channel=number)
    assert isinstance(event, MethodReceived)
    assert isinstance(event.method, commands.Channel.CloseOk)
    assert number not in broker.conn.channels


def test_methods_arriving_while_our_channel_close_is_in_flight_are_discarded():
    broker = opened()
    number = broker.open_channel()
    broker.conn.close_channel(number)
    broker.heard()
    events = broker.say(
        commands.Basic.Cancel("ctag", nowait=False),
        commands.Channel.Flow(False),
        commands.Basic.Ack(1, False),  # a confirm still counts: the broker took the message
        channel=number,
    )
    assert [type(e).__name__ for e in events] == ["Confirm"]
    assert broker.heard() == []  # no cancel-ok, no flow-ok on a closing channel


def test_broker_close_crossing_our_close_is_answered():
    broker = opened()
    number = broker.open_channel()
    broker.conn.close_channel(number)
    broker.heard()
    (event,) = broker.say(commands.Channel.Close(406, "PRECONDITION_FAILED", 60, 80), channel=number)
    assert isinstance(event, ChannelClosedByPeer)
    broker.heard_one(commands.Channel.CloseOk, number)
    assert number not in broker.conn.channels


def test_deliveries_in_flight_while_our_channel_close_is_in_flight_are_discarded():
    broker = opened()
    number = broker.open_channel()
    broker.conn.close_channel(number)
    broker.heard()
    data = broker.deliver_bytes(number, [b"in", b"flight"], delivery_tag=1)
    data += pframe.marshal(commands.Channel.CloseOk(), number)
    events = broker.say_bytes(data)
    assert not any(isinstance(e, Message) for e in events)
    assert [type(e) for e in events] == [MethodReceived]
    assert broker.conn.state is State.OPEN


@pytest.mark.parametrize(
    "method",
    [commands.Basic.Return(312, "NO_ROUTE", "ex", "rk"), commands.Basic.GetOk(1, False, "ex", "rk", 0)],
    ids=["return", "get-ok"],
)
def test_content_methods_in_flight_while_our_channel_close_is_in_flight_are_discarded(method):
    broker = opened()
    number = broker.open_channel()
    broker.conn.close_channel(number)
    broker.heard()
    data = pframe.marshal(method, number)
    data += content_header(3, b"\x00\x00", number) + pframe.marshal(body.ContentBody(b"abc"), number)
    assert broker.say_bytes(data) == []
    assert broker.conn.state is State.OPEN


def test_delivery_already_in_progress_when_we_close_is_discarded():
    broker = opened()
    number = broker.open_channel()
    data = pframe.marshal(commands.Basic.Deliver("c", 1, False, "", "q"), number)
    data += content_header(6, b"\x00\x00", number)
    broker.say_bytes(data)
    broker.conn.close_channel(number)
    broker.heard()
    assert broker.say(body.ContentBody(b"abcdef"), channel=number) == []
    (event,) = broker.say(commands.Channel.CloseOk(), channel=number)
    assert isinstance(event, MethodReceived)
