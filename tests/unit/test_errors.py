"""The typed errors carry what a caller acts on, and say it plainly."""

from __future__ import annotations

import pytest

from protocol.errors import (
    REPLY_NAMES,
    AuthenticationError,
    BrokerError,
    ChannelClosedByBroker,
    ConnectionClosedByBroker,
    ConnectionLost,
    ConsumerCancelled,
    FrameError,
    HeartbeatTimeout,
    InvalidURI,
    MessageReturned,
    ProtocolError,
    PublishNacked,
)


@pytest.mark.parametrize(
    "cls",
    [
        FrameError,
        ConnectionLost,
        HeartbeatTimeout,
        BrokerError,
        ConnectionClosedByBroker,
        AuthenticationError,
        ChannelClosedByBroker,
        ConsumerCancelled,
        PublishNacked,
        MessageReturned,
        InvalidURI,
    ],
)
def test_every_error_is_a_protocol_error(cls):
    assert issubclass(cls, ProtocolError)


def test_hierarchy_that_callers_match_on():
    assert issubclass(HeartbeatTimeout, ConnectionLost)
    assert issubclass(AuthenticationError, ConnectionClosedByBroker)
    assert not issubclass(ChannelClosedByBroker, ConnectionClosedByBroker)


def test_reply_codes_are_named():
    assert REPLY_NAMES[404] == "NOT_FOUND"
    assert REPLY_NAMES[505] == "UNEXPECTED_FRAME"
    assert REPLY_NAMES[540] == "NOT_IMPLEMENTED"


def test_channel_closed_by_broker_message():
    err = ChannelClosedByBroker(404, "NOT_FOUND - no queue 'q'", 50, 10, channel=3)
    assert (err.reply_code, err.reply_name, err.class_id, err.method_id, err.channel) == (404, "NOT_FOUND", 50, 10, 3)
    assert str(err) == "broker closed the channel: 404 NOT_FOUND - NOT_FOUND - no queue 'q'"


def test_connection_closed_by_broker_with_unknown_code():
    err = ConnectionClosedByBroker(599, "odd")
    assert err.reply_name == "UNKNOWN"
    assert str(err).startswith("broker closed the connection: 599 UNKNOWN")


def test_heartbeat_timeout_message():
    err = HeartbeatTimeout(31.26, 20)
    assert (err.silent_for, err.heartbeat, err.detail) == (31.26, 20, "heartbeat timeout")
    assert "31.3s" in str(err)
    assert "20s heartbeat" in str(err)


def test_publish_nacked_lists_at_most_ten_tags():
    err = PublishNacked(list(range(1, 26)), channel=2)
    assert err.delivery_tags == list(range(1, 26))
    assert "25 publish(es) on channel 2" in str(err)
    assert "1, 2, 3, 4, 5, 6, 7, 8, 9, 10 ..." in str(err)


def test_message_returned_and_consumer_cancelled():
    err = MessageReturned(312, "NO_ROUTE", "orders", "eu.created")
    assert (err.reply_code, err.reply_text, err.exchange, err.routing_key) == (312, "NO_ROUTE", "orders", "eu.created")
    assert "312 NO_ROUTE" in str(err)
    cancelled = ConsumerCancelled("amq.ctag-1", 4)
    assert (cancelled.consumer_tag, cancelled.channel) == ("amq.ctag-1", 4)
