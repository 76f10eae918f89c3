"""`warren replay` driven as an operator would: archive from the session's broker (A), replay into a
node of this module's own (B), and check with pika and B's management API what arrived.

One archive serves most tests: three batches published to a classic queue (with arguments, through a
topic exchange), a quorum queue and a stream on A, with T1 noted after the first batch was archived
and T2 after the second. Each test replays into its own vhost of B (`--map-vhost /=...`), except the
point-in-time scenario, which restores into B's default vhost exactly as the archive has it.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest

from bridge.harness.nodes import LocalNode
from tests.integration.archiving import (
    Archivers,
    Outgoing,
    publish,
    rich_properties,
    write_config,
)
from tests.integration.replaying import (
    DryLine,
    Management,
    Received,
    Replayers,
    declare,
    depth,
    drain_queue,
    dry_summary,
    instant_between,
    output,
    private_node,
    read_stream,
    replay,
    rfc3339,
    stream_vhost_uri,
    summary,
    vhost_uri,
    wait_archived,
)
from tests.polling import wait_until

CLASSIC = "replay.classic"
QUORUM = "replay.quorum"
STREAM = "replay.stream"
EXCHANGE = "replay.x"
CLASSIC_ARGS = {"x-max-length": 100_000, "x-max-length-bytes": 200_000_000, "x-overflow": "reject-publish"}
QUORUM_ARGS = {"x-queue-type": "quorum", "x-delivery-limit": 7, "x-max-in-memory-length": 1000}
STREAM_ARGS = {
    "x-queue-type": "stream",
    "x-max-length-bytes": 500_000_000,
    "x-stream-max-segment-size-bytes": 5_000_000,
}
BATCH = 60  # messages per source per batch; three batches
PIKA_FIELDS = (
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
    "cluster_id",
)


def body(i: int) -> bytes:
    """Empty, small, binary, and a few spanning several frames (frame_max is 128 KiB)."""
    if i % 41 == 0:
        return b""
    if i % 67 == 5:
        return bytes((i * 7 + k) % 256 for k in range(300_000))
    return f"message {i} ".encode() + bytes((i * 31 + k) % 256 for k in range(i % 300))


def routing_key(i: int) -> str:
    return f"orders.{'us' if i % 3 == 0 else 'eu'}.{i}"


def stream_properties(i: int) -> pika.BasicProperties:
    # A stream stores AMQP 1.0 application properties: RabbitMQ 3.10 refuses nested tables there.
    return pika.BasicProperties(
        content_type="application/octet-stream",
        delivery_mode=2,
        message_id=f"stream-{i:05d}",
        correlation_id=f"corr-{i}",
        timestamp=1_700_000_000 + i,
        app_id="warren-tests",
        headers={"seq": i, "text": f"héllo ✓ {i}", "flag": i % 2 == 0},
    )


@dataclass(frozen=True)
class PitrArchive:
    """The module's archive: what was published per source, batch by batch, and the times between."""

    sink: Path
    started_ns: int  # before the first publish
    t1_ns: int  # after batch 1 was archived, before batch 2 was published
    t2_ns: int  # after batch 2 was archived, before batch 3 was published
    sent: dict[str, list[list[Outgoing]]]  # source name -> three batches
    queues_on_a: dict[str, dict]  # management API's view of each queue on A

    def upto_t1(self, name: str) -> list[Outgoing]:
        return self.sent[name][0]

    def all(self, name: str) -> list[Outgoing]:
        return [m for batch in self.sent[name] for m in batch]


@pytest.fixture(scope="module")
def target(rabbitmq, tmp_path_factory) -> LocalNode:
    with private_node(tmp_path_factory.mktemp("replay-target"), rabbitmq) as node:
        yield node


