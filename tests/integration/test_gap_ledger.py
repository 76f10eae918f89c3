"""Never a silent gap: the archive says when a source was not archived, and what a stream lost meanwhile.

An operator restarts the archiver, it gets killed, a stream's retention outruns it; afterwards `warren
ls`, `inspect --gaps`, `verify`, the timeline, the metrics and a replay's summary all tell it.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import replace

import pika

from bridge.archive.ledger import RETENTION, UNANNOUNCED
from bridge.harness.nodes import free_port
from tests.integration.archiving import (
    Outgoing,
    Witness,
    archived_count,
    publish,
    queue_source,
    read_archive,
    scrape,
    simple_messages,
    stream_source,
    warren,
    write_config,
)
from tests.integration.replaying import output, replay
from tests.polling import wait_until


def test_a_restart_and_a_kill_show_as_gaps_in_ls_inspect_verify_and_the_replay_summary(broker, archivers, tmp_path):
    queue, restored = "ledger.orders", "ledger.orders.restored"
    sink = tmp_path / "archive"
    source = queue_source(queue)
    with Witness(broker.amqp_uri) as witness:
        witness.declare_queue(queue)
    config = write_config(tmp_path / "warren.toml", broker, sink, [{"src-queue": queue}], segment_max_age=0.3)

    archiver = archivers.start("--config", str(config))
    publish(broker.amqp_uri, simple_messages(200, queue))
    wait_until(lambda: archived_count(sink, source) >= 200, timeout=60, what="the first 200 archived")
    archiver.terminate()  # an operator's restart: a clean stop, then a start
    publish(broker.amqp_uri, simple_messages(100, queue, start=200))
    archiver = archivers.start("--config", str(config))
    wait_until(lambda: archived_count(sink, source) >= 300, timeout=60, what="the 100 published meanwhile")
    archiver.kill()  # and a crash
    archiver = archivers.start("--config", str(config))
    publish(broker.amqp_uri, simple_messages(50, queue, start=300))
    wait_until(lambda: archived_count(sink, source) >= 350, timeout=60, what="all 350 archived")
    archiver.terminate()

    listed = warren("ls", str(sink), "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = [r for r in json.loads(listed.stdout) if r["source"] == queue]
    assert [g["reason"] for g in row["gaps"]] == ["the archiver was stopped", UNANNOUNCED]
    assert all(g["end"] is not None for g in row["gaps"]) and row["lost_offsets"] == 0
    table = warren("ls", str(sink)).stdout
    assert "GAPS" in table.splitlines()[0]

    gaps = warren("inspect", str(sink), "--gaps", "--source", queue)
    assert gaps.returncode == 0, gaps.stderr
    assert f"{source}: 2 gaps" in gaps.stdout
    assert "not archived: the archiver was stopped" in gaps.stdout and UNANNOUNCED in gaps.stdout

    verified = warren("verify", str(sink))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "2 gaps in archiving" in verified.stdout

    with Witness(broker.amqp_uri) as witness:
        witness.declare_queue(restored)
    replayed = replay("--archive", str(sink), "--target", broker.amqp_uri, "--map-queue", f"{queue}={restored}")
    assert replayed.returncode == 0, output(replayed)
    assert "350 replayed" in replayed.stdout
    assert "the window crosses 2 gaps in archiving" in replayed.stdout
    timeline = warren("ls", str(sink), "--timeline", "--width", "200")
    assert "not archived then" in timeline.stdout, timeline.stdout
    with Witness(broker.amqp_uri) as witness:
        witness.delete(queue, restored)


def sized(count: int, stream: str, *, start: int = 0) -> list[Outgoing]:
    """Messages of about 1 kB, so that a few hundred fill the stream's segments."""
    return [replace(m, body=m.body + b"." * 1000) for m in simple_messages(count, stream, start=start)]


