"""`--metrics-listen` as an operator's Prometheus and load balancer see it, against real private brokers:
the archiver's counters match what the archive holds, a refused source shows as not consuming, /readyz
turns false when the broker dies and true again when it is back, and replay --follow reports what the
target confirmed. (A sink that stops taking writes: test_sink_faults.py.)"""

from __future__ import annotations

import secrets

from bridge.harness.nodes import free_port
from tests.integration.archiving import (
    Witness,
    archived_count,
    health,
    publish,
    queue_source,
    scrape,
    simple_messages,
    write_config,
)
from tests.integration.replaying import Replayers
from tests.polling import wait_until


def test_the_archivers_metrics_count_what_the_archive_holds_and_name_the_refused_source(broker, archivers, tmp_path):
    token = secrets.token_hex(4)
    queue, missing = f"metrics.orders.{token}", f"metrics.missing.{token}"
    port = free_port()
    with Witness(broker.amqp_uri) as witness:
        witness.declare_queue(queue)
    sink = tmp_path / "archive"
    config = write_config(
        tmp_path / "warren.toml",
        broker,
        sink,
        [{"src-queue": queue}, {"src-queue": missing, "reconnect-delay": 0.5}],
        definitions_interval=0,
        segment_max_age=0.5,
    )
    archiver = archivers.start("--config", str(config), "--metrics-listen", str(port))
    wait_until(lambda: health(port, "/readyz")[0] == 200, timeout=60, what="ready (one source consuming)")

    sent = simple_messages(300, queue)
    publish(broker.amqp_uri, sent)
    ours, refused = str(queue_source(queue)), f"queue {missing!r} in vhost '/'"
    found = wait_until(
        lambda: (m := scrape(port)).get(("warren_archived_messages_total", ours)) == len(sent) and m,
        timeout=60,
        what="the metrics counting every message",
    )
    assert archived_count(sink, queue_source(queue)) == len(sent)
    segments = len(list(sink.rglob("*.wseg")))
    assert found[("warren_segments_committed_total", ours)] == segments
    assert found[("warren_ack_latency_seconds_count", ours)] == segments
    assert found[("warren_committed_sequence", ours)] == len(sent)
    assert found[("warren_source_consuming", ours)] == 1
    assert found[("warren_source_consuming", refused)] == 0
    assert found[("warren_source_failures", refused)] >= 1
    assert found[("warren_sink_failing_seconds", ours)] == 0
    # The broker's own count of what is left: nothing, once archived (polled every few seconds).
    wait_until(
        lambda: scrape(port).get(("warren_source_backlog_messages", ours)) == 0,
        timeout=30,
        what="the backlog gauge at 0",
    )
    status, text = health(port, "/healthz")
    assert status == 200 and "archiving 1 of 2 sources" in text, text
    for path in ("/metrics", "/healthz", "/readyz"):  # the broker's credentials are nowhere in what is served
        served = health(port, path)[1]
        assert "guest:guest" not in served and "guest@" not in served, (path, served)
    archiver.terminate()


def test_readiness_follows_the_broker_going_away_and_coming_back(fresh_broker, archivers, tmp_path):
    node = fresh_broker()
    queue, port = "metrics.ready", free_port()
    with Witness(node.amqp_uri) as witness:
        witness.declare_queue(queue)
    args = ["--broker", node.amqp_uri, "--management-uri", node.management_uri, "--stream-uri", node.stream_uri]
    archiver = archivers.start(
        *args, "--queue", queue, "--sink", str(tmp_path / "archive"), "--metrics-listen", str(port)
    )
    wait_until(lambda: health(port, "/readyz")[0] == 200, timeout=60, what="ready")

    node.kill()
    _, text = wait_until(
        lambda: (h := health(port, "/readyz"))[0] == 503 and h, timeout=30, what="unready without a broker"
    )
    assert "no source consuming" in text, text
    assert health(port, "/healthz")[0] == 200  # reconnecting by itself: alive, not ready
    assert scrape(port)[("warren_source_consuming", str(queue_source(queue)))] == 0

    node.start()
    wait_until(lambda: health(port, "/readyz")[0] == 200, timeout=90, what="ready again once the broker is back")
    archiver.terminate()


def test_replay_follow_reports_what_the_target_confirmed(broker, archivers, tmp_path):
    queue = f"metrics.follow.{secrets.token_hex(4)}"
    restored, port = f"{queue}.restored", free_port()
    sink = tmp_path / "archive"
    with Witness(broker.amqp_uri) as witness:
        witness.declare_queue(queue)
        witness.declare_queue(restored)
    config = write_config(tmp_path / "warren.toml", broker, sink, [{"src-queue": queue}], segment_max_age=0.5)
    archiver = archivers.start("--config", str(config))
    archiver.wait_for_log("msg=archiving", timeout=60)
    publish(broker.amqp_uri, simple_messages(40, queue))
    wait_until(lambda: archived_count(sink, queue_source(queue)) == 40, timeout=60, what="archived")
    archiver.terminate()

    with Replayers(tmp_path) as replayers, Witness(broker.amqp_uri) as witness:
        follower = replayers.start(
            "--archive", str(sink), "--target", broker.amqp_uri, "--follow", "--map-queue", f"{queue}={restored}",
            "--metrics-listen", f"127.0.0.1:{port}",
        )  # fmt: skip
        wait_until(lambda: witness.depth(restored) == 40, timeout=60, what="the messages replayed")
        found = wait_until(
            lambda: (m := scrape(port)).get(("warren_replay_messages_total", str(queue_source(queue)))) == 40 and m,
            timeout=30,
            what="the replay metrics counting what the target confirmed",
        )
        assert found[("warren_replay_source_failed", str(queue_source(queue)))] == 0
        assert ("warren_replay_lag_seconds", "") in found
        assert health(port, "/readyz")[0] == 200
        assert follower.terminate() == 0, follower.describe()