@pytest.fixture(scope="module")
def pitr(broker, tmp_path_factory) -> PitrArchive:
    work = tmp_path_factory.mktemp("pitr")
    sink = work / "archive"

    def setup(channel) -> None:
        for queue in (CLASSIC, QUORUM, STREAM):
            channel.queue_delete(queue)
        channel.exchange_declare(EXCHANGE, "topic", durable=True)
        channel.queue_declare(CLASSIC, durable=True, arguments=CLASSIC_ARGS)
        channel.queue_bind(CLASSIC, EXCHANGE, "orders.#")
        channel.queue_declare(QUORUM, durable=True, arguments=QUORUM_ARGS)
        channel.queue_declare(STREAM, durable=True, arguments=STREAM_ARGS)

    declare(broker.amqp_uri, setup)
    sent: dict[str, list[list[Outgoing]]] = {CLASSIC: [], QUORUM: [], STREAM: []}
    for b in range(3):
        numbers = range(b * BATCH, (b + 1) * BATCH)
        sent[CLASSIC].append([Outgoing(EXCHANGE, routing_key(i), body(i), rich_properties(i)) for i in numbers])
        sent[QUORUM].append(
            [Outgoing("", QUORUM, body(i + 1), unprioritised(rich_properties(i + 1000))) for i in numbers]
        )
        sent[STREAM].append([Outgoing("", STREAM, body(i + 2), stream_properties(i)) for i in numbers])
    config = write_config(
        work / "warren.toml",
        broker,
        sink,
        [
            {"src-queue": CLASSIC, "prefetch-count": 100},  # a segment per 50 records at most
            {"src-queue": QUORUM, "prefetch-count": 100},
            {"src-stream": STREAM, "offset": "first"},
        ],
        segment_max_age=1,
    )
    management = Management(broker)
    queues_on_a = {name: management.queue("/", name) for name in (CLASSIC, QUORUM, STREAM)}
    with Archivers(work) as archivers:
        archiver = archivers.start("--config", str(config))
        archiver.wait_for_log("definitions saved")  # the topology is in the archive before T1
        started_ns = time.time_ns()
        marks = []
        for b in range(3):
            for name in (CLASSIC, QUORUM, STREAM):
                publish(broker.amqp_uri, sent[name][b])
            wait_archived(sink, {name: (b + 1) * BATCH for name in sent})
            marks.append(instant_between())
        archiver.terminate()
    return PitrArchive(sink, started_ns, marks[0], marks[1], sent, queues_on_a)


def unprioritised(properties: pika.spec.BasicProperties) -> pika.spec.BasicProperties:
    """Without a priority: RabbitMQ 4's quorum queues deliver priorities 5 and above first, so the order
    a consumer sees would no longer be the order of publishing (on the source as on the target)."""
    properties.priority = None
    return properties


def same_message(got: Received, want: Outgoing, version: str) -> None:
    """Byte-identical: the body, and every property including the header table with its AMQP types, as
    a broker of `version` delivers them (RabbitMQ 4 delivers the table's entries in name order)."""
    assert got.body == want.body, f"body of {want.message_id} differs"
    for name in PIKA_FIELDS:
        assert getattr(got.properties, name) == getattr(want.properties, name), f"{name} of {want.message_id}"
    assert got.raw_properties == want.raw_as_delivered_by(version), f"property bytes of {want.message_id} differ"


def same_stream_message(got: Received, want: Outgoing) -> None:
    assert got.body == want.body, f"body of {want.message_id} differs"
    for name in ("content_type", "message_id", "correlation_id", "timestamp", "app_id"):
        assert getattr(got.properties, name) == getattr(want.properties, name), f"{name} of {want.message_id}"
    for key, value in want.properties.headers.items():
        assert got.properties.headers.get(key) == value, f"header {key} of {want.message_id}"


def target_args(node: LocalNode, vhost: str = "/") -> list[str]:
    """--target and the target's other endpoints; a vhost other than '/' is reached with --map-vhost."""
    args = [
        "--target",
        vhost_uri(node, vhost),
        "--target-management-uri",
        node.management_uri,
        "--target-stream-uri",
        stream_vhost_uri(node, vhost),
    ]
    return args + (["--map-vhost", f"/={vhost}"] if vhost != "/" else [])


