"""`warren check --config FILE` against a private broker and real sinks: one line per thing it reaches,
"ok" or what is wrong (never a password), exit code 0 only when everything is ok."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator

import pytest

from bridge.errors import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE
from bridge.harness.nodes import LocalNode
from tests.integration.archiving import Witness, warren, write_config
from tests.sinks.emulators_s3 import MotoServer, use_test_credentials


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def lines_about(output: str, what: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(what)]


@pytest.fixture
def names(broker: LocalNode) -> Iterator[tuple[str, str]]:
    """A queue and a stream of this test's own."""
    token = secrets.token_hex(4)
    queue, stream = f"check.orders.{token}", f"check.events.{token}"
    with Witness(broker.amqp_uri) as witness:
        witness.declare_queue(queue)
        witness.declare_stream(stream)
    yield queue, stream
    with Witness(broker.amqp_uri) as witness:
        witness.delete(queue, stream)


def test_everything_reachable_is_reported_ok_line_by_line_with_exit_code_0(broker, names, tmp_path):
    queue, stream = names
    config = write_config(
        tmp_path / "warren.toml", broker, tmp_path / "archive", [{"src-queue": queue}, {"src-stream": stream}]
    )
    result = warren("check", "--config", str(config))
    out = result.stdout
    assert result.returncode == EXIT_OK, out + result.stderr
    assert lines_about(out, f"config {config}: ok")
    assert lines_about(out, f"broker amqp://guest@127.0.0.1:{broker.ports.amqp}/%2F: ok (RabbitMQ ")
    assert f": ok (RabbitMQ {broker.version}." in lines_about(out, "management API http://guest:***@127.0.0.1:")[0]
    assert lines_about(out, f"queue {queue!r} in vhost '/': ok (move, 0 messages)")
    assert lines_about(
        out, f"stream {stream!r} in vhost '/' at rabbitmq-stream://guest@127.0.0.1:{broker.ports.stream}"
    )
    assert lines_about(out, f"sink file://{tmp_path / 'archive'}: ok")
    assert out.splitlines()[-1] == "5 of 5 ok"
    assert "guest:guest" not in out + result.stderr
    with Witness(broker.amqp_uri) as witness:
        assert witness.depth(queue) == 0  # checked without consuming or publishing anything


def test_a_wrong_password_a_missing_queue_and_an_unreachable_sink_each_get_one_line_and_exit_1(
    broker, names, tmp_path, monkeypatch
):
    queue, _ = names
    missing = f"check.missing.{secrets.token_hex(4)}"
    broker.ctl("add_user", "checker", "right-password")
    broker.ctl("set_permissions", "-p", "/", "checker", ".*", ".*", ".*")
    use_test_credentials(monkeypatch, tmp_path)  # the S3 sink's credential chain: fixed, fake, local
    dead_s3 = f"s3://bucket/warren?endpoint-url=http://127.0.0.1:{closed_port()}&region=us-east-1"
    wrong = broker.amqp_uri.replace("guest:guest@", "checker:wrong-password@")
    config = write_config(
        tmp_path / "warren.toml",
        broker,
        tmp_path / "archive",
        [{"src-queue": queue, "src-uri": wrong}, {"src-queue": missing}],
    )
    text = config.read_text().replace('sinks = ["', f'sinks = ["{dead_s3}", "', 1)
    config.write_text(text)

    result = warren("check", "--config", str(config))
    out = result.stdout
    assert result.returncode == EXIT_CHECK_FAILED, out + result.stderr
    assert "wrong-password" not in out + result.stderr
    (refused,) = lines_about(out, f"queue {queue!r} in vhost '/': ")
    assert refused == (
        f"queue {queue!r} in vhost '/': not checked: amqp://checker@127.0.0.1:{broker.ports.amqp}/%2F: "
        "credentials refused (403 ACCESS_REFUSED)"
    )
    (not_found,) = lines_about(out, f"queue {missing!r} in vhost '/': ")
    assert not_found == f"queue {missing!r} in vhost '/': not found (404 NOT_FOUND - no queue {missing!r} in vhost '/')"
    (unreachable,) = lines_about(out, "sink s3://bucket/warren")
    assert ": ok" not in unreachable and "127.0.0.1" in unreachable, unreachable
    assert lines_about(out, f"sink file://{tmp_path / 'archive'}: ok")
    assert out.splitlines()[-1] == "3 of 6 ok, 3 not"
    assert "Traceback" not in result.stderr


def test_wrong_broker_credentials_are_reported_for_the_broker_and_its_management_api(broker, names, tmp_path):
    queue, _ = names
    config = write_config(tmp_path / "warren.toml", broker, tmp_path / "archive", [{"src-queue": queue}])
    config.write_text(config.read_text().replace("guest:guest@", "guest:not-the-password@"))
    result = warren("check", "--config", str(config))
    out = result.stdout
    assert result.returncode == EXIT_CHECK_FAILED, out
    assert lines_about(out, "broker amqp://guest@")[0].endswith(": credentials refused (403 ACCESS_REFUSED)")
    assert ": credentials refused (401 " in lines_about(out, "management API http://guest:***@")[0]
    assert "not-the-password" not in out + result.stderr


def test_a_missing_bucket_is_one_clear_line(broker, names, tmp_path, monkeypatch):
    pytest.importorskip("moto.server", reason="the S3 emulator needs moto[server]")
    use_test_credentials(monkeypatch, tmp_path)
    moto = MotoServer(tmp_path).start()
    try:
        queue, _ = names
        uri = f"s3://no-such-bucket-{secrets.token_hex(4)}/warren?endpoint-url={moto.endpoint}&region=us-east-1"
        config = write_config(tmp_path / "warren.toml", broker, uri, [{"src-queue": queue}])  # type: ignore[arg-type]
        result = warren("check", "--config", str(config))
    finally:
        moto.stop()
    (line,) = lines_about(result.stdout, "sink s3://no-such-bucket-")
    assert result.returncode == EXIT_CHECK_FAILED, result.stdout
    assert line.endswith("does not exist at " + moto.endpoint), line


def test_a_wrong_configuration_is_exit_code_2_naming_the_key(tmp_path):
    config = tmp_path / "warren.toml"
    config.write_text('[broker]\nuri = "amqp://localhost"\n\n[[source]]\nsrc-queue = "q"\nprefetch = 10\n')
    result = warren("check", "--config", str(config))
    assert result.returncode == EXIT_USAGE
    assert result.stderr.strip() == f"warren check: {config}: unknown key(s): source[0].prefetch"


def test_a_pattern_is_reported_with_the_queues_it_matches_now(broker, names, tmp_path):
    queue, stream = names
    token = queue.rsplit(".", 1)[1]
    config = write_config(
        tmp_path / "warren.toml",
        broker,
        tmp_path / "archive",
        [{"src-queue-pattern": f"^check\\.(orders|events)\\.{token}$", "queue-types": ["classic", "stream"]}],
    )
    result = warren("check", "--config", str(config))
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    (line,) = lines_about(result.stdout, "pattern ")
    assert (
        line
        == f"pattern '^check\\\\.(orders|events)\\\\.{token}$' in vhost '/': ok (2 match now: {stream!r}, {queue!r})"
    )
    assert "1 pattern," in lines_about(result.stdout, "config ")[0]
