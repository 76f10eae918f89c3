"""Typed errors of the AMQP layer: every failure a caller can act on has its own class and context.

`protocol` must not import `bridge`, so this layer has its own root, `ProtocolError`; the CLI maps it
to an exit code alongside `bridge.errors.WarrenError`.
"""

from __future__ import annotations

# AMQP 0-9-1 reply codes (spec section 1.2 "constants"), named for messages and for matching.
REPLY_NAMES: dict[int, str] = {
    200: "REPLY_SUCCESS",
    311: "CONTENT_TOO_LARGE",
    312: "NO_ROUTE",
    313: "NO_CONSUMERS",
    320: "CONNECTION_FORCED",
    402: "INVALID_PATH",
    403: "ACCESS_REFUSED",
    404: "NOT_FOUND",
    405: "RESOURCE_LOCKED",
    406: "PRECONDITION_FAILED",
    501: "FRAME_ERROR",
    502: "SYNTAX_ERROR",
    503: "COMMAND_INVALID",
    504: "CHANNEL_ERROR",
    505: "UNEXPECTED_FRAME",
    506: "RESOURCE_ERROR",
    530: "NOT_ALLOWED",
    540: "NOT_IMPLEMENTED",
    541: "INTERNAL_ERROR",
}


class ProtocolError(Exception):
    """Root of every error raised by the AMQP layer."""


class FrameError(ProtocolError):
    """The peer sent bytes that are not valid AMQP 0-9-1 framing or content (connection is unusable).

    `reply_code` is the code we send back in connection.close (501 FRAME_ERROR, 505 UNEXPECTED_FRAME,
    540 NOT_IMPLEMENTED, ...).
    """

    def __init__(self, what: str, *, reply_code: int = 501, channel: int | None = None) -> None:
        where = f" on channel {channel}" if channel is not None else ""
        super().__init__(f"malformed AMQP input{where}: {what}")
        self.what = what
        self.reply_code = reply_code
        self.channel = channel


class ShortStringTooLong(ProtocolError, ValueError):
    """A name or other short string longer than the 255 bytes of UTF-8 AMQP 0-9-1 can carry.

    The only check made before the broker sees a name: everything else about names (characters,
    reserved prefixes) is the broker's to judge, and its refusal arrives as `ChannelClosedByBroker`.
    """

    SHOWN = 60  # characters of the value quoted in the message

    def __init__(self, field: str, value: str, *, method: str | None = None) -> None:
        self.field = field
        self.value = value
        self.method = method
        self.size = len(value.encode())
        shown = value if len(value) <= self.SHOWN else value[: self.SHOWN] + "..."
        where = f"{method} " if method else ""
        super().__init__(f"{where}{field} of {self.size} bytes exceeds the 255 bytes AMQP allows: {shown!r}")


class ConnectionLost(ProtocolError):
    """The socket closed or failed without an orderly connection.close."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"connection to broker lost: {detail}")
        self.detail = detail


class CertificateRejected(ProtocolError):
    """TLS: the broker's certificate does not verify against the CA given (or its name does not match).
    Retrying cannot mend it: it is a refusal, like wrong credentials."""


class HeartbeatTimeout(ConnectionLost):
    """Nothing arrived from the broker for longer than the heartbeat allows: a dead or hung peer."""

    def __init__(self, silent_for: float, heartbeat: int) -> None:
        ProtocolError.__init__(
            self, f"broker silent for {silent_for:.1f}s with a {heartbeat}s heartbeat: peer presumed dead"
        )
        self.detail = "heartbeat timeout"
        self.silent_for = silent_for
        self.heartbeat = heartbeat


class BrokerError(ProtocolError):
    """The broker closed a connection or channel: carries its reply code and text."""

    scope = "connection"

    def __init__(
        self, reply_code: int, reply_text: str, class_id: int = 0, method_id: int = 0, channel: int = 0
    ) -> None:
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.class_id = class_id
        self.method_id = method_id
        self.channel = channel
        self.reply_name = REPLY_NAMES.get(reply_code, "UNKNOWN")
        super().__init__(f"broker closed the {self.scope}: {reply_code} {self.reply_name} - {reply_text}")


class ConnectionClosedByBroker(BrokerError):
    """connection.close from the broker (e.g. 320 CONNECTION_FORCED, 403 ACCESS_REFUSED at login)."""


class AuthenticationError(ConnectionClosedByBroker):
    """The broker refused our credentials (403 ACCESS_REFUSED during the handshake)."""


class ChannelClosedByBroker(BrokerError):
    """channel.close from the broker (404 NOT_FOUND, 406 PRECONDITION_FAILED, 403 ACCESS_REFUSED...)."""

    scope = "channel"


class ChannelClosed(ProtocolError):
    """An operation on a channel (or connection) that we closed ourselves."""


class ConsumerCancelled(ProtocolError):
    """The broker cancelled a consumer (basic.cancel), e.g. because its queue was deleted."""

    def __init__(self, consumer_tag: str, channel: int) -> None:
        super().__init__(f"broker cancelled consumer {consumer_tag!r} on channel {channel}")
        self.consumer_tag = consumer_tag
        self.channel = channel


class PublishNacked(ProtocolError):
    """The broker refused (nacked) published messages: it has not taken responsibility for them."""

    def __init__(self, delivery_tags: list[int], channel: int) -> None:
        shown = ", ".join(map(str, delivery_tags[:10])) + (" ..." if len(delivery_tags) > 10 else "")
        super().__init__(f"broker nacked {len(delivery_tags)} publish(es) on channel {channel}: tags {shown}")
        self.delivery_tags = delivery_tags
        self.channel = channel


class MessageReturned(ProtocolError):
    """A mandatory publish could not be routed (basic.return), e.g. 312 NO_ROUTE."""

    def __init__(self, reply_code: int, reply_text: str, exchange: str, routing_key: str) -> None:
        super().__init__(
            f"broker returned a message published to exchange {exchange!r} with routing key "
            f"{routing_key!r}: {reply_code} {reply_text}"
        )
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.exchange = exchange
        self.routing_key = routing_key


class InvalidURI(ProtocolError):
    """An amqp:// or amqps:// URI that cannot be used; the message never repeats the password."""


class StreamError(ProtocolError):
    """Root of the stream protocol's errors (rabbitmq-stream://): what rstream raised is the cause.

    `endpoint` is the redacted URI (never the password).
    """

    def __init__(self, message: str, *, endpoint: str) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class StreamAuthenticationError(StreamError):
    """The broker refused the stream connection's credentials."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(f"{endpoint}: the broker refused the credentials", endpoint=endpoint)


class StreamNotFound(StreamError):
    """No stream of that name in the endpoint's vhost."""

    def __init__(self, stream: str, endpoint: str) -> None:
        super().__init__(f"{endpoint}: no stream {stream!r}", endpoint=endpoint)
        self.stream = stream


class StreamConnectionLost(StreamError):
    """The stream connection failed, closed, or could not be opened; `detail` says how."""

    def __init__(self, detail: str, endpoint: str) -> None:
        super().__init__(f"{endpoint}: stream connection lost: {detail}", endpoint=endpoint)
        self.detail = detail