def test_replay_at_t_with_definitions_restores_every_queue_and_stream_as_it_was_at_t(pitr, target):
    result = replay("--archive", str(pitr.sink), *target_args(target), "--at", rfc3339(pitr.t1_ns), "--definitions")
    assert result.returncode == 0, output(result)
    lines = summary(result.stdout)
    for name in (CLASSIC, QUORUM, STREAM):
        assert not lines[name].failed and lines[name].replayed == BATCH, output(result)

    management = Management(target)
    for name in (CLASSIC, QUORUM, STREAM):
        on_a, on_b = pitr.queues_on_a[name], management.queue("/", name)
        assert on_b is not None, f"{name} was not restored"
        assert (on_b["type"], on_b["durable"], on_b["arguments"]) == (
            on_a["type"],
            on_a["durable"],
            on_a["arguments"],
        ), name
    recorded_type = {"x-queue-type": "classic"} if target.version >= "4" else {}  # 4.0 names the type it chose
    assert management.queue("/", CLASSIC)["arguments"] == CLASSIC_ARGS | recorded_type
    assert management.queue("/", QUORUM)["type"] == "quorum"
    assert management.queue("/", STREAM)["type"] == "stream"

    for name in (CLASSIC, QUORUM):
        got = drain_queue(target.amqp_uri, name)
        want = pitr.upto_t1(name)
        assert [g.properties.message_id for g in got] == [w.message_id for w in want], name
        for g, w in zip(got, want, strict=True):
            same_message(g, w, target.version)
    streamed = read_stream(target.amqp_uri, STREAM, expected=BATCH)
    want = pitr.upto_t1(STREAM)
    assert [g.properties.message_id for g in streamed] == [w.message_id for w in want]
    for g, w in zip(streamed, want, strict=True):
        same_stream_message(g, w)


def test_replay_without_definitions_into_an_empty_target_fails_naming_the_missing_queue(pitr, target):
    vhost = Management(target).create_vhost("no-definitions")
    result = replay("--archive", str(pitr.sink), *target_args(target, vhost), "--at", rfc3339(pitr.t1_ns))
    assert result.returncode != 0, output(result)
    text = result.stdout + result.stderr
    assert "--definitions" in text, output(result)
    lines = summary(result.stdout)
    for name in (CLASSIC, QUORUM, STREAM):
        assert lines[name].failed, output(result)
        why = lines[name].text.split("\n", 1)[1]  # the indented lines under the source's line
        assert f"'{name}'" in why and "--definitions" in why, f"{name}:\n{output(result)}"
    assert Management(target).queues(vhost) == [], "the failed replay created queues"


def test_replay_without_definitions_reports_nothing_replayed_for_the_refused_queue(pitr, target):
    vhost = Management(target).create_vhost("no-definitions-count")
    result = replay(
        "--archive", str(pitr.sink), *target_args(target, vhost), "--at", rfc3339(pitr.t1_ns), "--source", CLASSIC
    )
    assert result.returncode != 0, output(result)
    assert summary(result.stdout)[CLASSIC].replayed == 0, output(result)


def test_dry_run_lists_each_source_with_counts_and_capture_times_and_publishes_nothing(pitr, target):
    vhost = Management(target).create_vhost("dry-run")
    result = replay("--archive", str(pitr.sink), *target_args(target, vhost), "--at", rfc3339(pitr.t1_ns), "--dry-run")
    assert result.returncode == 0, output(result)
    dry = dry_summary(result.stdout)
    assert set(dry) == {CLASSIC, QUORUM, STREAM}, output(result)
    for name, line in dry.items():
        assert line.records == BATCH and line.bytes > 0, f"{name}: {output(result)}"
        assert pitr.started_ns <= line.first_ns <= line.last_ns <= pitr.t1_ns, f"{name}: {output(result)}"
    assert Management(target).queues(vhost) == [], "a dry run created queues"
    assert [x for x in Management(target).exchanges(vhost) if not x["name"].startswith("amq.") and x["name"]] == []


