"""The harness itself: private nodes start on their own ports, survive kill -9 with their data, and go away."""

from __future__ import annotations

import socket

import pika
import pytest

pytestmark = pytest.mark.slow


def depth(uri: str, queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(uri))
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def test_node_killed_and_restarted_keeps_durable_messages_and_ports(fresh_broker):
    node = fresh_broker()
    ports = node.ports
    conn = pika.BlockingConnection(pika.URLParameters(node.amqp_uri))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("harness.durable", durable=True)
    for i in range(10):
        ch.basic_publish("", "harness.durable", b"m%d" % i, pika.BasicProperties(delivery_mode=2))
    conn.close()
    # The broker writes its metadata (Mnesia) log lazily, and a kill -9 a moment after a declare can take
    # the queue with it (seen on a loaded 3.10 host): flush it, as a node would have by itself soon after.
    node.ctl("eval", "mnesia:sync_log().")

    node.kill()
    assert not node.is_running()
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika.URLParameters(node.amqp_uri + "?connection_attempts=1"))

    node.start()
    assert node.ports == ports
    assert depth(node.amqp_uri, "harness.durable") == 10


def test_two_nodes_run_side_by_side_and_destroy_removes_everything(fresh_broker):
    a, b = fresh_broker(), fresh_broker()
    assert a.name != b.name and a.ports.amqp != b.ports.amqp
    for port in (a.ports.amqp, a.ports.stream, a.ports.management):  # AMQP, stream and management plugins listen
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert "rabbitmq_shovel" in a.ctl("status")
    b.destroy()
    assert not b.is_running() and not b.root.exists()
    assert a.is_running()
