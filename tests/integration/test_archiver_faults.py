"""`warren archive` under crashes: of itself (kill -9) and of the broker (kill -9, restart).

Whatever the broker confirmed must end up in the archive at least once; a message archived twice must
carry the broker's redelivered flag on its later copies (so a replay can tell it is a possible
duplicate); a stream must be archived exactly once per offset; and `warren verify` must find the
sequence continuous across every restart. Kill moments are random; the seed is in every failure.
"""

from __future__ import annotations

import os
import random
import time
from collections import defaultdict

import pytest

from bridge.archive.record import Record
from tests.integration.archiving import (
    Witness,
    archived_count,
    assert_verifies,
    committed_seq,
    kill_after,
    publish,
    queue_source,
    read_archive,
    simple_messages,
    stream_source,
    write_config,
)
from tests.polling import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def seed():
    """Kill moments are random; WARREN_TEST_SEED replays a failure's."""
    return int(os.environ.get("WARREN_TEST_SEED", time.time_ns() % 1_000_000))


def assert_at_least_once_with_copies_proven(
    records: list[Record], expected_ids: list[str], note: str, *, proven: bool = True
) -> None:
    """Every confirmed message archived; each later record of a message a proven copy of an earlier one
    (with `proven=False`: marked either a copy or a possible copy of one, or not marked), and no record
    of a message archived once marked a copy (or a possible one)."""
    copies: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        copies[record.properties.message_id].append(record)
    missing = [m for m in expected_ids if m not in copies]
    assert not missing, f"{len(missing)} confirmed messages not archived, e.g. {missing[:5]} ({note})"
    assert set(copies) == set(expected_ids), f"messages nobody published are in the archive ({note})"
    for message_id, same in copies.items():
        # The first copy may or may not be a redelivery; every later one must say it is.
        unmarked = [r.seq for r in same[1:] if not r.redelivered]
        assert not unmarked, f"{message_id} archived again at sequences {unmarked} without redelivered ({note})"
        assert all(r.fingerprint is not None for r in same if r.redelivered), f"{message_id}: no fingerprint"
        assert len({r.body for r in same}) == 1 and len({r.raw_properties for r in same}) == 1
        assert same[0].copy_of is None and same[0].possible_copy_of is None, f"{message_id}: first one marked ({note})"
        earlier = {r.seq for r in same}
        for later in same[1:]:
            mark = later.copy_of if proven else later.copy_of or later.possible_copy_of
            if mark is None and not proven:
                continue  # the broker restarted: whether its acknowledgements survived cannot be known
            assert mark in earlier and mark < later.seq, (
                f"{message_id} at {later.seq} is not marked a copy of an earlier record: {later} ({note})"
            )


def test_archiver_killed_at_random_moments_loses_nothing_and_marks_every_copy_proven(
    fresh_broker, archivers, tmp_path, seed
):
    rng = random.Random(seed)
    node = fresh_broker()
    queue, sink, count = "faults.archiver-kill", tmp_path / "archive", 50_000
    source = queue_source(queue)
    with Witness(node.amqp_uri) as witness:
        witness.declare_queue(queue)
    sent = simple_messages(count, queue)
    started = time.monotonic()
    rate = publish(node.amqp_uri, sent, window=5000)
    args = ["--broker", node.amqp_uri, "--management-uri", node.management_uri, "--stream-uri", node.stream_uri]
    args += ["--queue", queue, "--sink", str(sink), "--prefetch-count", "400"]
    note = f"seed {seed}, published at {rate:.0f} msg/s"

    # Three kills, each after a random number of further committed records and a random instant more.
    killed_with = [kill_after(archivers.start(*args), sink, source, rng, 12_000, note, count) for _ in range(3)]

    archiver = archivers.start(*args)
    archiver.wait_for_log("msg=archiving")
    with Witness(node.amqp_uri) as witness:
        wait_until(lambda: witness.depth(queue) == 0, timeout=120, what=f"the queue drained ({note})")
        archiver.terminate()
        assert witness.depth(queue) == 0, f"messages returned to the queue after SIGTERM ({note})"
    took = time.monotonic() - started

    records = read_archive(sink, source)
    assert_at_least_once_with_copies_proven(records, [m.message_id for m in sent], note)
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert_verifies(sink)
    duplicates = len(records) - count
    print(f"\n{count} messages, killed at sequences {killed_with}, {duplicates} duplicates, {took:.1f}s; {note}")