def test_dry_run_bytes_are_the_message_bytes_whatever_the_segment_boundaries(pitr):
    def dry(*window: str) -> DryLine:
        result = replay("--archive", str(pitr.sink), "--target", "amqp://127.0.0.1:1/", *window, "--dry-run")
        assert result.returncode == 0, output(result)
        return dry_summary(result.stdout)[CLASSIC]

    def message_bytes(messages: list[Outgoing]) -> int:
        return sum(len(m.body) + len(m.raw_properties) for m in messages)

    whole = dry("--at", rfc3339(pitr.t1_ns))  # the first batch, in segments wholly before T1
    cut = dry("--until", rfc3339(whole.last_ns - 1000))  # without its last message: cuts into a segment
    assert (whole.records, cut.records) == (BATCH, BATCH - 1)
    assert whole.bytes == message_bytes(pitr.upto_t1(CLASSIC)), f"without the last message: {cut.bytes} bytes"
    assert cut.bytes == message_bytes(pitr.upto_t1(CLASSIC)[:-1])


def test_relative_time_is_accepted_as_the_help_text_shows(pitr):
    result = replay("--archive", str(pitr.sink), "--target", "amqp://127.0.0.1:1/", "--since", "-1d", "--dry-run")
    assert result.returncode == 0, output(result)
    assert dry_summary(result.stdout)[CLASSIC].records == 3 * BATCH


def test_since_until_window_replays_only_the_messages_captured_inside_it(pitr, target):
    vhost = Management(target).create_vhost("window")
    result = replay(
        "--archive",
        str(pitr.sink),
        *target_args(target, vhost),
        "--definitions",
        "--since",
        rfc3339(pitr.t1_ns),
        "--until",
        rfc3339(pitr.t2_ns),
    )
    assert result.returncode == 0, output(result)
    uri = vhost_uri(target, vhost)
    for name in (CLASSIC, QUORUM):
        got = drain_queue(uri, name)
        assert [g.properties.message_id for g in got] == [m.message_id for m in pitr.sent[name][1]], name
    streamed = read_stream(uri, STREAM, expected=BATCH)
    assert [g.properties.message_id for g in streamed] == [m.message_id for m in pitr.sent[STREAM][1]]


def test_via_exchange_republishes_to_the_original_exchange_and_routing_key(pitr, target):
    vhost = Management(target).create_vhost("via-exchange")
    uri = vhost_uri(target, vhost)

    def topology(channel) -> None:
        channel.exchange_declare(EXCHANGE, "topic", durable=True)
        channel.queue_declare("bound.all", durable=True)
        channel.queue_bind("bound.all", EXCHANGE, "orders.#")
        channel.queue_declare("bound.eu", durable=True)
        channel.queue_bind("bound.eu", EXCHANGE, "orders.eu.*")

    declare(uri, topology)
    result = replay(
        "--archive",
        str(pitr.sink),
        *target_args(target, vhost),
        "--at",
        rfc3339(pitr.t1_ns),
        "--source",
        CLASSIC,
        "--via-exchange",
    )
    assert result.returncode == 0, output(result)
    want = pitr.upto_t1(CLASSIC)
    got = drain_queue(uri, "bound.all")
    assert [(g.exchange, g.routing_key) for g in got] == [(EXCHANGE, m.routing_key) for m in want]
    for g, w in zip(got, want, strict=True):
        same_message(g, w, target.version)
    eu = drain_queue(uri, "bound.eu")
    assert [g.routing_key for g in eu] == [m.routing_key for m in want if m.routing_key.startswith("orders.eu.")]


def test_map_queue_restores_and_fills_the_renamed_queue(pitr, target):
    vhost = Management(target).create_vhost("map-queue")
    result = replay(
        "--archive",
        str(pitr.sink),
        *target_args(target, vhost),
        "--at",
        rfc3339(pitr.t1_ns),
        "--definitions",
        "--source",
        QUORUM,
        "--map-queue",
        f"{QUORUM}=renamed",
    )
    assert result.returncode == 0, output(result)
    management = Management(target)
    renamed = management.queue(vhost, "renamed")
    assert renamed is not None and renamed["type"] == "quorum", renamed
    assert renamed["arguments"] == pitr.queues_on_a[QUORUM]["arguments"]
    assert management.queue(vhost, QUORUM) is None, "the original name was restored as well"
    got = drain_queue(vhost_uri(target, vhost), "renamed")
    want = pitr.upto_t1(QUORUM)
    assert [g.properties.message_id for g in got] == [m.message_id for m in want]
    for g, w in zip(got, want, strict=True):
        same_message(g, w, target.version)


