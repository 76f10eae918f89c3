"""Copies, measured from the outside: thousands of messages with identical content (heartbeats, ticks,
idempotent commands) published with confirms while `warren archive` is killed -9 again and again.

Every confirmed message must come back on replay, exactly once: the copies the broker delivered again
after a crash are the ones the archive marks (and the replay's "duplicates skipped" says how many),
whichever way the replay is cut: whole, resumed from a state file, or as two windows. Where the
archiver cannot prove a copy (no acknowledgement witness), it keeps the message and says so.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from bridge.archive.record import Record, Source
from bridge.harness.nodes import LocalNode
from tests.integration.archiving import (
    ArchiverProcess,
    Archivers,
    Outgoing,
    Witness,
    assert_verifies,
    committed_seq,
    kill_after,
    publish,
    queue_source,
    read_archive,
)
from tests.integration.replaying import (
    Replayers,
    depth,
    private_node,
    read_state,
    replay,
    rfc3339,
    summary,
)
from tests.polling import wait_until

pytestmark = pytest.mark.slow

COUNT = 11_000
BURST = 3000  # published before a kill with the broker paused: the archiver is busy with it when paused
TICK = pika.BasicProperties(delivery_mode=2, content_type="text/plain", headers={"kind": "tick", "every": 1})


@pytest.fixture(scope="module")
def target(rabbitmq, tmp_path_factory) -> Iterator[LocalNode]:
    with private_node(tmp_path_factory.mktemp("copies-target"), rabbitmq) as node:
        yield node


@pytest.fixture
def seed() -> int:
    """Kill moments are random; WARREN_TEST_SEED replays a failure's."""
    return int(os.environ.get("WARREN_TEST_SEED", time.time_ns() % 1_000_000))


def ticks(count: int, queue: str) -> list[Outgoing]:
    """`count` messages that are identical in every byte: exchange, routing key, properties and body."""
    return [Outgoing("", queue, b"tick", TICK)] * count