def test_broker_killed_and_restarted_the_archiver_reconnects_and_archives_every_confirmed_message(
    fresh_broker, archivers, tmp_path, seed
):
    rng = random.Random(seed)
    node = fresh_broker()
    queue, sink, count = "faults.broker-kill", tmp_path / "archive", 20_000
    source = queue_source(queue)
    with Witness(node.amqp_uri) as witness:
        witness.declare_queue(queue)
    sent = simple_messages(count, queue)
    publish(node.amqp_uri, sent, window=5000)  # every one confirmed: persistent, in a durable queue
    config = write_config(
        tmp_path / "warren.toml",
        node,
        sink,
        [{"src-queue": queue, "prefetch-count": 100, "reconnect-delay": 1}],
        definitions_interval=0,
    )
    note = f"seed {seed}"
    kill_at = rng.randrange(1000, count // 2)

    archiver = archivers.start("--config", str(config))
    wait_until(lambda: committed_seq(sink, source) >= kill_at, timeout=60, what=f"sequence {kill_at} committed")
    node.kill()
    killed_with = committed_seq(sink, source)
    node.start()
    archiver.wait_for_log("msg=archiving", count=2, timeout=60)  # reconnected by itself

    with Witness(node.amqp_uri) as witness:
        wait_until(lambda: witness.depth(queue) == 0, timeout=120, what=f"the queue drained ({note})")
        archiver.terminate()
        assert witness.depth(queue) == 0, f"messages returned to the queue after SIGTERM ({note})"

    records = read_archive(sink, source)
    assert killed_with < count, f"the archive held everything before the broker died ({note})"
    # A restarted broker forgets the witness (a transient message): its copies are possible copies.
    assert_at_least_once_with_copies_proven(records, [m.message_id for m in sent], note, proven=False)
    assert_verifies(sink)
    print(f"\nbroker killed at sequence {killed_with}; {len(records) - count} duplicates; {note}")


def test_stream_archiver_killed_and_restarted_archives_every_offset_exactly_once(
    fresh_broker, archivers, tmp_path, seed
):
    rng = random.Random(seed)
    node = fresh_broker()
    stream, sink, count = "faults.stream", tmp_path / "archive", 30_000
    source = stream_source(stream)
    with Witness(node.amqp_uri) as witness:
        witness.declare_stream(stream)
    sent = simple_messages(count, stream)
    publish(node.amqp_uri, sent, window=5000)
    # Small segments, so commits come often and a kill can land between any two of them.
    config = write_config(
        tmp_path / "warren.toml",
        node,
        sink,
        [{"src-stream": stream}],
        segment_max_age=0.2,
        segment_max_bytes=16384,
        definitions_interval=0,
    )
    note = f"seed {seed}"

    killed_with = [
        kill_after(archivers.start("--config", str(config)), sink, source, rng, 8000, note, count) for _ in range(3)
    ]

    archiver = archivers.start("--config", str(config))
    archiver.wait_for_log("msg=archiving")
    wait_until(lambda: archived_count(sink, source) >= count, timeout=120, what=f"{count} records ({note})")
    archiver.terminate()

    records = read_archive(sink, source)
    assert [r.offset for r in records] == list(range(count)), f"a gap or a duplicate ({note})"
    assert all(m.body in r.body for r, m in zip(records, sent, strict=True))
    assert_verifies(sink)
    print(f"\nstream archiver killed at sequences {killed_with}; {note}")