def test_rerun_with_the_same_state_file_after_a_complete_replay_publishes_nothing(pitr, target, tmp_path):
    vhost = Management(target).create_vhost("state")
    uri = vhost_uri(target, vhost)
    state = tmp_path / "replay.state"
    args = [
        "--archive",
        str(pitr.sink),
        *target_args(target, vhost),
        "--at",
        rfc3339(pitr.t1_ns),
        "--state",
        str(state),
    ]
    first = replay(*args, "--definitions")
    assert first.returncode == 0, output(first)
    depths = {name: depth(uri, name) for name in (CLASSIC, QUORUM)}
    assert depths == {CLASSIC: BATCH, QUORUM: BATCH}

    again = replay(*args)
    assert again.returncode == 0, output(again)
    lines = summary(again.stdout)
    for name in (CLASSIC, QUORUM, STREAM):
        assert lines[name].replayed == 0 and not lines[name].failed, output(again)
        assert lines[name].in_doubt == 0, output(again)
    assert {name: depth(uri, name) for name in (CLASSIC, QUORUM)} == depths
    assert len(read_stream(uri, STREAM, expected=BATCH)) == BATCH


def test_rerun_with_the_same_state_file_says_the_earlier_run_confirmed_everything(pitr, target, tmp_path):
    vhost = Management(target).create_vhost("state-summary")
    state = tmp_path / "replay.state"
    args = ["--archive", str(pitr.sink), *target_args(target, vhost), "--at", rfc3339(pitr.t1_ns)]
    args += ["--state", str(state), "--source", CLASSIC]
    first = replay(*args, "--definitions")
    assert first.returncode == 0, output(first)
    again = replay(*args)
    assert again.returncode == 0, output(again)
    line = summary(again.stdout)[CLASSIC].text
    assert " 0 replayed" in line and f"up to {BATCH} were already confirmed by an earlier run" in line, output(again)


@dataclass(frozen=True)
class CorruptCopy:
    sink: Path
    victim: Path  # the damaged segment
    first_seq: int  # its first record's archive sequence (sequences start at 1)
    next_seq: int  # the first sequence of the segment after it


