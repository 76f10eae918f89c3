"""Snapshots leave the queue as they found it, and replay restores the queue as one snapshot saw it.

On RabbitMQ 4 every quorum queue has a delivery limit (20 unless set otherwise), and a snapshot, which
returns every message to the queue, counts as a delivery of each: the 21st would make the broker drop
or dead-letter them. warren refuses such a snapshot naming the queue and the limit; with the limit
lifted, or on a classic queue, any number of snapshots keeps every message.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.harness.nodes import LocalNode
from tests.integration.archiving import Archivers, Witness, publish, simple_messages, source_args
from tests.integration.replaying import drain_queue, instant_between, private_node, replay, rfc3339, summary

SNAPSHOTS = 25


@pytest.fixture(scope="module")
def target(rabbitmq, tmp_path_factory) -> Iterator[LocalNode]:
    with private_node(tmp_path_factory.mktemp("snapshot-target"), rabbitmq) as node:
        yield node


def snapshot(archivers: Archivers, node: LocalNode, queue: str, sink: Path):
    return archivers.run(*source_args(node), "--queue", queue, "--sink", str(sink), "--snapshot")


def replay_queue(sink: Path, target: LocalNode, queue: str, *args: str) -> list[str]:
    """Replay the queue into the target (topology first) and drain it there: the message ids, in order."""
    result = replay(
        "--archive", str(sink), "--target", target.amqp_uri, "--target-management-uri", target.management_uri,
        "--definitions", "--source", queue, *args,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary(result.stdout)[queue].duplicates_skipped == 0
    return [m.properties.message_id for m in drain_queue(target.amqp_uri, queue)]


def test_repeated_snapshots_replay_as_the_latest_one_complete_by_the_time_asked(broker, archivers, target, tmp_path):
    queue, sink = "snapshots.classic", tmp_path / "archive"
    with Witness(broker.amqp_uri) as witness:
        witness.declare_queue(queue)
    first = simple_messages(100, queue)
    publish(broker.amqp_uri, first)
    assert snapshot(archivers, broker, queue, sink).returncode == 0
    between = instant_between()
    more = simple_messages(50, queue, start=100)
    publish(broker.amqp_uri, more)
    for _ in range(2):
        result = snapshot(archivers, broker, queue, sink)
        assert result.returncode == 0, result.stderr

    everything = [m.message_id for m in first + more]
    assert replay_queue(sink, target, queue) == everything  # once, though three snapshots hold most of it
    assert replay_queue(sink, target, queue, "--at", rfc3339(between)) == [m.message_id for m in first]
    with Witness(broker.amqp_uri) as witness:
        assert [p.message_id for p, _ in witness.fetch_all(queue)] == everything  # nothing taken


@pytest.mark.rabbitmq("4.0")
def test_snapshot_of_a_quorum_queue_with_the_default_delivery_limit_is_refused_and_the_queue_keeps_everything(
    broker, archivers, tmp_path
):
    queue, sink = "snapshots.quorum.limited", tmp_path / "archive"
    with Witness(broker.amqp_uri) as witness:
        witness.declare_queue(queue, arguments={"x-queue-type": "quorum"})
    sent = simple_messages(5, queue)
    publish(broker.amqp_uri, sent)
    for _ in range(SNAPSHOTS):
        result = snapshot(archivers, broker, queue, sink)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert queue in last and "delivery limit of 20" in last, last
    with Witness(broker.amqp_uri) as witness:
        kept = witness.fetch_all(queue)
    assert [p.message_id for p, _ in kept] == [m.message_id for m in sent]
    assert all("x-delivery-count" not in (p.headers or {}) for p, _ in kept)  # never delivered at all


def test_any_number_of_snapshots_of_a_quorum_queue_without_a_limit_keeps_every_message(
    broker, archivers, target, tmp_path
):
    queue, sink = "snapshots.quorum.unlimited", tmp_path / "archive"
    unlimited = {"x-delivery-limit": -1} if broker.version >= "4" else {}  # 3.10's quorum queues have none
    with Witness(broker.amqp_uri) as witness:
        witness.declare_queue(queue, arguments={"x-queue-type": "quorum", **unlimited})
    sent = simple_messages(5, queue)
    publish(broker.amqp_uri, sent)
    for n in range(SNAPSHOTS):
        result = snapshot(archivers, broker, queue, sink)
        assert result.returncode == 0, f"snapshot {n + 1}: {result.stderr}"
    with Witness(broker.amqp_uri) as witness:
        assert witness.depth(queue) == len(sent)
    assert replay_queue(sink, target, queue) == [m.message_id for m in sent]