def oldest_offset(uri: str, stream: str) -> int | None:
    """The stream's oldest offset, as a pika consumer from "first" sees it; None if it saw nothing in a
    few seconds."""
    connection = pika.BlockingConnection(pika.URLParameters(uri))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1)
        seen: list[int] = []
        channel.basic_consume(
            stream,
            lambda _ch, _method, properties, _body: seen.append(int(properties.headers["x-stream-offset"])),
            arguments={"x-stream-offset": "first"},
        )
        deadline = time.monotonic() + 3
        while not seen and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.2)
        return seen[0] if seen else None
    finally:
        # pika rejects what it prefetched but did not dispatch when it closes the channel, and a stream
        # answers a reject by closing the connection: the close this helper wanted anyway.
        with contextlib.suppress(pika.exceptions.ConnectionClosedByBroker):
            connection.close()


def test_stream_offsets_removed_by_retention_before_archiving_are_told_everywhere(broker, archivers, tmp_path):
    stream = "ledger.events"
    sink = tmp_path / "archive"
    source = stream_source(stream)
    with Witness(broker.amqp_uri) as witness:
        # Small segments and a small cap: the broker removes the oldest segments while the archiver is down.
        witness.channel.queue_declare(
            stream,
            durable=True,
            arguments={
                "x-queue-type": "stream",
                "x-max-length-bytes": 200_000,
                "x-stream-max-segment-size-bytes": 20_000,
            },
        )
    config = write_config(tmp_path / "warren.toml", broker, sink, [{"src-stream": stream}], segment_max_age=0.3)
    port = free_port()

    archiver = archivers.start("--config", str(config))
    publish(broker.amqp_uri, sized(100, stream))
    wait_until(lambda: archived_count(sink, source) >= 100, timeout=60, what="the first 100 archived")
    archiver.terminate()
    archiver = archivers.start("--config", str(config))  # a resume with nothing removed: no gap but the restart
    publish(broker.amqp_uri, sized(10, stream, start=100))
    wait_until(lambda: archived_count(sink, source) >= 110, timeout=60, what="the next 10 archived")
    archiver.terminate()
    assert "retention" not in archiver.stderr()
    last_archived = read_archive(sink, source)[-1].offset

    # 1 MB: 5 times the cap. A few messages in flight at a time keep the broker's chunks smaller than a
    # segment: retention deletes whole segments, and one holding a chunk of hundreds of messages would
    # leave the stream empty, with nothing for the archiver to resume from (it tells the gap then at the
    # next message, which this test would not send).
    publish(broker.amqp_uri, sized(1000, stream, start=110), window=5)
    wait_until(  # the broker applies retention in its own time
        lambda: (oldest := oldest_offset(broker.amqp_uri, stream)) is not None and oldest > last_archived + 1,
        timeout=60,
        what="the stream's retention to remove what the archiver has not read",
    )
    archiver = archivers.start("--config", str(config), "--metrics-listen", str(port))
    archiver.wait_for_log("removed by the stream's retention", timeout=60)
    name = str(source)
    metrics = wait_until(
        lambda: (m := scrape(port)).get(("warren_stream_offsets_skipped", name), 0) > 0 and m,
        timeout=30,
        what="the skipped offsets in the metrics",
    )
    first_resumed = wait_until(
        lambda: next((r.offset for r in read_archive(sink, source) if r.offset > last_archived), None),
        timeout=60,
        what="archiving resumed",
    )
    archiver.terminate()
    assert first_resumed > last_archived + 1, "the stream's retention removed nothing: the test proves nothing"
    lost = first_resumed - last_archived - 1
    assert metrics[("warren_stream_offsets_skipped", name)] == lost

    gaps = warren("inspect", str(sink), "--gaps", "--json")
    assert gaps.returncode == 0, gaps.stderr
    found = [json.loads(line) for line in gaps.stdout.splitlines()]
    skipped = [g for g in found if g["lost_offsets"] is not None]
    assert [g["lost_offsets"] for g in skipped] == [[last_archived + 1, first_resumed - 1]]
    assert skipped[0]["reason"] == RETENTION
    (row,) = json.loads(warren("ls", str(sink), "--json").stdout)
    assert row["lost_offsets"] == lost
    verified = warren("verify", str(sink))
    assert f"up to {lost} stream messages lost before they were archived" in verified.stdout, verified.stdout
    with Witness(broker.amqp_uri) as witness:
        witness.delete(stream)
