"""`warren replay --pace` and `--by`: three bursts archived a second and a half apart come back a second and a half
apart (load reproduction), and three times closer with `--pace 3x`; a consumer on the target, with pika,
notes when each arrives. And `--by published` picks messages by the producer's timestamp."""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from pathlib import Path

import pika
import pytest

from tests.integration import test_replay
from tests.integration.archiving import Archivers, Outgoing, Witness, publish, simple_messages, write_config
from tests.integration.replaying import DryLine, dry_summary, output, replay, wait_archived
from tests.integration.test_replay import target_args

target = test_replay.target  # the replay tests' target node: one of that module's own, per version

BURSTS, PER_BURST, GAP = 3, 20, 1.5


@pytest.fixture(scope="module")
def bursts(broker, tmp_path_factory) -> tuple[Path, str]:
    """An archive of one queue that received BURSTS bursts of PER_BURST messages, GAP seconds apart."""
    workdir = tmp_path_factory.mktemp("bursts")
    queue, sink = f"pace.{secrets.token_hex(3)}", workdir / "archive"
    with Witness(broker.amqp_uri) as witness:
        witness.declare_queue(queue)
    config = write_config(workdir / "warren.toml", broker, sink, [{"src-queue": queue}], segment_max_age=0.5)
    with Archivers(workdir) as archivers:
        archiver = archivers.start("--config", str(config))
        archiver.wait_for_log("msg=archiving", timeout=60)
        for n in range(BURSTS):
            if n:
                time.sleep(GAP)
            publish(broker.amqp_uri, simple_messages(PER_BURST, queue, start=n * PER_BURST))
        wait_archived(sink, {queue: BURSTS * PER_BURST})
        archiver.terminate()
    with Witness(broker.amqp_uri) as witness:
        witness.delete(queue)
    return sink, queue


def arrivals(node_port: int, queue: str, count: int, replaying: threading.Thread) -> list[float]:
    """When each of `count` messages reached the target queue (monotonic seconds), while `replaying` runs."""
    times: list[float] = []
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node_port))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True)

    def on_message(ch, method, _properties, _body) -> None:
        times.append(time.monotonic())
        ch.basic_ack(method.delivery_tag)
        if len(times) == count:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    replaying.start()
    connection.call_later(60, channel.stop_consuming)  # a bound, if messages never come
    channel.start_consuming()
    connection.close()
    replaying.join(60)
    return times


def gaps_between_bursts(times: list[float]) -> list[float]:
    firsts = [times[n * PER_BURST] for n in range(BURSTS)]
    return [b - a for a, b in itertools.pairwise(firsts)]


@pytest.mark.parametrize(("pace", "speedup"), [("original", 1.0), ("3x", 3.0)])
def test_replay_keeps_the_gaps_between_bursts_divided_by_the_speed_up(bursts, target, pace, speedup):
    sink, queue = bursts
    results = []
    replaying = threading.Thread(
        target=lambda: results.append(
            replay("--archive", str(sink), *target_args(target), "--source", queue, "--pace", pace)
        )
    )
    times = arrivals(target.ports.amqp, queue, BURSTS * PER_BURST, replaying)
    [result] = results
    assert result.returncode == 0, output(result)
    assert len(times) == BURSTS * PER_BURST, f"{len(times)} of {BURSTS * PER_BURST} arrived"
    want = GAP / speedup
    for gap in gaps_between_bursts(times):
        # The archiver's capture times carry the publisher's own jitter; a burst takes a few ms.
        assert want - 0.3 <= gap <= want + 0.6, f"bursts {gap:.2f}s apart, expected about {want:.2f}s"
    within = max(times[(n + 1) * PER_BURST - 1] - times[n * PER_BURST] for n in range(BURSTS))
    assert within < 0.5, f"a burst spread over {within:.2f}s"


# ---- which clock: --by published --------------------------------------------------------------------


def test_replay_by_the_producers_clock_restores_what_was_published_before_t_however_late_it_was_archived(
    broker, target, tmp_path
):
    """Producers that buffered while the broker was down stamp their messages (timestamp property) hours
    before the archiver sees them: --by published selects by that stamp, --at alone by capture."""
    queue, sink = f"clock.{secrets.token_hex(3)}", tmp_path / "archive"
    with Witness(broker.amqp_uri) as witness:
        witness.declare_queue(queue)
    now = int(time.time())
    stamped = []
    for i, sent in enumerate([now - 7200] * 5 + [now] * 5):
        props = pika.BasicProperties(message_id=f"m-{i}", timestamp=sent, delivery_mode=2)
        stamped.append(Outgoing("", queue, b"m-%d" % i, props))
    config = write_config(tmp_path / "warren.toml", broker, sink, [{"src-queue": queue}], segment_max_age=0.5)
    with Archivers(tmp_path) as archivers:
        archiver = archivers.start("--config", str(config))
        archiver.wait_for_log("msg=archiving", timeout=60)
        publish(broker.amqp_uri, stamped)
        wait_archived(sink, {queue: len(stamped)})
        archiver.terminate()

    by_capture = replay("--archive", str(sink), *target_args(target), "--source", queue, "--at", "-1h", "--dry-run")
    assert by_capture.returncode == 0, output(by_capture)
    assert dry_summary(by_capture.stdout).get(queue, DryLine(0, 0, None, None)).records == 0, by_capture.stdout
    with Witness(target.amqp_uri) as witness:
        witness.declare_queue(queue)
    by_producer = replay(
        "--archive", str(sink), *target_args(target), "--source", queue, "--at=-1h", "--by", "published"
    )
    assert by_producer.returncode == 0, output(by_producer)
    with Witness(target.amqp_uri) as witness:
        got = [p.message_id for p, _ in witness.fetch_all(queue)]
    assert got == [f"m-{i}" for i in range(5)]
