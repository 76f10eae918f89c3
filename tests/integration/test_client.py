"""Our AMQP client against a real RabbitMQ node: what an operator's tooling relies on."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import pika
import pytest

from protocol import Message, connect
from protocol.errors import (
    AuthenticationError,
    ChannelClosedByBroker,
    ConnectionClosedByBroker,
    ConsumerCancelled,
    MessageReturned,
)
from protocol.loop import run

_names = itertools.count()


def qname(prefix: str = "t") -> str:
    return f"warren.test.{prefix}.{next(_names)}.{uuid.uuid4().hex[:6]}"


def with_query(uri: str, query: str) -> str:
    return uri + ("&" if "?" in uri else "?") + query


async def drain(ch, queue: str, count: int, timeout: float = 20, **consume_args) -> list[Message]:
    got: list[Message] = []
    done = asyncio.get_running_loop().create_future()

    def on_message(message: Message) -> None:
        got.append(message)
        if len(got) >= count and not done.done():
            done.set_result(None)

    tag = await ch.consume(queue, on_message, **consume_args)
    await asyncio.wait_for(done, timeout)
    await ch.cancel(tag)
    return got


def test_plain_and_amqplain_logins_open_the_vhost(broker):
    async def main():
        for mechanism in ("plain", "amqplain"):
            conn = await connect(with_query(broker.amqp_uri, f"auth_mechanism={mechanism}"))
            assert conn.is_open
            assert conn.server_properties["product"] == b"RabbitMQ" or conn.server_properties["product"] == "RabbitMQ"
            await conn.close()
            assert conn.closed.done() and conn.closed.exception() is None

    run(main())


def test_wrong_password_is_an_authentication_error_without_the_password(broker):
    uri = broker.amqp_uri.replace("guest:guest", "guest:s3cret-wrong")

    async def main():
        with pytest.raises(AuthenticationError) as info:
            await connect(uri)
        assert info.value.reply_code == 403
        assert "s3cret-wrong" not in str(info.value)

    run(main())


def test_unknown_vhost_is_refused_with_the_brokers_reply(broker):
    uri = broker.amqp_uri.rsplit("/", 1)[0] + "/no-such-vhost"

    async def main():
        with pytest.raises(ConnectionClosedByBroker) as info:
            await connect(uri)
        assert info.value.reply_code == 530  # NOT_ALLOWED
        assert "no-such-vhost" in info.value.reply_text

    run(main())


def test_tune_negotiates_frame_max_and_heartbeat_we_ask_for(broker):
    async def main():
        conn = await connect(with_query(broker.amqp_uri, "frame_max=8192&heartbeat=7"))
        assert conn.frame_max == 8192
        assert conn.heartbeat == 7
        await conn.close()

    run(main())


@pytest.mark.parametrize("queue_type", ["classic", "quorum", "stream"])
def test_declare_queue_types_and_look_them_up_passively(broker, queue_type):
    name = qname(queue_type)

    async def main():
        conn = await connect(broker.amqp_uri)
        ch = await conn.channel()
        arguments = {"x-queue-type": queue_type, "x-max-length-bytes": 10_000_000}
        info = await ch.queue_declare(name, durable=True, arguments=arguments)
        assert info.queue == name
        again = await ch.queue_declare(name, passive=True)
        assert again.queue == name and again.message_count == 0
        listed = await asyncio.to_thread(broker.ctl, "list_queues", "name", "type", "arguments", "--no-table-headers")
        row = next(line for line in listed.splitlines() if line.startswith(name + "\t"))
        assert f"\t{queue_type}\t" in row and "10000000" in row
        await ch.queue_delete(name)
        await conn.close()

    run(main())
    assert name not in broker.ctl("list_queues", "name")


def test_redeclare_with_other_arguments_is_precondition_failed_and_channel_closes(broker):
    name = qname("pre")

    async def main():
        conn = await connect(broker.amqp_uri)
        ch = await conn.channel()
        await ch.queue_declare(name, durable=True)
        with pytest.raises(ChannelClosedByBroker) as info:
            await ch.queue_declare(name, durable=False)
        assert info.value.reply_code == 406
        assert info.value.reply_name == "PRECONDITION_FAILED"
        assert not ch.is_open
        with pytest.raises(ChannelClosedByBroker):
            await ch.queue_declare(name, passive=True)
        ch2 = await conn.channel()  # the connection survives a channel error
        await ch2.queue_delete(name)
        await conn.close()

    run(main())


def test_missing_queue_is_not_found_and_reserved_exchange_is_access_refused(broker):
    async def main():
        conn = await connect(broker.amqp_uri)
        ch = await conn.channel()
        with pytest.raises(ChannelClosedByBroker) as info:
            await ch.queue_declare(qname("missing"), passive=True)
        assert info.value.reply_code == 404
        ch = await conn.channel()
        with pytest.raises(ChannelClosedByBroker) as info:
            await ch.exchange_declare("amq.warren-test", "topic")
        assert info.value.reply_code == 403
        await conn.close()

    run(main())


def test_exchange_binding_routes_published_messages(broker):
    exchange, queue = qname("x"), qname("bound")

    async def main():
        conn = await connect(broker.amqp_uri)
        ch = await conn.channel()
        await ch.exchange_declare(exchange, "topic", auto_delete=True)
        await ch.queue_declare(queue, auto_delete=True)
        await ch.queue_bind(queue, exchange, "orders.#")
        await ch.confirm_select()
        await ch.publish(exchange, "orders.eu.1", b"routed")
        await ch.publish(exchange, "invoices.1", b"not routed")
        await ch.wait_for_confirms()
        got = await drain(ch, queue, 1)
        assert [m.body for m in got] == [b"routed"]
        assert got[0].exchange == exchange and got[0].routing_key == "orders.eu.1"
        await ch.exchange_delete(exchange)
        await conn.close()

    run(main())


def test_mandatory_publish_without_route_is_returned_and_reported(broker):
    async def main():
        conn = await connect(broker.amqp_uri)
        ch = await conn.channel()
        await ch.confirm_select()
        await ch.publish("", qname("nowhere"), b"lost?", mandatory=True)
        with pytest.raises(MessageReturned) as info:
            await ch.wait_for_confirms()
        assert info.value.reply_code == 312  # NO_ROUTE
        await conn.close()

    run(main())


def test_bodies_split_across_frames_come_back_whole(broker):
    queue = qname("big")
    bodies = [b"", b"a", bytes(range(256)) * 40, b"z" * (4096 * 3 - 8), b"q" * 1_000_001]

    async def main():
        # a small frame_max forces many body frames per message, both ways
        conn = await connect(with_query(broker.amqp_uri, "frame_max=4096"))
        ch = await conn.channel()
        await ch.queue_declare(queue, auto_delete=True)
        await ch.confirm_select()
        for body in bodies:
            await ch.publish("", queue, body)
        await ch.wait_for_confirms()
        got = await drain(ch, queue, len(bodies), no_ack=True)
        assert [m.body for m in got] == bodies
        await conn.close()

    run(main())


def test_get_ack_nack_reject_and_multiple_ack(broker):
    queue = qname("acks")

    async def main():
        conn = await connect(broker.amqp_uri)
        ch = await conn.channel()
        await ch.queue_declare(queue, durable=True)
        await ch.confirm_select()
        for i in range(10):
            await ch.publish("", queue, b"%d" % i)
        await ch.wait_for_confirms()
        unacked = await ch.get(queue)  # message 0 stays unacked on `ch` until it closes
        assert unacked is not None and unacked.body == b"0"
        ch2 = await conn.channel()
        first = await ch2.get(queue)
        assert first is not None and first.body == b"1"
        ch2.reject(first.delivery_tag, requeue=False)  # dropped
        second = await ch2.get(queue)
        assert second is not None and second.body == b"2"
        ch2.nack(second.delivery_tag, requeue=True)  # back to the queue
        tags = []
        for _ in range(3):
            m = await ch2.get(queue)
            assert m is not None
            tags.append(m.delivery_tag)
        ch2.ack(tags[-1], multiple=True)  # one frame acks all three
        await ch2.close()
        await ch.close()  # the unacked first get goes back to the queue
        ch3 = await conn.channel()
        depth = (await ch3.queue_declare(queue, passive=True)).message_count
        await ch3.queue_delete(queue)
        await conn.close()
        return depth

    # 10 published, 1 rejected without requeue, 3 acked: 6 left (0 and 2 requeued among them)
    assert run(main()) == 6


def test_basic_get_on_empty_queue_returns_none(broker):
    queue = qname("empty")

    async def main():
        conn = await connect(broker.amqp_uri)
        ch = await conn.channel()
        await ch.queue_declare(queue, auto_delete=True)
        assert await ch.get(queue) is None
        await conn.close()

    run(main())


def test_deleting_the_queue_cancels_the_consumer_with_a_typed_reason(broker):
    queue = qname("cancelled")

    async def main():
        conn = await connect(broker.amqp_uri)
        ch = await conn.channel()
        await ch.queue_declare(queue)
        cancelled = asyncio.get_running_loop().create_future()
        await ch.consume(queue, lambda m: None, on_cancel=cancelled.set_result)
        other = await conn.channel()
        await other.queue_delete(queue)
        reason = await asyncio.wait_for(cancelled, 10)
        assert isinstance(reason, ConsumerCancelled)
        assert ch.is_open  # a cancel notification does not close the channel
        await conn.close()

    run(main())


def test_prefetch_bounds_what_the_broker_hands_us_unacknowledged(broker):
    queue = qname("prefetch")

    async def main():
        conn = await connect(broker.amqp_uri)
        ch = await conn.channel()
        await ch.queue_declare(queue, auto_delete=True)
        await ch.confirm_select()
        for i in range(200):
            await ch.publish("", queue, b"%d" % i)
        await ch.wait_for_confirms()
        consumer = await conn.channel()
        await consumer.qos(7)
        got: list[Message] = []
        await consumer.consume(queue, got.append)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while len(got) < 7 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # more would have arrived by now if the broker were sending them
        held = len(got)
        consumer.ack(got[-1].delivery_tag, multiple=True)
        deadline = loop.time() + 5
        while len(got) < 14 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await conn.close()
        return held, len(got)

    held, after_ack = run(main())
    assert held == 7
    assert after_ack == 14


def test_stream_consumer_with_offset_argument_reads_from_the_start(broker):
    stream = qname("stream")

    async def main():
        conn = await connect(broker.amqp_uri)
        ch = await conn.channel()
        await ch.queue_declare(stream, durable=True, arguments={"x-queue-type": "stream"})
        await ch.confirm_select()
        for i in range(20):
            await ch.publish("", stream, b"%d" % i, properties={"message_id": str(i)})
        await ch.wait_for_confirms()
        reader = await conn.channel()
        await reader.qos(50)  # streams need a prefetch
        got = await drain(reader, stream, 20, arguments={"x-stream-offset": "first"})
        for message in got:
            reader.ack(message.delivery_tag, multiple=True)
        assert [m.body for m in got] == [b"%d" % i for i in range(20)]
        assert got[3].properties.message_id == "3"
        await ch.queue_delete(stream)
        await conn.close()

    run(main())


def test_messages_published_by_pika_arrive_with_identical_properties(broker):
    queue = qname("pika")
    props = pika.BasicProperties(
        content_type="text/plain",
        headers={"a": 1, "b": "two", "c": [1, 2], "d": {"e": True}},
        delivery_mode=2,
        priority=3,
        correlation_id="c",
        reply_to="r",
        expiration="60000",
        message_id="m",
        timestamp=1_700_000_000,
        type="t",
        user_id="guest",
        app_id="pika",
    )
    conn = pika.BlockingConnection(pika.URLParameters(broker.amqp_uri))
    ch = conn.channel()
    ch.queue_declare(queue, auto_delete=False)
    ch.basic_publish("", queue, b"from pika", props)
    conn.close()

    async def main():
        c = await connect(broker.amqp_uri)
        channel = await c.channel()
        got = await drain(channel, queue, 1, no_ack=True)
        await channel.queue_delete(queue)
        await c.close()
        return got[0]

    message = run(main())
    p = message.properties
    assert message.body == b"from pika"
    assert (p.content_type, p.delivery_mode, p.priority, p.correlation_id, p.reply_to) == ("text/plain", 2, 3, "c", "r")
    assert (p.expiration, p.message_id, p.message_type, p.user_id, p.app_id) == ("60000", "m", "t", "guest", "pika")
    assert p.timestamp.timestamp() == 1_700_000_000
    assert p.headers == {"a": 1, "b": "two", "c": [1, 2], "d": {"e": True}}
