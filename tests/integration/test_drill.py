"""`warren drill`: the archive's last window restored into a throwaway private node and checked message by
message; a sound archive is "restorable" (exit 0, a report and a Prometheus textfile saying so), one whose
segment was damaged is not (exit 1, the damage named), and the node is gone afterwards either way."""

from __future__ import annotations

import json
import secrets

import pika

from tests.integration.archiving import Archivers, Outgoing, Witness, publish, warren, write_config
from tests.integration.replaying import wait_archived


def test_a_drill_restores_the_last_window_and_says_whether_it_came_back_whole(broker, tmp_path):
    queue, stream = f"drill.{secrets.token_hex(3)}", f"drill.events.{secrets.token_hex(3)}"
    sink = tmp_path / "archive"
    with Witness(broker.amqp_uri) as witness:
        witness.declare_queue(queue)
        witness.declare_stream(stream)
    sent = [
        Outgoing("", queue, b"order %d" % i, pika.BasicProperties(message_id=f"m-{i}", headers={"n": i}))
        for i in range(40)
    ]
    events = [Outgoing("", stream, b"event %d" % i, pika.BasicProperties(message_id=f"e-{i}")) for i in range(25)]
    config = write_config(
        tmp_path / "warren.toml", broker, sink, [{"src-queue": queue}, {"src-stream": stream}], segment_max_age=0.5
    )
    with Archivers(tmp_path) as archivers:
        archiver = archivers.start("--config", str(config))
        archiver.wait_for_log("msg=archiving", timeout=60, count=2)
        publish(broker.amqp_uri, sent + events)
        wait_archived(sink, {queue: 40, stream: 25})
        archiver.terminate()

    report, metrics = tmp_path / "drill.json", tmp_path / "warren_drill.prom"
    sound = warren("drill", str(sink), "--window", "1h", "--report", str(report), "--metrics-file", str(metrics))
    assert sound.returncode == 0, sound.stdout + sound.stderr
    assert f"ok     queue {queue!r} in vhost '/': 40 of 40 restored" in sound.stdout, sound.stdout
    assert f"ok     stream {stream!r} in vhost '/': 25 of 25 restored" in sound.stdout, sound.stdout
    assert sound.stdout.rstrip().endswith("restorable")
    assert json.loads(report.read_text())["ok"] is True
    assert "warren_drill_success 1" in metrics.read_text()

    # Bit rot in one of the queue's segments: the drill says so, and which segment.
    segment = next(path for path in sorted(sink.rglob("*.wseg")) if queue in str(path))
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    damaged = warren("drill", str(sink), "--window", "1h", "--metrics-file", str(metrics))
    assert damaged.returncode == 1, damaged.stdout + damaged.stderr
    assert f"FAILED queue {queue!r}" in damaged.stdout and segment.name in damaged.stdout, damaged.stdout
    assert "NOT restorable" in damaged.stdout and "Traceback" not in damaged.stderr
    assert "warren_drill_success 0" in metrics.read_text()
