"""Broker failures under a live connection: clear typed errors, promptly, and nothing left hanging."""

from __future__ import annotations

import asyncio

import pytest

from protocol import connect
from protocol.errors import ConnectionClosedByBroker, ConnectionLost, HeartbeatTimeout
from protocol.loop import run

pytestmark = pytest.mark.slow

HEARTBEAT = 2


async def consuming_connection(uri: str):
    conn = await connect(f"{uri}?heartbeat={HEARTBEAT}")
    ch = await conn.channel()
    await ch.queue_declare("warren.fault", durable=True)
    cancelled = asyncio.get_running_loop().create_future()
    await ch.consume("warren.fault", lambda m: None, on_cancel=cancelled.set_result)
    return conn, cancelled


def other_tasks() -> set[asyncio.Task]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


def test_killed_broker_surfaces_as_connection_lost_within_two_heartbeats(fresh_broker):
    node = fresh_broker()

    async def main():
        conn, cancelled = await consuming_connection(node.amqp_uri)
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        await asyncio.to_thread(node.kill)
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(asyncio.shield(conn.closed), 2 * HEARTBEAT)
        took = loop.time() - killed_at
        reason = await asyncio.wait_for(cancelled, 1)
        assert isinstance(reason, ConnectionLost)  # the consumer learns why it stopped
        assert not other_tasks()
        return took

    assert run(main()) < 2 * HEARTBEAT


def test_hung_broker_surfaces_as_heartbeat_timeout_within_two_heartbeats(fresh_broker):
    node = fresh_broker()

    async def main():
        conn, cancelled = await consuming_connection(node.amqp_uri)
        loop = asyncio.get_running_loop()
        node.pause()  # the socket stays open but nothing more arrives: only heartbeats can tell
        try:
            paused_at = loop.time()
            with pytest.raises(HeartbeatTimeout):
                await asyncio.wait_for(asyncio.shield(conn.closed), 2 * HEARTBEAT + 1)
            took = loop.time() - paused_at
        finally:
            node.resume()
        assert isinstance(await asyncio.wait_for(cancelled, 1), HeartbeatTimeout)
        assert not other_tasks()
        return took

    assert run(main()) <= 2 * HEARTBEAT


def test_connection_forced_by_operator_is_a_typed_broker_error(fresh_broker):
    node = fresh_broker()

    async def main():
        conn, _ = await consuming_connection(node.amqp_uri)
        await asyncio.to_thread(node.ctl, "close_all_connections", "maintenance window")
        with pytest.raises(ConnectionClosedByBroker) as info:
            await asyncio.wait_for(asyncio.shield(conn.closed), 10)
        assert info.value.reply_code == 320  # CONNECTION_FORCED
        assert "maintenance window" in info.value.reply_text
        assert not other_tasks()

    run(main())


def test_publisher_waits_while_broker_blocks_and_resumes_after(fresh_broker):
    node = fresh_broker()

    async def main():
        conn = await connect(node.amqp_uri)
        ch = await conn.channel()
        await ch.queue_declare("warren.blocked", durable=True)
        await ch.confirm_select()
        await ch.publish("", "warren.blocked", b"before")
        await ch.wait_for_confirms()
        await asyncio.to_thread(node.ctl, "set_vm_memory_high_watermark", "0.0000001")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        # the broker blocks a connection when it next publishes; this one triggers the alarm's notice
        await ch.publish("", "warren.blocked", b"trigger")
        while not conn.blocked and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert conn.blocked
        publish = asyncio.ensure_future(ch.publish("", "warren.blocked", b"while blocked"))
        await asyncio.sleep(0.5)
        assert not publish.done()  # waiting, not buffering
        await asyncio.to_thread(node.ctl, "set_vm_memory_high_watermark", "0.4")
        await asyncio.wait_for(publish, 20)
        await asyncio.wait_for(ch.wait_for_confirms(), 20)
        assert not conn.blocked
        depth = (await ch.queue_declare("warren.blocked", passive=True)).message_count
        await conn.close()
        return depth

    assert run(main()) == 3
