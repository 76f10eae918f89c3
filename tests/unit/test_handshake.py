"""The opening conversation: protocol header, SASL start-ok, tune negotiation, open, ConnectionOpened."""

from __future__ import annotations

import pytest
from pamqp import commands

from protocol.core import frames
from protocol.core.connection import CLIENT_CAPABILITIES, ConnectionState, State, negotiate
from protocol.core.events import ConnectionOpened
from protocol.errors import AuthenticationError, ConnectionLost, FrameError, ProtocolError
from tests.unit.peer import Broker, as_bytes, decode_amqplain, opened, parse


def test_initiate_sends_the_amqp_0_9_1_protocol_header_first():
    conn = ConnectionState(username="guest", password="guest")
    assert conn.data_to_send() == b""
    conn.initiate()
    assert conn.data_to_send() == b"AMQP\x00\x00\x09\x01"
    assert conn.state is State.AWAIT_START
    with pytest.raises(ProtocolError):
        conn.initiate()


def test_plain_start_ok_carries_nul_separated_credentials():
    broker = Broker(ConnectionState(username="archiver", password="pa:ss wörd", clock=lambda: 0.0))
    start_ok = broker.start(mechanisms="AMQPLAIN PLAIN")
    assert start_ok.mechanism == "PLAIN"
    assert as_bytes(start_ok.response) == "\0archiver\0pa:ss wörd".encode()
    assert start_ok.locale == "en_US"
    assert broker.conn.state is State.AWAIT_TUNE


def test_amqplain_start_ok_carries_login_and_password_table():
    conn = ConnectionState(username="archiver", password="s3cret", mechanism="AMQPLAIN", clock=lambda: 0.0)
    start_ok = Broker(conn).start(mechanisms="PLAIN AMQPLAIN")
    assert start_ok.mechanism == "AMQPLAIN"
    assert decode_amqplain(as_bytes(start_ok.response)) == {"LOGIN": "archiver", "PASSWORD": "s3cret"}


def test_start_ok_announces_the_client_and_its_capabilities():
    conn = ConnectionState(username="u", password="p", connection_name="warren archiver 1", clock=lambda: 0.0)
    start_ok = Broker(conn).start()
    props = start_ok.client_properties
    assert props["product"] == "warren"
    assert props["connection_name"] == "warren archiver 1"
    assert props["capabilities"] == CLIENT_CAPABILITIES
    for needed in ("publisher_confirms", "consumer_cancel_notify", "connection.blocked", "basic.nack"):
        assert props["capabilities"][needed] is True


def test_start_ok_omits_connection_name_when_not_given():
    start_ok = Broker().start()
    assert "connection_name" not in start_ok.client_properties


def test_server_properties_are_kept():
    broker = Broker()
    broker.start(server_properties={"product": "RabbitMQ", "capabilities": {"publisher_confirms": True}})
    broker.tune()
    (event,) = broker.open_ok()
    assert event.server_properties["product"] == "RabbitMQ"
    assert broker.conn.server_properties["capabilities"] == {"publisher_confirms": True}


def test_mechanism_not_offered_is_an_authentication_error():
    broker = Broker(ConnectionState(username="u", password="p", mechanism="AMQPLAIN", clock=lambda: 0.0))
    broker.conn.initiate()
    broker.conn.data_to_send()
    with pytest.raises(AuthenticationError) as info:
        broker.say(commands.Connection.Start(0, 9, {}, "PLAIN EXTERNAL", "en_US"))
    assert info.value.reply_code == 403
    assert "AMQPLAIN" in str(info.value)
    assert broker.conn.state is State.CLOSED
    assert broker.conn.data_to_send() == b""


def test_unsupported_mechanism_is_refused_at_construction():
    with pytest.raises(ValueError, match="EXTERNAL"):
        ConnectionState(username="u", password="p", mechanism="EXTERNAL")


@pytest.mark.parametrize(
    ("client", "server", "expected"),
    [
        (None, 30, 30),
        (100, 30, 30),
        (10, 30, 10),
        (0, 30, 30),
        (30, 0, 30),
        (0, 0, 0),
    ],
)
def test_negotiate_lower_nonzero_wins_and_zero_means_no_limit(client, server, expected):
    assert negotiate(client, server) == expected


def test_negotiate_without_unlimited_zero_takes_the_minimum():
    assert negotiate(0, 30, zero_means_unlimited=False) == 0
    assert negotiate(30, 0, zero_means_unlimited=False) == 0
    assert negotiate(None, 0, zero_means_unlimited=False) == 0


@pytest.mark.parametrize(
    ("ours", "server", "expected"),
    [
        # (frame_max, channel_max, heartbeat) asked by the client / proposed by the broker / agreed
        ((131072, 2047, None), (131072, 2047, 60), (131072, 2047, 60)),
        ((65536, 100, 30), (131072, 2047, 60), (65536, 100, 30)),
        ((131072, 2047, 60), (8192, 16, 10), (8192, 16, 10)),
        # 0 from the broker: no limit on frame size / channels, heartbeats off
        ((131072, 2047, 60), (0, 0, 0), (131072, 2047, 0)),
        # 0 from us: take the broker's limit; heartbeat 0 turns heartbeats off
        ((0, 0, 0), (131072, 2047, 60), (131072, 2047, 0)),
        # nobody limits channels: the protocol's own maximum
        ((131072, 0, 60), (131072, 0, 60), (131072, 65535, 60)),
        # never below the spec's minimum frame size
        ((1024, 2047, 60), (131072, 2047, 60), (4096, 2047, 60)),
    ],
)
def test_tune_negotiation(ours, server, expected):
    frame_max, channel_max, heartbeat = ours
    broker = Broker(frame_max=frame_max, channel_max=channel_max, heartbeat=heartbeat)
    broker.start()
    tune_ok, _ = broker.tune(frame_max=server[0], channel_max=server[1], heartbeat=server[2])
    assert (tune_ok.frame_max, tune_ok.channel_max, tune_ok.heartbeat) == expected
    (event,) = broker.open_ok()
    assert isinstance(event, ConnectionOpened)
    assert (event.frame_max, event.channel_max, event.heartbeat) == expected
    assert (broker.conn.frame_max, broker.conn.channel_max, broker.conn.heartbeat) == expected