class PacedPublisher(threading.Thread):
    """Publishes in batches with confirms, a little at a time, so that publishing spans the kills."""

    def __init__(self, uri: str, messages: list[Outgoing], batches: int = 12) -> None:
        super().__init__(daemon=True)
        self.uri, self.messages, self.batches = uri, messages, batches
        self.confirmed = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        size = -(-len(self.messages) // self.batches)
        try:
            for start in range(0, len(self.messages), size):
                batch = self.messages[start : start + size]
                publish(self.uri, batch, window=500)  # returns once every one is confirmed
                self.confirmed += len(batch)
                time.sleep(0.15)  # pacing the producer, not waiting for anything
        except BaseException as err:
            self.error = err


def target_args(node: LocalNode) -> list[str]:
    return ["--target", node.amqp_uri, "--target-management-uri", node.management_uri]


def purge(node: LocalNode, queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(node.amqp_uri))
    try:
        connection.channel().queue_purge(queue)
    finally:
        connection.close()


def archive_through_kills(
    node: LocalNode, archivers: Archivers, sink: Path, queue: str, rng: random.Random, note: str, *, kills: int = 3
) -> list[Record]:
    # A quarter as a backlog, so that the archiver runs with full prefetch windows in flight when it is killed;
    # a burst more before each kill with the broker paused (so that one surely holds a window); the rest
    # published while it is killed and restarted.
    bursts = kills // 2
    backlog = COUNT // 4
    paced = COUNT - backlog - bursts * BURST
    publish(node.amqp_uri, ticks(backlog, queue), window=1000)
    publisher = PacedPublisher(node.amqp_uri, ticks(paced, queue))
    publisher.start()
    args = ["--broker", node.amqp_uri, "--management-uri", node.management_uri, "--stream-uri", node.stream_uri]
    args += ["--queue", queue, "--sink", str(sink), "--prefetch-count", "300"]
    source = queue_source(queue)
    for n in range(kills):
        if n % 2:
            publish(node.amqp_uri, ticks(BURST, queue), window=1000)
            kill_with_acknowledgements_held(archivers.start(*args), node, sink, source, note)
            continue
        kill_after(archivers.start(*args), sink, source, rng, 1500, note, COUNT)
    archiver = archivers.start(*args)
    archiver.wait_for_log("msg=archiving")
    publisher.join(120)
    assert publisher.error is None and publisher.confirmed == paced, f"publishing: {publisher.error}"
    with Witness(node.amqp_uri) as witness:
        wait_until(lambda: witness.depth(queue) == 0, timeout=120, what=f"{queue} drained ({note})")
    archiver.terminate()
    assert_verifies(sink)
    return read_archive(sink, source)


def kill_with_acknowledgements_held(
    archiver: ArchiverProcess, node: LocalNode, sink: Path, source: Source, note: str
) -> None:
    """Pause the broker (it reads nothing more), let the archiver make durable what it holds, kill it -9,
    resume the broker: those records' acknowledgements never took effect, so they are delivered again."""
    archiver.wait_for_log("msg=archiving", every=0.005)
    node.pause()  # while it works through the burst: it holds a prefetch window, in segments not all acknowledged
    try:
        seen = [-1]

        def settled() -> bool:
            now, before = committed_seq(sink, source), seen[0]
            seen[0] = now
            return now == before

        wait_until(settled, timeout=60, what=f"the archiver done with what it holds ({note})", every=0.5)
        archiver.kill()
    finally:
        node.resume()


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_identical_messages_through_archiver_kills_replay_to_exactly_the_confirmed_count(
    fresh_broker, archivers, target, tmp_path, seed, queue_type
):
    rng = random.Random(seed)
    node = fresh_broker()
    queue, sink = f"copies.ticks.{queue_type}", tmp_path / "archive"
    note = f"seed {seed}, {queue_type}"
    with Witness(node.amqp_uri) as witness:
        witness.declare_queue(queue, arguments={"x-queue-type": queue_type})

    records = archive_through_kills(node, archivers, sink, queue, rng, note, kills=4)
    copies = [r for r in records if r.copy_of is not None]
    possible = [r for r in records if r.possible_copy_of is not None]
    kept = len(records) - len(copies)  # what every replay of the whole archive publishes
    assert copies + possible, f"no kill left a copy behind: the test proves nothing ({note})"
    assert all(r.redelivered for r in copies + possible), f"a copy that was not a redelivery ({note})"
    if queue_type == "classic":
        assert copies, f"no kill left a proven copy behind ({note})"
        assert not possible, f"unproven copies ({note})"
    # A quorum queue may deliver again messages it was acknowledged just before the archiver died
    # (rabbitmq/rabbitmq-server#10327): those are kept and flagged possible copies, never dropped.
    assert kept - len(possible) <= COUNT <= kept, (
        f"{len(records)} records, {len(copies)} copies, {len(possible)} possible ({note})"
    )

    # Whole: everything confirmed, the proven copies skipped, the possible ones counted.
    whole = replay("--archive", str(sink), *target_args(target), "--definitions", "--source", queue)
    assert whole.returncode == 0, whole.stderr
    line = summary(whole.stdout)[queue]
    assert (line.replayed, line.duplicates_skipped, line.possible_duplicates) == (kept, len(copies), len(possible))
    assert depth(target.amqp_uri, queue) == kept
    purge(target, queue)

    # Resumed: stopped part-way (SIGTERM), then run again with the same state file.
    state = tmp_path / "replay.state"
    with Replayers(tmp_path) as replayers:
        first = replayers.start("--archive", str(sink), *target_args(target), "--state", str(state), "--rate", "3000")
        wait_until(
            lambda: read_state(state).get(f"%2F/queue/{queue}/", {}).get("confirmed_seq", 0) > len(records) // 4,
            timeout=60,
            what="a quarter of the records confirmed",
        )
        first.proc.send_signal(signal.SIGTERM)
        assert first.wait() == 0, first.describe()
    second = replay("--archive", str(sink), *target_args(target), "--state", str(state))
    assert second.returncode == 0, second.stderr
    a, b = summary(first.stdout())[queue], summary(second.stdout)[queue]
    assert a.replayed + b.replayed == kept and b.in_doubt == 0, (a.text, b.text)
    assert a.duplicates_skipped + b.duplicates_skipped == len(copies), (a.text, b.text)
    assert depth(target.amqp_uri, queue) == kept
    purge(target, queue)

    # Windowed: two windows that meet between two records, the second holding a copy of a record in the
    # first. A quorum run may leave only possible copies (above), which every replay keeps: then the two
    # windows meet in the middle and must still add up to the whole.
    cut = _cut(records, across=copies if copies or queue_type == "classic" else None)
    until = -(-records[cut].captured_ns // 1000) * 1000  # rounded up to the microsecond the CLI takes
    since = until + 1000
    windows = [("--until", rfc3339(until)), ("--since", rfc3339(since))]
    lines = []
    for flag, when in windows:
        result = replay("--archive", str(sink), *target_args(target), flag, when, "--source", queue)
        assert result.returncode == 0, result.stderr
        lines.append(summary(result.stdout)[queue])
    assert sum(line.replayed for line in lines) == kept, [line.text for line in lines]
    assert sum(line.duplicates_skipped for line in lines) == len(copies), [line.text for line in lines]
    assert depth(target.amqp_uri, queue) == kept
    purge(target, queue)
    print(f"\n{COUNT} identical messages, {len(copies)} copies proven; {note}")


def _cut(records: list[Record], across: list[Record] | None = None) -> int:
    """An index i with a gap of more than 3 µs after record i, as near the middle as can be; with `across`,
    also a copy after it of a record up to it (so the second window holds a copy whose original is in the
    first)."""
    candidates = [
        i
        for i in range(len(records) - 1)
        if records[i + 1].captured_ns - records[i].captured_ns > 3000
        and (
            across is None
            or any(c.seq > records[i].seq and c.copy_of is not None and c.copy_of <= records[i].seq for c in across)
        )
    ]
    assert candidates, f"no place to cut the archive in two{' with a copy on each side' if across is not None else ''}"
    return min(candidates, key=lambda i: abs(i - len(records) // 2))


def test_without_a_witness_copies_are_kept_and_counted_as_possible_duplicates(
    fresh_broker, archivers, target, tmp_path, seed
):
    rng = random.Random(seed)
    node = fresh_broker()
    queue, sink = "copies.unwitnessed", tmp_path / "archive"
    note = f"seed {seed}"
    # A user who may not declare warren's witness queues: copies cannot be proven.
    node.ctl("add_user", "archiver", "s3cret")
    node.ctl("set_permissions", "-p", "/", "archiver", r"^(?!warren\.ack\.).*", ".*", ".*")
    with Witness(node.amqp_uri) as witness:
        witness.declare_queue(queue)
    publish(node.amqp_uri, ticks(COUNT, queue), window=500)
    uri = node.amqp_uri.replace("guest:guest@", "archiver:s3cret@")
    args = ["--broker", uri, "--management-uri", node.management_uri, "--stream-uri", node.stream_uri]
    args += ["--queue", queue, "--sink", str(sink), "--prefetch-count", "300"]
    source = queue_source(queue)
    kill_after(archivers.start(*args), sink, source, rng, 1500, note, COUNT)
    kill_with_acknowledgements_held(archivers.start(*args), node, sink, source, note)
    archiver = archivers.start(*args)
    archiver.wait_for_log("msg=archiving")
    with Witness(node.amqp_uri) as witness:
        wait_until(lambda: witness.depth(queue) == 0, timeout=120, what=f"{queue} drained ({note})")
    log = archiver.terminate()
    assert "no acknowledgement witness" in log

    records = read_archive(sink, source)
    possible = [r for r in records if r.possible_copy_of is not None]
    assert not [r for r in records if r.copy_of is not None], f"a copy marked proven without proof ({note})"
    # Which of the identical redeliveries are copies (if any are) cannot be told: every one that could
    # be is marked, and none is dropped.
    assert possible, f"no redelivery marked: the test proves nothing ({note})"
    assert len(records) >= COUNT and len(possible) >= len(records) - COUNT, (len(records), len(possible), note)

    result = replay("--archive", str(sink), *target_args(target), "--definitions", "--source", queue)
    assert result.returncode == 0, result.stderr
    line = summary(result.stdout)[queue]
    # Nothing dropped: every archived message comes back, the unproven copies counted as such.
    assert (line.replayed, line.duplicates_skipped, line.possible_duplicates) == (len(records), 0, len(possible))
    assert depth(target.amqp_uri, queue) == len(records)
    purge(target, queue)
