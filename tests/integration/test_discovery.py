"""`src-queue-pattern` against a real broker: the archiver archives every matching queue (and stream, when
asked), picks up one declared while it runs, stops one that is deleted without disturbing the others,
and leaves alone the queues the pattern does not match."""

from __future__ import annotations

import pika
import pytest

from tests.integration.archiving import (
    Witness,
    archived_count,
    publish,
    queue_source,
    simple_messages,
    stream_source,
    write_config,
)
from tests.polling import wait_until


def delete_queue(uri: str, queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(uri))
    try:
        connection.channel().queue_delete(queue)
    finally:
        connection.close()


@pytest.mark.slow
def test_a_pattern_archives_the_matching_queues_as_they_come_and_go(fresh_broker, archivers, tmp_path):
    node = fresh_broker()
    eu, us, later, other, log = "disc.orders.eu", "disc.orders.us", "disc.orders.later", "disc.audit", "disc.orders.log"
    with Witness(node.amqp_uri) as witness:
        witness.declare_queue(eu)
        witness.declare_queue(us, arguments={"x-queue-type": "quorum"})
        witness.declare_queue(other)
        witness.declare_stream(log)
    sink = tmp_path / "archive"
    config = write_config(
        tmp_path / "warren.toml",
        node,
        sink,
        [{"src-queue-pattern": r"^disc\.orders\.", "queue-types": ["classic", "quorum", "stream"]}],
        discovery_interval=0.5,
        definitions_interval=0,
    )
    for queue in (eu, us, other, log):
        publish(node.amqp_uri, simple_messages(30, queue))
    archiver = archivers.start("--config", str(config))
    for queue in (eu, us):
        wait_until(lambda q=queue: archived_count(sink, queue_source(q)) == 30, timeout=60, what=f"{queue} archived")
    wait_until(lambda: archived_count(sink, stream_source(log)) == 30, timeout=60, what="the stream archived")

    # Declared while the archiver runs: found on the next look.
    with Witness(node.amqp_uri) as witness:
        witness.declare_queue(later)
    publish(node.amqp_uri, simple_messages(20, later))
    wait_until(lambda: archived_count(sink, queue_source(later)) == 20, timeout=60, what="the later queue archived")

    # Deleted: stopped in order; the others go on archiving.
    delete_queue(node.amqp_uri, eu)
    archiver.wait_for_log('msg="source gone from the broker: stopping it"', timeout=30)
    publish(node.amqp_uri, simple_messages(10, us))
    wait_until(lambda: archived_count(sink, queue_source(us)) == 40, timeout=60, what="the others still archived")

    with Witness(node.amqp_uri) as witness:
        assert witness.depth(other) == 30, "a queue the pattern does not match was consumed"
    log_text = archiver.terminate()
    assert "Traceback" not in log_text
    assert archived_count(sink, queue_source(eu)) == 30
    assert archived_count(sink, queue_source(other)) == 0
