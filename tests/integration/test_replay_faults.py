"""A replay killed with -9 and rerun with the same state file: nothing is lost, and what is duplicated is
bounded by what the rerun says was in doubt (queues) or nothing at all (streams, deduplicated).

50,000 messages of 256 bytes are archived from the session's broker (A) and replayed into a node of
this module's own (B); the replayer is killed at a random point after the target confirmed some.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest

from bridge.archive import layout
from bridge.archive.record import Source, SourceKind
from bridge.harness.nodes import LocalNode
from tests.integration.archiving import Archivers, Outgoing, Witness, publish, write_config
from tests.integration.replaying import (
    Replayers,
    SummaryLine,
    declare,
    drain_queue,
    output,
    private_node,
    read_state,
    read_stream,
    replay,
    summary,
    wait_archived,
)
from tests.polling import wait_until

pytestmark = pytest.mark.slow

COUNT = 50_000
BODY_BYTES = 256
CONFIRM_WINDOW = 1000  # warren replay's unconfirmed publishes per queue source


@pytest.fixture(scope="module")
def target(rabbitmq, tmp_path_factory) -> LocalNode:
    with private_node(tmp_path_factory.mktemp("faults-target"), rabbitmq) as node:
        yield node


def seeded_rng() -> random.Random:
    """Random, but reproducible: the seed is printed, and WARREN_TEST_SEED replays it."""
    seed = int(os.environ.get("WARREN_TEST_SEED", time.time_ns() % 1_000_000))
    print(f"WARREN_TEST_SEED={seed}")
    return random.Random(seed)


def numbered(i: int) -> bytes:
    return (b"%08d:" % i).ljust(BODY_BYTES, b"\xa5")


def number_of(body: bytes) -> int:
    return int(body[:8])


def archive_messages(broker: LocalNode, workdir: Path, kind: str, name: str) -> Path:
    """Publish COUNT numbered messages to a queue or stream on A while `warren archive` archives them."""
    sink = workdir / "archive"

    def setup(channel) -> None:
        channel.queue_delete(name)
        arguments = {"x-queue-type": "stream"} if kind == "stream" else None
        channel.queue_declare(name, durable=True, arguments=arguments)

    declare(broker.amqp_uri, setup)
    messages = [Outgoing("", name, numbered(i), pika.BasicProperties(delivery_mode=2)) for i in range(COUNT)]
    source = {"src-stream": name} if kind == "stream" else {"src-queue": name}
    config = write_config(workdir / "warren.toml", broker, sink, [source], segment_max_age=1)
    with Archivers(workdir) as archivers:
        archiver = archivers.start("--config", str(config))
        started = time.monotonic()
        rate = publish(broker.amqp_uri, messages, window=5000, timeout=240)
        wait_archived(sink, {name: COUNT}, timeout=240)
        took = time.monotonic() - started
        archiver.terminate()
    declare(broker.amqp_uri, lambda ch: ch.queue_delete(name))  # A is the session's: leave it as it was
    print(f"{kind} {name}: published {rate:,.0f} msg/s; archived {COUNT} in {took:.1f}s ({COUNT / took:,.0f} msg/s)")
    return sink


def state_key(kind: SourceKind, name: str) -> str:
    return layout.source_prefix("", Source("/", kind, name))


def kill_after_some_confirmed(
    replayers: Replayers, args: list[str], state: Path, key: str, reached: int, progress: Callable[[], int]
) -> dict[str, int]:
    """Start a replay, kill -9 it once the target holds `reached` messages; the state file as it was then."""
    first = replayers.start(*args)
    wait_until(
        lambda: (
            not first.running()
            or (read_state(state).get(key, {}).get("confirmed_seq", 0) > 0 and progress() >= reached)
        ),
        timeout=120,
        what=f"the replay to reach {reached} messages",
        every=0.005,
    )
    assert first.running(), f"the replay ended before it could be interrupted:\n{first.describe()}"
    first.kill()
    at_kill = read_state(state)[key]
    print(f"killed at {progress()} on the target; state file: {at_kill}")
    return at_kill


@dataclass(frozen=True)
class Interrupted:
    """A replay killed with -9 and rerun to completion with the same state file."""

    at_kill: dict[str, int]  # the state file as the kill left it: confirmed_seq, published_seq
    rerun: SummaryLine  # the rerun's summary of the source
    got: list[int]  # the numbers of the messages on the target, in order


@pytest.fixture(scope="module")
def queue_archive(broker, tmp_path_factory) -> tuple[Path, str]:
    """COUNT numbered messages of one queue, archived once for the module's replays."""
    queue = "faults.replay.queue"
    return archive_messages(broker, tmp_path_factory.mktemp("queue-archive"), "queue", queue), queue