@pytest.mark.parametrize("vhost", ["/", "archive", "team/a", "wörk"])
def test_connection_open_carries_the_vhost(vhost):
    broker = Broker(vhost=vhost)
    broker.start()
    _, open_ = broker.tune()
    assert open_.virtual_host == vhost


def test_open_ok_finishes_the_handshake():
    broker = Broker()
    broker.start()
    broker.tune(heartbeat=15)
    assert broker.conn.state is State.AWAIT_OPEN_OK
    (event,) = broker.open_ok()
    assert event == ConnectionOpened({"product": "RabbitMQ", "version": "3.13.7"}, 131072, 2047, 15)
    assert broker.conn.state is State.OPEN
    assert broker.heard() == []


def test_whole_handshake_in_one_read():
    broker = Broker()
    broker.conn.initiate()
    broker.conn.data_to_send()
    events = broker.say(
        commands.Connection.Start(0, 9, {}, "PLAIN", "en_US"),
        commands.Connection.Tune(2047, 131072, 60),
        commands.Connection.OpenOk(),
    )
    assert [type(e) for e in events] == [ConnectionOpened]
    sent = [type(m) for _, m in broker.heard()]
    assert sent == [commands.Connection.StartOk, commands.Connection.TuneOk, commands.Connection.Open]


def test_broker_refusing_the_protocol_version_is_a_frame_error_without_a_close():
    broker = Broker()
    broker.conn.initiate()
    broker.conn.data_to_send()
    with pytest.raises(FrameError, match="protocol header"):
        broker.say_bytes(b"AMQP\x00\x00\x09\x00")
    # before connection.start there is no connection to close politely
    assert broker.conn.data_to_send() == b""
    assert broker.conn.state is State.CLOSED


def test_out_of_order_handshake_method_is_unexpected_frame():
    broker = Broker()
    broker.start()
    with pytest.raises(FrameError) as info:
        broker.say(commands.Connection.OpenOk())
    assert info.value.reply_code == 505
    ((channel, close),) = broker.heard()
    assert channel == 0
    assert isinstance(close, commands.Connection.Close)
    assert close.reply_code == 505


@pytest.mark.parametrize("phase", ["start", "tune", "open"])
def test_eof_during_handshake_is_connection_lost(phase):
    broker = Broker()
    broker.conn.initiate()
    if phase in ("tune", "open"):
        broker.say(commands.Connection.Start(0, 9, {}, "PLAIN", "en_US"))
    if phase == "open":
        broker.say(commands.Connection.Tune(2047, 131072, 60))
    with pytest.raises(ConnectionLost, match="handshake"):
        broker.conn.receive_eof()
    assert broker.conn.state is State.CLOSED


def test_eof_on_an_open_connection_is_connection_lost():
    broker = opened()
    with pytest.raises(ConnectionLost):
        broker.conn.receive_eof()


def test_channels_cannot_be_opened_before_the_handshake():
    broker = Broker()
    broker.start()
    with pytest.raises(ProtocolError):
        broker.conn.open_channel()


def test_channel_numbers_start_at_one_and_reuse_the_lowest_free():
    broker = opened()
    assert [broker.open_channel() for _ in range(3)] == [1, 2, 3]
    broker.conn.close_channel(2)
    broker.heard_one(commands.Channel.Close, 2)
    broker.say(commands.Channel.CloseOk(), channel=2)
    assert broker.open_channel() == 2
    assert broker.open_channel() == 4


def test_channel_max_limits_open_channels():
    broker = opened(channel_max=2)
    broker.open_channel()
    broker.open_channel()
    with pytest.raises(ProtocolError, match="2 channels"):
        broker.conn.open_channel()


def test_client_close_is_acknowledged_by_close_ok():
    broker = opened()
    broker.conn.close(200, "bye")
    close = broker.heard_one(commands.Connection.Close)
    assert (close.reply_code, close.reply_text) == (200, "bye")
    broker.conn.close()  # a second close is a no-op
    assert broker.heard() == []
    events = broker.say(commands.Connection.CloseOk())
    assert [type(e).__name__ for e in events] == ["ConnectionCloseFinished"]
    assert broker.conn.state is State.CLOSED
    broker.conn.receive_eof()  # an orderly close: EOF afterwards is not an error


def test_client_close_before_initiate_sends_nothing():
    conn = ConnectionState(username="u", password="p")
    conn.close()
    assert conn.state is State.CLOSED
    assert conn.data_to_send() == b""


def test_handshake_output_is_well_formed_frames():
    broker = Broker()
    broker.conn.initiate()
    broker.say(commands.Connection.Start(0, 9, {}, "PLAIN", "en_US"))
    data = broker.heard_bytes()
    assert data.startswith(frames.PROTOCOL_HEADER)
    ((channel, start_ok),) = parse(data[8:])
    assert channel == 0
    assert isinstance(start_ok, commands.Connection.StartOk)