def corrupt_copy(pitr: PitrArchive, workdir: Path) -> CorruptCopy:
    """A copy of the archive with one byte flipped in the middle of the classic queue's second segment."""
    sink = workdir / "archive"
    shutil.copytree(pitr.sink, sink)
    classic = [p for p in sink.rglob("*.wseg") if "/queue/replay.classic/" in p.as_posix()]
    segments = sorted(classic, key=lambda p: p.name)  # named after their first sequence, zero-padded
    assert len(segments) >= 3, segments
    victim = segments[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    return CorruptCopy(sink, victim, int(victim.stem), int(segments[2].stem))


def test_corrupt_segment_stops_its_source_with_exit_5_naming_the_segment(pitr, target, tmp_path):
    copy = corrupt_copy(pitr, tmp_path)
    vhost = Management(target).create_vhost("corrupt")
    result = replay("--archive", str(copy.sink), *target_args(target, vhost), "--source", CLASSIC, "--definitions")
    assert result.returncode == 5, output(result)
    line = summary(result.stdout)[CLASSIC]
    assert line.failed and copy.victim.name in line.text, output(result)
    got = drain_queue(vhost_uri(target, vhost), CLASSIC)
    # The source stops at the damaged segment: everything before it arrived, nothing after it.
    assert [g.properties.message_id for g in got] == [m.message_id for m in pitr.all(CLASSIC)[: copy.first_seq - 1]]


def test_skip_corrupt_replays_the_rest_and_reports_the_skipped_segment(pitr, target, tmp_path):
    copy = corrupt_copy(pitr, tmp_path)
    vhost = Management(target).create_vhost("skip-corrupt")
    result = replay(
        "--archive", str(copy.sink), *target_args(target, vhost), "--source", CLASSIC, "--definitions", "--skip-corrupt"
    )
    assert result.returncode == 0, output(result)
    line = summary(result.stdout)[CLASSIC]
    assert not line.failed, output(result)
    assert "skipped corrupt segment" in line.text and copy.victim.name in line.text, output(result)
    everything = pitr.all(CLASSIC)
    want = everything[: copy.first_seq - 1] + everything[copy.next_seq - 1 :]
    got = drain_queue(vhost_uri(target, vhost), CLASSIC)
    assert [g.properties.message_id for g in got] == [m.message_id for m in want]
    assert line.replayed == len(want)


def test_follow_keeps_the_target_within_seconds_of_the_source(broker, target, tmp_path):
    queue = "replay.follow"
    sink = tmp_path / "archive"
    declare(broker.amqp_uri, lambda ch: (ch.queue_delete(queue), ch.queue_declare(queue, durable=True)))
    vhost = Management(target).create_vhost("follow")
    uri = vhost_uri(target, vhost)
    declare(uri, lambda ch: ch.queue_declare(queue, durable=True))
    config = write_config(
        tmp_path / "warren.toml", broker, sink, [{"src-queue": queue, "prefetch-count": 100}], segment_max_age=1
    )
    producer = pika.BlockingConnection(pika.URLParameters(broker.amqp_uri))
    publishing = producer.channel()
    publishing.confirm_delivery()
    consumer = pika.BlockingConnection(pika.URLParameters(uri))
    consuming = consumer.channel()
    consuming.basic_qos(prefetch_count=500)
    sent_at: dict[bytes, float] = {}
    arrived: list[tuple[bytes, float]] = []

    def on_message(channel, method, _properties, payload) -> None:
        arrived.append((payload, time.monotonic()))
        channel.basic_ack(method.delivery_tag)

    def send(i: int) -> None:
        payload = b"follow-%06d" % i
        publishing.basic_publish("", queue, payload, pika.BasicProperties(delivery_mode=2), mandatory=True)
        sent_at[payload] = time.monotonic()

    consuming.basic_consume(queue, on_message)
    started = rfc3339(time.time_ns())
    try:
        with Archivers(tmp_path) as archivers, Replayers(tmp_path) as replayers:
            archiver = archivers.start("--config", str(config))
            send(0)
            # The replayer plans from the sources the archive holds, so the source must be there first.
            wait_archived(sink, {queue: 1})
            follower = replayers.start(
                "--archive", str(sink), *target_args(target, vhost), "--follow", "--since", started
            )
            # The first message waits out the replayer's start-up (seconds on a loaded host); the lag
            # this test is about is the one while it follows, so the pace starts once it has arrived.
            wait_until(
                lambda: consumer.process_data_events(time_limit=0.05) or len(arrived) >= 1,
                timeout=60,
                what="the first message on the target",
            )
            pace, count = 0.02, 300  # 50 messages a second for 6 seconds
            begin = time.monotonic()
            for i in range(1, count):
                send(i)
                consumer.process_data_events(time_limit=max(0.0, begin + i * pace - time.monotonic()))
                assert follower.running(), follower.describe()
            wait_until(
                lambda: consumer.process_data_events(time_limit=0.05) or len(arrived) >= count,
                timeout=30,
                what=f"{count} messages on the target",
            )
            assert follower.terminate() == 0, follower.describe()
            assert summary(follower.stdout())[queue].replayed == count, follower.describe()
            archiver.terminate()
        consumer.process_data_events(time_limit=0.2)  # anything sent late would show up here
        assert [payload for payload, _ in arrived] == list(sent_at), "the target differs from what A received"
        lags = [at - sent_at[payload] for payload, at in arrived[1:]]
        print(f"follow lag: max {max(lags):.2f}s, mean {sum(lags) / len(lags):.2f}s over {len(lags)} messages")
        assert max(lags) < 6, f"the target fell {max(lags):.1f}s behind"
        assert depth(uri, queue) == 0
    finally:
        consumer.close()
        producer.close()


def test_follow_started_before_the_first_commit_waits_for_the_archive(target, tmp_path):
    sink = tmp_path / "archive"
    sink.mkdir()
    with Replayers(tmp_path) as replayers:
        follower = replayers.start("--archive", str(sink), *target_args(target), "--follow", "--since=-1m")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and follower.running():
            time.sleep(0.05)
        assert follower.running(), follower.describe()