@pytest.fixture(scope="module")
def interrupted_queue_replay(queue_archive, target, tmp_path_factory) -> Interrupted:
    workdir = tmp_path_factory.mktemp("interrupted-queue")
    sink, queue = queue_archive
    declare(target.amqp_uri, lambda ch: (ch.queue_delete(queue), ch.queue_declare(queue, durable=True)))
    state = workdir / "replay.state"
    args = ["--archive", str(sink), "--target", target.amqp_uri, "--source", queue, "--state", str(state)]
    key = state_key(SourceKind.QUEUE, queue)
    reached = seeded_rng().randrange(COUNT // 5, COUNT * 3 // 5)
    with Replayers(workdir) as replayers, Witness(target.amqp_uri) as witness:
        started = time.monotonic()
        at_kill = kill_after_some_confirmed(replayers, args, state, key, reached, lambda: witness.depth(queue))
    rerun = replay(*args, timeout=240)
    took = time.monotonic() - started
    assert rerun.returncode == 0, output(rerun)
    line = summary(rerun.stdout)[queue]
    print(f"replayed {COUNT} in {took:.1f}s across the kill ({COUNT / took:,.0f} msg/s); rerun: {line.text}")
    got = [number_of(r.body) for r in drain_queue(target.amqp_uri, queue)]
    print(f"{len(got) - COUNT} duplicates on the target; the rerun reported {line.in_doubt} in doubt")
    return Interrupted(at_kill, line, got)


def test_killed_queue_replay_rerun_with_state_delivers_every_message_repeating_only_unconfirmed_ones(
    interrupted_queue_replay,
):
    got, confirmed = interrupted_queue_replay.got, interrupted_queue_replay.at_kill["confirmed_seq"]
    assert 0 < confirmed < COUNT
    assert set(got) == set(range(COUNT)), f"{COUNT - len(set(got) & set(range(COUNT)))} messages lost"
    # Archive sequences start at 1 in publish order (message i is record i + 1). The killed run put a
    # prefix on the target; the rerun everything after what the state file had confirmed, in order.
    first_run = len(got) - (COUNT - confirmed)
    assert first_run >= confirmed
    assert got == list(range(first_run)) + list(range(confirmed, COUNT))
    assert interrupted_queue_replay.rerun.replayed == COUNT - confirmed


def test_killed_queue_replay_duplicates_no_more_than_the_rerun_reports_in_doubt_nor_the_confirm_window(
    interrupted_queue_replay,
):
    counts = Counter(interrupted_queue_replay.got)
    duplicated = sum(n - 1 for n in counts.values())
    in_doubt = interrupted_queue_replay.rerun.in_doubt
    assert duplicated <= in_doubt, f"{duplicated} duplicates, but the rerun reported {in_doubt} in doubt"
    assert duplicated <= CONFIRM_WINDOW, f"{duplicated} duplicates, more than the confirm window"


def test_killed_queue_replay_rerun_without_state_starts_over_and_loses_nothing(queue_archive, target, tmp_path):
    """Without --state a rerun cannot know what the target has: it replays the whole selection again,
    so the target holds every message, those of the killed run twice."""
    sink, queue = queue_archive
    declare(target.amqp_uri, lambda ch: (ch.queue_delete(queue), ch.queue_declare(queue, durable=True)))
    args = ["--archive", str(sink), "--target", target.amqp_uri, "--source", queue]
    reached = seeded_rng().randrange(COUNT // 5, COUNT * 3 // 5)
    with Replayers(tmp_path) as replayers, Witness(target.amqp_uri) as witness:
        first = replayers.start(*args)
        wait_until(
            lambda: not first.running() or witness.depth(queue) >= reached,
            timeout=120,
            what=f"the replay to reach {reached} messages",
            every=0.005,
        )
        assert first.running(), f"the replay ended before it could be interrupted:\n{first.describe()}"
        first.kill()
    rerun = replay(*args, timeout=240)
    assert rerun.returncode == 0, output(rerun)
    line = summary(rerun.stdout)[queue]
    assert line.replayed == COUNT and line.in_doubt == 0, line.text
    got = Counter(number_of(r.body) for r in drain_queue(target.amqp_uri, queue))
    assert set(got) == set(range(COUNT)), f"{COUNT - len(set(got) & set(range(COUNT)))} messages lost"
    first_run = sum(got.values()) - COUNT
    assert first_run >= reached and all(got[n] == 2 for n in range(first_run))  # the killed run's prefix


def test_killed_stream_replay_rerun_with_state_leaves_each_message_exactly_once(broker, target, tmp_path):
    stream = "faults.replay.stream"
    sink = archive_messages(broker, tmp_path, "stream", stream)
    declare(
        target.amqp_uri,
        lambda ch: (
            ch.queue_delete(stream),
            ch.queue_declare(stream, durable=True, arguments={"x-queue-type": "stream"}),
        ),
    )
    state = tmp_path / "replay.state"
    args = ["--archive", str(sink), "--target", target.amqp_uri, "--source", stream, "--state", str(state)]
    args += ["--target-management-uri", target.management_uri, "--target-stream-uri", target.stream_uri]
    key = state_key(SourceKind.STREAM, stream)
    with Replayers(tmp_path) as replayers:
        started = time.monotonic()
        at_kill = kill_after_some_confirmed(
            replayers,
            args,
            state,
            key,
            seeded_rng().randrange(COUNT // 5, COUNT * 3 // 5),
            lambda: read_state(state).get(key, {}).get("confirmed_seq", 0),
        )
    rerun = replay(*args, timeout=240)
    took = time.monotonic() - started
    assert rerun.returncode == 0, output(rerun)
    line = summary(rerun.stdout)[stream]
    print(f"replayed {COUNT} in {took:.1f}s across the kill ({COUNT / took:,.0f} msg/s); rerun: {line.text}")
    assert line.replayed == COUNT - at_kill["confirmed_seq"]

    got = [number_of(r.body) for r in read_stream(target.amqp_uri, stream, expected=COUNT)]
    counts = Counter(got)
    assert len(got) == COUNT, f"{len(got)} messages in the stream: {sum(n - 1 for n in counts.values())} duplicates"
    assert got == list(range(COUNT))
