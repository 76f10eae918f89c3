"""`warren archive` driven as an operator would, against the session's private broker.

Each test runs the CLI as a subprocess, publishes with pika (the witness, with publisher confirms),
stops the archiver with SIGTERM and reads the archive back with warren's reader.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bridge.archive.definitions import decode_definitions
from bridge.archive.record import RecordKind
from tests.integration.archiving import (
    Witness,
    archived_count,
    assert_verifies,
    definitions_objects,
    message_ids,
    pika_properties,
    publish,
    queue_counts,
    queue_source,
    read_archive,
    rich_messages,
    segment_sizes,
    simple_messages,
    source_args,
    stream_source,
    warren,
    write_config,
)
from tests.polling import wait_until

PIKA_FIELDS = (
    "content_type",
    "content_encoding",
    "headers",
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
# pamqp's names for the same fields, minus the header table (its Python types differ from pika's)
PAMQP_SCALARS = {name: name for name in PIKA_FIELDS if name not in ("headers", "timestamp", "type")} | {
    "type": "message_type"
}


@pytest.fixture
def witness(broker):
    with Witness(broker.amqp_uri) as w:
        yield w


@pytest.mark.parametrize("ack_mode", ["on-confirm", "on-publish", "no-ack"])
def test_move_archives_every_message_in_order_with_its_property_bytes_unchanged(
    broker, witness, archivers, tmp_path, ack_mode
):
    queue = f"archiver.move.{ack_mode}"
    sink = tmp_path / "archive"
    witness.declare_queue(queue)
    sent = rich_messages(2000, queue)
    publish(broker.amqp_uri, sent)

    archiver = archivers.start(*source_args(broker), "--queue", queue, "--sink", str(sink), "--ack-mode", ack_mode)
    wait_until(lambda: witness.depth(queue) == 0, timeout=60, what=f"{queue} to be consumed")
    archiver.terminate()

    records = read_archive(sink, queue_source(queue))
    assert len(records) == len(sent)
    assert [r.seq for r in records] == list(range(1, len(sent) + 1))
    for record, message in zip(records, sent, strict=True):
        assert record.kind == RecordKind.AMQP091
        assert (record.exchange, record.routing_key) == ("", queue)
        assert record.body == message.body
        assert record.raw_properties == message.raw_as_delivered_by(broker.version), message.message_id
        assert not record.redelivered and record.fingerprint is None
    # The same bytes decoded: by pika, field by field, and by warren's own decoder for the scalars.
    for record, message in zip(records[:200], sent, strict=False):
        decoded = pika_properties(record.raw_properties)
        for name in PIKA_FIELDS:
            assert getattr(decoded, name) == getattr(message.properties, name), name
        for pika_name, pamqp_name in PAMQP_SCALARS.items():
            assert getattr(record.properties, pamqp_name) == getattr(message.properties, pika_name), pika_name
        assert int(record.properties.timestamp.timestamp()) == message.properties.timestamp
        headers = record.properties.headers
        assert headers["text"] == message.properties.headers["text"]
        assert headers["bytes"] == message.properties.headers["bytes"]
    assert witness.depth(queue) == 0, "messages left in the queue after the archiver stopped"
    assert_verifies(sink)
    witness.delete(queue)


@pytest.mark.parametrize("ack_mode", ["on-confirm", "on-publish", "no-ack"])
def test_sigterm_mid_flow_commits_every_message_received_and_leaves_the_rest_queued(
    broker, witness, archivers, tmp_path, ack_mode
):
    queue = f"archiver.sigterm.{ack_mode}"
    sink = tmp_path / "archive"
    witness.declare_queue(queue)
    count = 30_000
    publish(broker.amqp_uri, simple_messages(count, queue), window=5000)

    archiver = archivers.start(*source_args(broker), "--queue", queue, "--sink", str(sink), "--ack-mode", ack_mode)
    wait_until(lambda: witness.depth(queue) < count - 2000, timeout=60, what="the archiver under way")
    archiver.terminate()

    archived = message_ids(read_archive(sink, queue_source(queue)))
    wait_until(lambda: len(archived) + witness.depth(queue) == count, timeout=30, what="the rest back in the queue")
    left = [p.message_id for p, _ in witness.fetch_all(queue)]
    assert len(set(archived)) == len(archived), "archived twice without a crash"
    assert archived + left == [f"msg-{i:07d}" for i in range(count)], "lost, duplicated or reordered"
    assert_verifies(sink)
    witness.delete(queue)


def test_on_confirm_acknowledges_only_messages_already_in_a_durable_segment(broker, witness, archivers, tmp_path):
    # prefetch-count 100 makes the archiver roll segments of 12 to 50 records (sized from the window
    # and the commit latency it measures); segment-max-age 60 (and no idle roll) keeps a partial
    # segment open far longer than the test. So of 1030 messages, all but the open segment's must be
    # durable and acknowledged, and exactly those still held, unacknowledged, by the broker.
    queue = "archiver.on-confirm"
    sink = tmp_path / "archive"
    witness.declare_queue(queue)
    publish(broker.amqp_uri, simple_messages(1030, queue))
    config = write_config(
        tmp_path / "warren.toml",
        broker,
        sink,
        [{"src-queue": queue, "ack-mode": "on-confirm", "prefetch-count": 100}],
        segment_max_age=60,
        segment_idle=0,  # the open segment stays open when the backlog ends
    )
    started = time.monotonic()
    archiver = archivers.start("--config", str(config))

    source = queue_source(queue)
    samples: list[tuple[int, int]] = []

    def settled() -> bool:
        samples.append(queue_counts(broker, queue))
        ready, unacked = samples[-1]
        return ready == 0 and archived_count(sink, source) + unacked == 1030

    wait_until(settled, timeout=40, what="every message either archived or held unacknowledged")
    assert max(unacked for _, unacked in samples) <= 100, samples
    assert time.monotonic() - started < 50, "segments rolled by age, not by the prefetch window"
    held = samples[-1][1]
    assert held < 50, f"{held} held back: more than the open segment can hold"
    # Everything the broker no longer holds is on disk, and nothing the broker still holds is.
    durable = 1030 - held
    assert message_ids(read_archive(sink, source)) == [f"msg-{i:07d}" for i in range(durable)]
    assert 12 <= max(segment_sizes(sink, source)) <= 50

    archiver.terminate()
    assert message_ids(read_archive(sink, source)) == [f"msg-{i:07d}" for i in range(1030)]
    assert queue_counts(broker, queue) == (0, 0)
    witness.delete(queue)


def test_tap_copies_what_exchanges_route_but_not_what_the_default_exchange_delivers_straight_to_the_queue(
    broker, witness, archivers, tmp_path
):
    queue, exchange = "archiver.tap.orders", "archiver.tap.exchange"
    sink = tmp_path / "archive"
    witness.channel.exchange_declare(exchange, "direct", durable=True)
    witness.declare_queue(queue)
    witness.channel.queue_bind(queue, exchange, "orders")
    archiver = archivers.start(
        *source_args(broker), "--queue", queue, "--mode", "tap", "--sink", str(sink), "--ack-mode", "on-confirm"
    )
    archiver.wait_for_log("msg=archiving")  # the tap queue is declared and bound by now

    routed = rich_messages(500, "orders", exchange=exchange)
    direct = simple_messages(1, queue, start=999_999)  # the default exchange: no binding a tap can copy
    publish(broker.amqp_uri, routed[:250] + direct + routed[250:])

    # The application's consumer still receives everything, the direct message included.
    received = []
    for method, properties, body in witness.channel.consume(queue, inactivity_timeout=10):
        if method is None:
            break
        witness.channel.basic_ack(method.delivery_tag)
        received.append((properties.message_id, body))
        if len(received) == len(routed) + 1:
            break
    witness.channel.cancel()
    expected = [(m.message_id, m.body) for m in routed[:250] + direct + routed[250:]]
    assert received == expected

    tap = "warren.tap." + queue
    wait_until(lambda: witness.depth(tap) == 0, timeout=30, what="the tap queue to be consumed")
    archiver.terminate()

    records = read_archive(sink, queue_source(queue))
    assert [(r.properties.message_id, r.body) for r in records] == [(m.message_id, m.body) for m in routed]
    assert all(r.raw_properties == m.raw_as_delivered_by(broker.version) for r, m in zip(records, routed, strict=True))
    assert all(r.exchange == exchange and r.routing_key == "orders" for r in records)
    assert witness.depth(tap) == 0
    witness.delete(queue, tap)
    witness.channel.exchange_delete(exchange)


def test_snapshot_copies_the_queue_and_exits_leaving_every_message_in_place(broker, witness, archivers, tmp_path):
    queue = "archiver.snapshot"
    sink = tmp_path / "archive"
    witness.declare_queue(queue)
    sent = rich_messages(700, queue)
    publish(broker.amqp_uri, sent)

    result = archivers.run(*source_args(broker), "--queue", queue, "--sink", str(sink), "--snapshot")
    assert result.returncode == 0, result.stderr

    records = read_archive(sink, queue_source(queue))
    assert [(r.body, r.raw_properties) for r in records] == [
        (m.body, m.raw_as_delivered_by(broker.version)) for m in sent
    ]
    wait_until(lambda: witness.depth(queue) == len(sent), timeout=30, what="every message back in the queue")
    left = witness.fetch_all(queue)
    assert [(p.message_id, body) for p, body in left] == [(m.message_id, m.body) for m in sent]
    assert_verifies(sink)
    witness.delete(queue)


def test_src_delete_after_a_number_archives_exactly_that_many_and_leaves_the_rest(broker, witness, archivers, tmp_path):
    queue = "archiver.delete-after.200"
    sink = tmp_path / "archive"
    witness.declare_queue(queue)
    publish(broker.amqp_uri, simple_messages(500, queue))
    config = write_config(tmp_path / "warren.toml", broker, sink, [{"src-queue": queue, "src-delete-after": 200}])

    archiver = archivers.start("--config", str(config))
    assert archiver.wait(60) == 0, archiver.stderr()  # done: it exits by itself

    assert message_ids(read_archive(sink, queue_source(queue))) == [f"msg-{i:07d}" for i in range(200)]
    wait_until(lambda: witness.depth(queue) == 300, timeout=30, what="300 messages left in the queue")
    assert [p.message_id for p, _ in witness.fetch_all(queue)] == [f"msg-{i:07d}" for i in range(200, 500)]
    witness.delete(queue)


def test_src_delete_after_queue_length_archives_the_depth_at_start_and_exits(broker, witness, archivers, tmp_path):
    queue = "archiver.delete-after.queue-length"
    sink = tmp_path / "archive"
    witness.declare_queue(queue)
    publish(broker.amqp_uri, simple_messages(300, queue))
    config = write_config(
        tmp_path / "warren.toml", broker, sink, [{"src-queue": queue, "src-delete-after": "queue-length"}]
    )

    archiver = archivers.start("--config", str(config))
    assert archiver.wait(60) == 0, archiver.stderr()

    assert message_ids(read_archive(sink, queue_source(queue))) == [f"msg-{i:07d}" for i in range(300)]
    assert witness.depth(queue) == 0
    witness.delete(queue)


def test_stream_archives_contiguous_offsets_with_chunk_times_and_resumes_after_the_last(
    broker, witness, archivers, tmp_path
):
    stream = "archiver.stream"
    sink = tmp_path / "archive"
    source = stream_source(stream)
    witness.declare_stream(stream)
    config = write_config(tmp_path / "warren.toml", broker, sink, [{"src-stream": stream}], segment_max_age=0.5)

    before_ms = int(time.time() * 1000) - 1000
    first = simple_messages(1500, stream)
    publish(broker.amqp_uri, first)
    after_ms = int(time.time() * 1000) + 1000
    archiver = archivers.start("--config", str(config))
    wait_until(lambda: archived_count(sink, source) >= len(first), timeout=60, what="the stream archived")
    archiver.terminate()

    records = read_archive(sink, source)
    assert [r.offset for r in records] == list(range(len(first)))
    for record, message in zip(records, first, strict=True):
        assert record.kind == RecordKind.STREAM
        assert before_ms <= record.chunk_ts_ms <= after_ms
        assert record.body[:2] == b"\x00\x53", "not an AMQP 1.0 described type"
        assert message.body in record.body

    more = simple_messages(700, stream, start=len(first))
    publish(broker.amqp_uri, more)
    archiver = archivers.start("--config", str(config))
    wait_until(
        lambda: archived_count(sink, source) >= len(first) + len(more), timeout=60, what="the new messages archived"
    )
    archiver.terminate()

    # Offsets are the stream's, and the broker spends some on offset tracking (the archiver stores its
    # position on the broker too): the truth to compare with is what a reader of the stream sees.
    in_stream = witness.read_stream(stream, len(first) + len(more))
    assert [body for _, body in in_stream] == [m.body for m in first + more]
    records = read_archive(sink, source)
    assert [r.offset for r in records] == [offset for offset, _ in in_stream], "a gap or a duplicate"
    assert all(m.body in r.body for r, m in zip(records, first + more, strict=True))
    assert_verifies(sink)
    witness.delete(stream)


def test_definitions_are_archived_with_the_queue_and_its_arguments(broker, witness, archivers, tmp_path):
    queue = "archiver.definitions"
    arguments = {"x-max-length": 123456, "x-overflow": "reject-publish", "x-queue-mode": "lazy"}
    sink = tmp_path / "archive"
    witness.declare_queue(queue, arguments=arguments)
    archiver = archivers.start(*source_args(broker), "--queue", queue, "--sink", str(sink))
    archiver.wait_for_log("definitions saved")
    archiver.terminate()

    objects = definitions_objects(sink)
    assert objects, f"no _definitions/*.json.zst in {sorted(p.name for p in sink.rglob('*'))}"
    definitions = decode_definitions(objects[-1].read_bytes())
    declared = [q for q in definitions["queues"] if q["name"] == queue and q["vhost"] == "/"]
    assert len(declared) == 1
    assert declared[0]["durable"] is True
    recorded_type = {"x-queue-type": "classic"} if broker.version >= "4" else {}  # 4.0 names the type it chose
    assert declared[0]["arguments"] == arguments | recorded_type
    witness.delete(queue)


def test_several_sources_in_one_process_are_all_archived(broker, witness, archivers, tmp_path):
    queues, stream = ["archiver.multi.a", "archiver.multi.b"], "archiver.multi.stream"
    sink = tmp_path / "archive"
    for queue in queues:
        witness.declare_queue(queue)
    witness.declare_stream(stream)
    sent = {
        queue_source(queues[0]): simple_messages(600, queues[0]),
        queue_source(queues[1]): rich_messages(400, queues[1]),
        stream_source(stream): simple_messages(300, stream),
    }
    for messages in sent.values():
        publish(broker.amqp_uri, messages)
    config = write_config(
        tmp_path / "warren.toml",
        broker,
        sink,
        [{"src-queue": queues[0]}, {"src-queue": queues[1], "ack-mode": "on-publish"}, {"src-stream": stream}],
        segment_max_age=0.5,
    )

    archiver = archivers.start("--config", str(config))
    wait_until(
        lambda: all(archived_count(sink, s) >= len(m) for s, m in sent.items()),
        timeout=60,
        what="every source archived",
    )
    archiver.terminate()

    for source, messages in sent.items():
        records = read_archive(sink, source)
        assert len(records) == len(messages), source
        assert all(m.body in r.body for r, m in zip(records, messages, strict=True)), source
    assert [r.offset for r in read_archive(sink, stream_source(stream))] == list(range(300))
    assert all(witness.depth(q) == 0 for q in queues)
    listed = warren("ls", "--json", str(sink))
    assert listed.returncode == 0, listed.stderr
    summary = {(s["kind"], s["source"]): s["records"] for s in json.loads(listed.stdout)}
    assert summary == {("queue", queues[0]): 600, ("queue", queues[1]): 400, ("stream", stream): 300}
    assert_verifies(sink)
    witness.delete(*queues, stream)


# ---- bad input: one clear line, a documented exit code, no traceback ------------------------------


def error_lines(stderr: str) -> list[str]:
    """What stderr holds besides the structured log records."""
    return [line for line in stderr.splitlines() if line and not line.startswith("ts=")]


def test_wrong_password_exits_6_naming_the_refusal_but_not_the_password(broker, archivers, tmp_path):
    uri = broker.amqp_uri.replace("guest:guest@", "guest:Wr0ng-S3cret@")
    result = archivers.run("--broker", uri, "--queue", "archiver.anything", "--sink", str(tmp_path / "archive"))
    assert result.returncode == 6, result.stderr
    assert "Wr0ng-S3cret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    assert line.startswith("warren archive: ") and "ACCESS_REFUSED" in line


def test_wrong_stream_password_exits_6_naming_the_refusal_but_not_the_password(broker, witness, archivers, tmp_path):
    stream = "archiver.stream.auth"
    witness.declare_stream(stream)
    uri = broker.stream_uri.replace("guest:guest@", "guest:Wr0ng-S3cret@")
    result = archivers.run(
        *source_args(broker)[:4], "--stream-uri", uri, "--stream", stream, "--sink", str(tmp_path / "archive")
    )
    assert "Wr0ng-S3cret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    assert "credentials" in line
    assert result.returncode == 6, result.stderr


def test_missing_queue_exits_non_zero_naming_the_queue(broker, archivers, tmp_path):
    queue = "archiver.no-such-queue"
    result = archivers.run(*source_args(broker), "--queue", queue, "--sink", str(tmp_path / "archive"))
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    assert queue in line and "NOT_FOUND" in line


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("prefetch = 10", "source[0].prefetch"),  # unknown key (the Shovel calls it prefetch-count)
        ('prefetch-count = "ten"', "source[0].prefetch-count"),  # wrong type
        ("reconnect-delay = true", "source[0].reconnect-delay"),
    ],
)
def test_bad_config_exits_2_naming_the_file_and_the_key(broker, archivers, tmp_path, line, key):
    config = tmp_path / "bad.toml"
    config.write_text(
        f'[broker]\nuri = "{broker.amqp_uri}"\n\n[archive]\nsinks = ["{tmp_path / "archive"}"]\n\n'
        f'[[source]]\nsrc-queue = "archiver.config"\n{line}\n'
    )
    result = archivers.run("--config", str(config))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [message] = error_lines(result.stderr)
    assert str(config) in message and key in message
    assert not (tmp_path / "archive").exists()


def test_broker_password_comes_from_the_environment_and_an_unset_variable_exits_2(broker, witness, archivers, tmp_path):
    queue = "archiver.env-password"
    sink = tmp_path / "archive"
    witness.declare_queue(queue)
    publish(broker.amqp_uri, simple_messages(10, queue))
    config = tmp_path / "warren.toml"
    write_config(config, broker, sink, [{"src-queue": queue}])
    config.write_text(config.read_text().replace("guest:guest@", "guest:${WARREN_TEST_PASSWORD}@"))

    result = archivers.run("--config", str(config), "--snapshot", env={"WARREN_TEST_PASSWORD": "guest"})
    assert result.returncode == 0, result.stderr
    assert len(read_archive(sink, queue_source(queue))) == 10

    result = archivers.run("--config", str(config), "--snapshot")
    assert result.returncode == 2, result.stderr
    [message] = error_lines(result.stderr)
    assert str(config) in message and "broker.uri" in message and "WARREN_TEST_PASSWORD" in message
    witness.delete(queue)


def test_a_password_on_the_command_line_is_warned_of_and_the_environment_keeps_it_out_of_ps(
    broker, witness, archivers, tmp_path
):
    queue = "archiver.ps-password"
    sink = tmp_path / "archive"
    witness.declare_queue(queue)
    publish(broker.amqp_uri, simple_messages(5, queue))

    # The management API's URI without a user takes the broker URI's credentials.
    where = ["--management-uri", f"http://127.0.0.1:{broker.ports.management}", "--queue", queue]
    shown = archivers.run("--broker", broker.amqp_uri, *where, "--sink", str(sink), "--snapshot")
    assert shown.returncode == 0, shown.stderr
    [warning] = [line for line in shown.stderr.splitlines() if "password on the command line" in line]
    assert "options=--broker" in warning and "guest:guest" not in shown.stderr

    hidden = archivers.run(*where, "--sink", str(sink), "--snapshot", env={"WARREN_BROKER": broker.amqp_uri})
    assert hidden.returncode == 0, hidden.stderr
    assert "password on the command line" not in hidden.stderr
    assert len(read_archive(sink, queue_source(queue))) == 10  # two snapshots of the five
    witness.delete(queue)


def test_missing_config_file_exits_2_naming_it(archivers, tmp_path: Path):
    result = archivers.run("--config", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    [message] = error_lines(result.stderr)
    assert str(tmp_path / "absent.toml") in message
