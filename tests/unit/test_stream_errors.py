"""The rstream boundary: whatever rstream raises comes out of `protocol.stream` as one of our typed errors
(never with the password), and a producer's confirms come back as plain publishing ids."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from rstream.connection import ConnectionClosed
from rstream.exceptions import AuthenticationFailure, ServerError, StreamDoesNotExist
from rstream.producer import ConfirmationStatus

from protocol.errors import (
    ProtocolError,
    StreamAuthenticationError,
    StreamConnectionLost,
    StreamError,
    StreamNotFound,
)
from protocol.stream import FilteredMessage, StartAt, StreamEndpoint, StreamPublisher
from protocol.stream.client import _rstream_errors

ENDPOINT = StreamEndpoint.parse("rabbitmq-stream://warren:s3cr3t@127.0.0.1:5552/prod%2Feu")


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (AuthenticationFailure("8"), StreamAuthenticationError),
        (StreamDoesNotExist("2"), StreamNotFound),
        (ServerError("Server closed, reason: shutdown"), StreamConnectionLost),
        (ConnectionClosed(), StreamConnectionLost),
        (ConnectionResetError(104, "Connection reset by peer"), StreamConnectionLost),
        (TimeoutError(), StreamConnectionLost),
        (AssertionError(), StreamConnectionLost),  # rstream writing on a writer its dead connection dropped
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.__name__,
)
def test_every_rstream_failure_comes_out_typed_with_the_cause_chained(raised: BaseException, expected: type):
    with pytest.raises(expected) as caught, _rstream_errors(ENDPOINT, "orders"):
        raise raised
    err = caught.value
    assert isinstance(err, StreamError) and isinstance(err, ProtocolError)
    assert err.__cause__ is raised
    assert "s3cr3t" not in str(err) and err.endpoint == "rabbitmq-stream://warren@127.0.0.1:5552/prod%2Feu"


def test_a_missing_stream_is_named():
    with pytest.raises(StreamNotFound) as caught, _rstream_errors(ENDPOINT, "orders eu/ü.1"):
        raise StreamDoesNotExist("2")
    assert caught.value.stream == "orders eu/ü.1" and "'orders eu/ü.1'" in str(caught.value)


def test_cancellation_is_not_taken_for_a_lost_connection():
    with pytest.raises(asyncio.CancelledError), _rstream_errors(ENDPOINT, "orders"):
        raise asyncio.CancelledError


def test_a_subscription_resumes_right_after_an_offset():
    assert StartAt.after(41) == StartAt("offset", 42)


class FakeProducer:
    """Confirms what it is sent the way rstream's producer does: one ConfirmationStatus per publishing id."""

    def __init__(self, statuses: list[ConfirmationStatus]) -> None:
        self.statuses = statuses
        self.sent: list[Any] = []

    async def send_batch(self, stream: str, batch: list[Any], *, publisher_name: str, on_publish_confirm: Any) -> None:
        self.sent.append((stream, batch, publisher_name))
        for status in self.statuses:
            on_publish_confirm(status)


def test_a_publisher_reports_confirms_and_refusals_by_publishing_id():
    statuses = [ConfirmationStatus(1, True), ConfirmationStatus(2, False, 17), ConfirmationStatus(3, False, -1)]
    producer = FakeProducer(statuses)
    publisher = StreamPublisher(ENDPOINT, producer, filtering=True)  # type: ignore[arg-type]
    confirmed: list[int] = []
    refused: list[tuple[int, str]] = []
    messages = [(1, b"a", "red"), (2, b"b", None), (3, b"c", "blue")]
    asyncio.run(
        publisher.send_batch(
            "orders",
            messages,
            publisher_name="warren-replay:orders",
            on_confirmed=confirmed.append,
            on_refused=lambda pid, why: refused.append((pid, why)),
        )
    )
    assert confirmed == [1]
    assert refused == [(2, "code 17"), (3, "the connection closed before the broker confirmed it")]
    [(stream, batch, name)] = producer.sent
    assert (stream, name) == ("orders", "warren-replay:orders")
    assert all(isinstance(m, FilteredMessage) for m in batch)
    assert [(m.publishing_id, m.data, m.filter_value) for m in batch] == [
        (1, b"a", "red"),
        (2, b"b", ""),
        (3, b"c", "blue"),
    ]


def test_a_publisher_without_filtering_sends_no_filter_values():
    producer = FakeProducer([])
    publisher = StreamPublisher(ENDPOINT, producer, filtering=False)  # type: ignore[arg-type]
    asyncio.run(publisher.send_batch("s", [(7, b"x", "red")], publisher_name="p", on_confirmed=print, on_refused=print))
    [(_, [message], _)] = producer.sent
    assert not isinstance(message, FilteredMessage) and (message.publishing_id, message.data) == (7, b"x")
