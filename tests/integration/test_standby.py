"""Two archivers on one configuration, as on two hosts: the broker decides, through each source's lease
(an exclusive consumer on a queue of warren's own), which one archives it. The other stands by; when the
active one is killed -9 the standby takes over within seconds, and the archive holds every confirmed
message (its redeliveries marked copies) and every stream offset exactly once."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time

import pytest

from tests.integration.archiving import (
    ArchiverProcess,
    Witness,
    archived_count,
    assert_verifies,
    publish,
    queue_source,
    read_archive,
    simple_messages,
    stream_source,
    write_config,
)
from tests.integration.test_archiver_faults import assert_at_least_once_with_copies_proven
from tests.polling import wait_until

pytestmark = pytest.mark.slow

FIRST, SECOND = 3000, 3000


def log_time(archiver: ArchiverProcess, message: str, source: str) -> float:
    """When (Unix time) the archiver logged `message` for `source`, from its log line's ts=."""
    for line in archiver.stderr().splitlines():
        if (f"msg={message} " in line or f'msg="{message}"' in line) and source in line:
            stamp = re.search(r"ts=(\S+)Z", line)
            assert stamp is not None, line
            return dt.datetime.fromisoformat(stamp.group(1)).replace(tzinfo=dt.UTC).timestamp()
    raise AssertionError(f"{message!r} for {source} not in the log:\n{archiver.stderr()}")


def test_a_standby_takes_over_within_seconds_of_the_active_archiver_being_killed(fresh_broker, archivers, tmp_path):
    node = fresh_broker()
    queue, stream, sink = "ha.orders", "ha.events", tmp_path / "archive"
    with Witness(node.amqp_uri) as witness:
        witness.declare_queue(queue)
        witness.declare_stream(stream)
    config = write_config(
        tmp_path / "warren.toml",
        node,
        sink,
        [{"src-queue": queue, "prefetch-count": 200}, {"src-stream": stream}],
        segment_max_age=0.5,
        definitions_interval=0,
    )
    names = (str(queue_source(queue)), str(stream_source(stream)))
    active = archivers.start("--config", str(config))
    active.wait_for_log("msg=archiving", count=2, timeout=60)
    standby = archivers.start("--config", str(config))
    standby.wait_for_log('msg="standing by: another archiver holds the source"', count=2, timeout=60)

    sent = {q: simple_messages(FIRST + SECOND, q) for q in (queue, stream)}
    for q in (queue, stream):
        publish(node.amqp_uri, sent[q][:FIRST])
    for q, source in ((queue, queue_source(queue)), (stream, stream_source(stream))):
        wait_until(lambda s=source: archived_count(sink, s) >= FIRST, timeout=60, what=f"{q}: first part archived")
    assert "msg=archiving" not in standby.stderr(), "the standby archived while the other held the leases"

    # The rest published while the active archiver dies mid-stream.
    publishing = threading.Thread(
        target=lambda: [publish(node.amqp_uri, sent[q][FIRST:], window=200) for q in (queue, stream)], daemon=True
    )
    publishing.start()
    time.sleep(0.3)  # not a wait: lands the kill while the rest is being published
    active.kill()
    killed_at = time.time()
    standby.wait_for_log('msg="taking over the source"', count=2, timeout=30)
    standby.wait_for_log("msg=archiving", count=2, timeout=30)
    publishing.join(120)
    took = {name: log_time(standby, "archiving", name) - killed_at for name in names}
    assert all(t < 10 for t in took.values()), f"the standby took too long to take over: {took}"
    print("\ntaken over after " + ", ".join(f"{name}: {t:.2f}s" for name, t in took.items()))

    with Witness(node.amqp_uri) as witness:
        wait_until(lambda: witness.depth(queue) == 0, timeout=120, what="the queue drained by the standby")
    total = FIRST + SECOND
    wait_until(lambda: archived_count(sink, stream_source(stream)) >= total, timeout=120, what="every offset archived")
    log = standby.terminate()
    assert "Traceback" not in log

    records = read_archive(sink, queue_source(queue))
    assert_at_least_once_with_copies_proven(records, [m.properties.message_id for m in sent[queue]], "standby")
    archived = read_archive(sink, stream_source(stream))
    offsets = [r.offset for r in archived]
    # Offsets need not be contiguous: the broker's offset tracking (warren stores its offset too)
    # takes offsets of its own. Every message is there once, in order.
    assert offsets == sorted(set(offsets)), "a stream offset archived twice, or out of order"
    assert len(archived) == total
    assert all(m.body in r.body for r, m in zip(archived, sent[stream], strict=True)), "a message missing"
    assert_verifies(sink)


def consumers(node, queue: str) -> int:
    for line in node.ctl("list_queues", "-q", "--no-table-headers", "name", "consumers").splitlines():
        name, count = line.rsplit("\t", 1)
        if name == queue:
            return int(count)
    return 0


def test_archivers_on_one_configuration_share_its_sources_and_take_over_from_one_that_dies(
    fresh_broker, archivers, tmp_path
):
    node = fresh_broker()
    queues = [f"share.q{i}" for i in range(4)]
    sink = tmp_path / "archive"
    with Witness(node.amqp_uri) as witness:
        for queue in queues:
            witness.declare_queue(queue)
    config = write_config(
        tmp_path / "warren.toml",
        node,
        sink,
        [{"src-queue": q, "prefetch-count": 100} for q in queues],
        segment_max_age=0.5,
        definitions_interval=0,
    )
    first = archivers.start("--config", str(config))
    first.wait_for_log("msg=archiving", count=4, timeout=60)
    second = archivers.start("--config", str(config))

    # The first holds all four, then hands two on, one at a time: two each.
    second.wait_for_log("msg=archiving", count=2, timeout=60)
    wait_until(
        lambda: first.stderr().count('msg="handing the source to another archiver') == 2,
        timeout=30,
        what="two handed on",
    )
    for queue in queues:
        assert consumers(node, queue) == 1, f"{queue}: not one archiver consuming it"
    for queue in queues:
        publish(node.amqp_uri, simple_messages(200, queue))
    for queue in queues:
        wait_until(lambda q=queue: archived_count(sink, queue_source(q)) >= 200, timeout=60, what=f"{queue} archived")

    # One dies: the survivor takes its sources over.
    second.kill()
    first.wait_for_log('msg="taking over the source"', count=2, timeout=30)
    for queue in queues:
        publish(node.amqp_uri, simple_messages(100, queue, start=200))
    with Witness(node.amqp_uri) as witness:
        for queue in queues:
            wait_until(lambda q=queue: witness.depth(q) == 0, timeout=60, what=f"{queue} drained")
    first.terminate()
    for queue in queues:
        records = read_archive(sink, queue_source(queue))
        expected = [m.properties.message_id for m in simple_messages(300, queue)]
        assert_at_least_once_with_copies_proven(records, expected, queue)
    assert_verifies(sink)
