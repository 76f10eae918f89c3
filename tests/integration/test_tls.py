"""Everything over TLS, verified against the broker's certificate authority, as production brokers run:
the archiver reads a queue over amqps:// and a stream over the stream protocol's TLS listener (found
through the management API over https://), `warren check` reaches each over TLS, replay publishes back
over amqps://; and a certificate that does not verify is one clear line, never a connection in clear."""

from __future__ import annotations

import pytest

from bridge.harness.tls import make_certificates
from tests.integration.archiving import (
    Witness,
    archived_count,
    publish,
    queue_source,
    read_archive,
    simple_messages,
    stream_source,
    warren,
)
from tests.integration.replaying import replay
from tests.polling import wait_until

pytestmark = pytest.mark.slow


def tls_config(path, amqps: str, https: str, sink, sources: list[tuple[str, str]]) -> None:
    lines = ["[broker]", f'uri = "{amqps}"', f'management-uri = "{https}"', "", "[archive]", f'sinks = ["{sink}"]']
    lines += ["segment-max-age = 0.5", "definitions-interval = 0"]
    for key, name in sources:
        lines += ["", "[[source]]", f'{key} = "{name}"']
    path.write_text("\n".join(lines) + "\n")


def test_archive_check_and_replay_over_tls_with_the_certificate_verified(fresh_broker, archivers, tmp_path):
    node = fresh_broker(tls=True)
    amqps, _, https = node.tls_uris()
    queue, stream, restored = "tls.orders", "tls.events", "tls.orders.restored"
    with Witness(node.amqp_uri) as witness:
        witness.declare_queue(queue)
        witness.declare_queue(restored)
        witness.declare_stream(stream)
    sink = tmp_path / "archive"
    config = tmp_path / "warren.toml"
    tls_config(config, amqps, https, sink, [("src-queue", queue), ("src-stream", stream)])

    checked = warren("check", "--config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"stream {stream!r} in vhost '/' at rabbitmq-stream+tls://guest@localhost:{node.tls_ports.stream}" in (
        checked.stdout
    )

    publish(node.amqp_uri, simple_messages(50, queue))
    publish(node.amqp_uri, simple_messages(50, stream))
    archiver = archivers.start("--config", str(config))
    wait_until(lambda: archived_count(sink, queue_source(queue)) == 50, timeout=60, what="the queue archived")
    wait_until(lambda: archived_count(sink, stream_source(stream)) == 50, timeout=60, what="the stream archived")
    # Every connection the broker has now (the archiver's: the test's own are closed) came over TLS.
    listing = node.ctl("list_connections", "-q", "--no-table-headers", "ssl", "port")
    rows = [line.split("\t") for line in listing.splitlines() if line.strip()]
    assert rows and all(row == ["true", str(node.tls_ports.amqp)] for row in rows), listing
    archiver.terminate()

    result = replay("--archive", str(sink), "--target", amqps, "--source", queue, "--map-queue", f"{queue}={restored}")
    assert result.returncode == 0, result.stdout + result.stderr
    with Witness(node.amqp_uri) as witness:
        assert witness.depth(restored) == 50
    assert [r.properties.message_id for r in read_archive(sink, queue_source(queue))] == [
        m.properties.message_id for m in simple_messages(50, queue)
    ]


def test_a_certificate_that_does_not_verify_is_one_clear_line(fresh_broker, tmp_path):
    node = fresh_broker(tls=True)
    amqps, _, https = node.tls_uris()
    other = make_certificates(tmp_path / "other-ca").ca  # not the authority that signed the broker's
    config = tmp_path / "warren.toml"
    tls_config(
        config,
        amqps.replace(str(node.tls_ca), str(other)),
        https.replace(str(node.tls_ca), str(other)),
        tmp_path / "archive",
        [("src-queue", "tls.any")],
    )
    checked = warren("check", "--config", str(config))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    broker_line = next(line for line in checked.stdout.splitlines() if line.startswith("broker "))
    assert "certificate" in broker_line.lower(), broker_line
    management_line = next(line for line in checked.stdout.splitlines() if line.startswith("management API"))
    assert "certificate" in management_line.lower(), management_line
    assert "Traceback" not in checked.stdout + checked.stderr

    archived = warren("archive", "--config", str(config))
    assert archived.returncode == 6, archived.stderr  # refused, as wrong credentials are
    assert "certificate" in archived.stderr.lower() and "Traceback" not in archived.stderr, archived.stderr
