"""The archiver's TOML configuration: a full file parses into the expected dataclasses, defaults follow the
Shovel plugin, `${ENV}` is expanded in URIs, the command line builds the same configuration as the
equivalent file, and every mistake is refused with the file, the key path and what was expected."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bridge.config import (
    ArchiverConfig,
    ArchiveSettings,
    BrokerConfig,
    QueueSourceConfig,
    StreamOffset,
    StreamSourceConfig,
    config_from_args,
    load_config,
    parse_config,
)
from bridge.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
MAY_1_10H_MS = 1_714_557_600_000  # 2024-05-01T10:00:00Z

FULL = """
[broker]
uri = "amqp://warren:s3cret@rabbit.example:5672/prod"
management-uri = "https://warren:s3cret@rabbit.example:15671"
stream-uri = "rabbitmq-stream://warren:s3cret@rabbit.example:5552/prod"

[archive]
sinks = ["file:///var/lib/warren", "/mnt/backup/warren", "file:///srv/warren"]
segment-max-bytes = 1048576
segment-max-age = 30.5
segment-idle = 0
definitions-interval = 0

[[source]]
src-queue = "orders"
mode = "move"
ack-mode = "on-publish"
prefetch-count = 250
reconnect-delay = 2.5
src-delete-after = "queue-length"

[[source]]
src-queue = "audit"
mode = "tap"
ack-mode = "no-ack"
reconnect-delay = 1
src-delete-after = 500

[[source]]
src-queue = "invoices"
src-uri = "amqp://billing:pw@rabbit.example:5672/billing"
mode = "snapshot"
ack-mode = "on-confirm"
src-delete-after = "never"

[[source]]
src-stream = "events"
offset = "first"

[[source]]
src-stream = "clicks"
offset = "last"
reconnect-delay = 0.5

[[source]]
src-stream = "logs"
offset = "next"

[[source]]
src-stream = "metrics"
offset = 12345

[[source]]
src-stream = "ticks"
offset = "678"

[[source]]
src-stream = "trades"
src-uri = "rabbitmq-stream://warren:s3cret@rabbit.example:5552/markets"
offset = "2024-05-01T10:00:00Z"
"""

BROKER = '[broker]\nuri = "amqp://guest:guest@localhost:5672/"\n'
TWO_QUEUES = '[[source]]\nsrc-queue = "a"\n\n[[source]]\nsrc-queue = "b"\n'
QUEUE_AND_STREAM = '[[source]]\nsrc-queue = "a"\n\n[[source]]\nsrc-stream = "s"\n'


def write(tmp_path: Path, text: str, name: str = "warren.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def refused(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


# ---- valid files ------------------------------------------------------------------------------


def test_a_full_file_parses_into_the_expected_configuration(tmp_path):
    config = load_config(write(tmp_path, FULL))
    prod = "amqp://warren:s3cret@rabbit.example:5672/prod"
    management = "https://warren:s3cret@rabbit.example:15671"
    streams = "rabbitmq-stream://warren:s3cret@rabbit.example:5552/prod"
    assert config == ArchiverConfig(
        broker=BrokerConfig(prod, management, streams),
        archive=ArchiveSettings(
            sinks=("file:///var/lib/warren", "/mnt/backup/warren", "file:///srv/warren"),
            segment_max_bytes=1048576,
            segment_max_age=30.5,
            segment_idle=0,
            definitions_interval=0,
            write_quorum=None,
        ),
        sources=(
            QueueSourceConfig("orders", prod, management, "move", "on-publish", 250, 2.5, "queue-length"),
            QueueSourceConfig("audit", prod, management, "tap", "no-ack", 1000, 1, 500),
            QueueSourceConfig(
                "invoices", "amqp://billing:pw@rabbit.example:5672/billing", management, "snapshot", "on-confirm"
            ),
            StreamSourceConfig("events", "prod", streams, StreamOffset("first"), lease_uri=prod),
            StreamSourceConfig("clicks", "prod", streams, StreamOffset("last"), 0.5, lease_uri=prod),
            StreamSourceConfig("logs", "prod", streams, StreamOffset("next"), lease_uri=prod),
            StreamSourceConfig("metrics", "prod", streams, StreamOffset("offset", 12345), lease_uri=prod),
            StreamSourceConfig("ticks", "prod", streams, StreamOffset("offset", 678), lease_uri=prod),
            StreamSourceConfig(
                "trades",
                "markets",
                "rabbitmq-stream://warren:s3cret@rabbit.example:5552/markets",
                StreamOffset("timestamp", MAY_1_10H_MS),
                lease_uri="amqp://warren:s3cret@rabbit.example:5672/markets",  # in the stream's vhost
            ),
        ),
    )
    assert config.sources[0].vhost == "prod"
    assert config.sources[2].vhost == "billing"


def test_defaults_follow_the_shovel_plugin_and_derive_the_management_uri(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
            [broker]
            uri = "amqps://ops:p%40ss@Rabbit.Example:5671/%2F"

            [[source]]
            src-queue = "orders"

            [[source]]
            src-stream = "events"
            """,
        )
    )
    assert config.broker == BrokerConfig(
        "amqps://ops:p%40ss@Rabbit.Example:5671/%2F", "http://ops:p%40ss@rabbit.example:15672", None
    )
    assert config.archive == ArchiveSettings()
    assert config.archive.write_quorum is None
    queue, stream = config.sources
    assert queue == QueueSourceConfig(
        queue="orders",
        uri="amqps://ops:p%40ss@Rabbit.Example:5671/%2F",
        management_uri="http://ops:p%40ss@rabbit.example:15672",
        mode="move",
        ack_mode="on-confirm",
        prefetch_count=1000,
        reconnect_delay=5.0,
        delete_after="never",
    )
    assert queue.vhost == "/"
    # No stream URI yet: it is discovered from the management API when the archiver starts.
    # Its lease is held over AMQP, in its vhost (bridge/archiver/lease.py).
    lease = "amqps://ops:p%40ss@Rabbit.Example:5671/%2F"
    assert stream == StreamSourceConfig("events", "/", None, StreamOffset("first"), 5.0, lease_uri=lease)


def test_a_broker_uri_without_credentials_or_port_derives_a_plain_management_uri():
    config = parse_config({"broker": {"uri": "amqp://localhost"}, "source": [{"src-queue": "q"}]}, "x.toml")
    assert config.broker.management_uri == "http://localhost:15672"
    assert config.sources[0].vhost == "/"


def test_the_management_uri_of_an_ipv6_broker_keeps_the_brackets():
    config = parse_config({"broker": {"uri": "amqp://u:p@[::1]:5672/"}, "source": [{"src-queue": "q"}]}, "x.toml")
    assert config.broker.management_uri == "http://u:p@[::1]:15672"


@pytest.mark.parametrize(("value", "quorum"), [("2", 2), ("3", 3), ("1", 1), ('"all"', None)])
def test_write_quorum_is_read_from_the_archive_table(tmp_path, value, quorum):
    text = BROKER + f'[archive]\nsinks = ["/a", "/b", "/c"]\nwrite-quorum = {value}\n' + TWO_QUEUES
    assert load_config(write(tmp_path, text)).archive.write_quorum == quorum


def test_the_example_in_the_configuration_docs_parses(tmp_path, monkeypatch):
    monkeypatch.setenv("WARREN_BROKER_PASSWORD", "s3cret")
    docs = (REPO / "docs" / "CONFIG.md").read_text()
    example = re.search(r"```toml\n(.*?)```", docs, re.DOTALL)
    assert example is not None
    config = load_config(write(tmp_path, example[1]))
    assert config.broker.uri == "amqp://warren:s3cret@rabbit-1:5672/%2F"
    assert config.archive.write_quorum is None
    assert [type(s) for s in config.sources] == [QueueSourceConfig, StreamSourceConfig]


def test_env_variables_are_expanded_in_uris_and_sinks(tmp_path, monkeypatch):
    monkeypatch.setenv("WARREN_TEST_USER", "alice")
    monkeypatch.setenv("WARREN_TEST_PASSWORD", "s3cr3t")
    monkeypatch.setenv("WARREN_TEST_HOST", "rabbit.example")
    monkeypatch.setenv("WARREN_TEST_ARCHIVE", "/var/lib/warren")
    config = load_config(
        write(
            tmp_path,
            """
            [broker]
            uri = "amqp://${WARREN_TEST_USER}:${WARREN_TEST_PASSWORD}@${WARREN_TEST_HOST}/"

            [archive]
            sinks = ["file://${WARREN_TEST_ARCHIVE}"]

            [[source]]
            src-queue = "q"
            src-uri = "amqp://${WARREN_TEST_USER}:${WARREN_TEST_PASSWORD}@${WARREN_TEST_HOST}/other"

            [[source]]
            src-stream = "s"
            src-uri = "rabbitmq-stream://${WARREN_TEST_USER}:${WARREN_TEST_PASSWORD}@${WARREN_TEST_HOST}:5552/v"
            """,
        )
    )
    assert config.broker.uri == "amqp://alice:s3cr3t@rabbit.example/"
    assert config.broker.management_uri == "http://alice:s3cr3t@rabbit.example:15672"
    assert config.archive.sinks == ("file:///var/lib/warren",)
    queue, stream = config.sources
    assert queue.uri == "amqp://alice:s3cr3t@rabbit.example/other"
    assert queue.vhost == "other"
    assert stream.uri == "rabbitmq-stream://alice:s3cr3t@rabbit.example:5552/v"
    assert stream.vhost == "v"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[broker]\nuri = "amqp://${WARREN_TEST_UNSET}@h/"\n' + TWO_QUEUES, "broker.uri"),
        (BROKER + '[archive]\nsinks = ["/a", "s3://${WARREN_TEST_UNSET}/b"]\n' + TWO_QUEUES, "archive.sinks"),
        (BROKER + TWO_QUEUES + 'src-uri = "amqp://h/${WARREN_TEST_UNSET}"\n', "source[1].src-uri"),
        (BROKER.replace("\n", '\nstream-uri = "${WARREN_TEST_UNSET}"\n', 1) + TWO_QUEUES, "broker.stream-uri"),
    ],
)
def test_a_missing_env_variable_is_refused_by_name(tmp_path, monkeypatch, text, where):
    monkeypatch.delenv("WARREN_TEST_UNSET", raising=False)
    path = write(tmp_path, text)
    assert refused(path) == f"{path}: {where}: environment variable WARREN_TEST_UNSET is not set"


def test_the_same_queue_name_in_two_vhosts_is_two_sources(tmp_path):
    text = BROKER + TWO_QUEUES.replace('"b"', '"a"') + 'src-uri = "amqp://guest:guest@localhost:5672/other"\n'
    config = load_config(write(tmp_path, text))
    assert [(s.queue, s.vhost) for s in config.sources] == [("a", "/"), ("a", "other")]


# ---- mistakes ---------------------------------------------------------------------------------

# (id, file text, what follows "<file>: " in the message, a phrase saying what was expected)
MISTAKES = [
    ("unknown-top-level", 'colour = "blue"\n' + BROKER + TWO_QUEUES, "unknown key(s): colour", None),
    ("unknown-in-broker", BROKER + 'vhost = "x"\n' + TWO_QUEUES, "unknown key(s): broker.vhost", None),
    ("unknown-in-archive", BROKER + '[archive]\nsink = ["/a"]\n' + TWO_QUEUES, "unknown key(s): archive.sink", None),
    ("unknown-in-source", BROKER + TWO_QUEUES + "prefetch = 10\n", "unknown key(s): source[1].prefetch", None),
    (
        "queue-key-in-stream-source",
        BROKER + QUEUE_AND_STREAM + 'mode = "tap"\n',
        "unknown key(s): source[1].mode",
        None,
    ),
    (
        "string-for-integer",
        BROKER + TWO_QUEUES + 'prefetch-count = "10"\n',
        "source[1].prefetch-count: ",
        "expected an integer",
    ),
    (
        "bool-for-integer",
        BROKER + TWO_QUEUES + "prefetch-count = true\n",
        "source[1].prefetch-count: ",
        "expected an integer",
    ),
    (
        "float-for-integer",
        BROKER + TWO_QUEUES + "prefetch-count = 1.5\n",
        "source[1].prefetch-count: ",
        "expected an integer",
    ),
    (
        "string-for-number",
        BROKER + '[archive]\nsegment-max-age = "60s"\n' + TWO_QUEUES,
        "archive.segment-max-age: ",
        "expected a number",
    ),
    (
        "bool-for-number",
        BROKER + "[archive]\ndefinitions-interval = true\n" + TWO_QUEUES,
        "archive.definitions-interval: ",
        "expected a number",
    ),
    (
        "bool-for-reconnect-delay",
        BROKER + TWO_QUEUES + "reconnect-delay = false\n",
        "source[1].reconnect-delay: ",
        "expected a number",
    ),
    ("number-for-string", BROKER + "[[source]]\nsrc-queue = 42\n", "source[0].src-queue: ", "expected a string"),
    ("number-for-uri", "[broker]\nuri = 5672\n" + TWO_QUEUES, "broker.uri: ", "expected a URI"),
    ("number-for-mode", BROKER + TWO_QUEUES + "mode = 1\n", "source[1].mode: ", "expected a string"),
    (
        "string-for-sink-list",
        BROKER + '[archive]\nsinks = "/var/lib/warren"\n' + TWO_QUEUES,
        "archive.sinks: ",
        "expected a list of sink URIs",
    ),
    ("empty-sink-list", BROKER + "[archive]\nsinks = []\n" + TWO_QUEUES, "archive.sinks: ", "non-empty list"),
    ("number-in-sink-list", BROKER + '[archive]\nsinks = ["/a", 1]\n' + TWO_QUEUES, "archive.sinks: ", "sink URIs"),
    ("broker-not-a-table", 'broker = "amqp://h/"\n' + TWO_QUEUES, "broker: ", "expected a [broker] table"),
    ("missing-broker", TWO_QUEUES, "broker: ", "is required (a [broker] table)"),
    ("missing-broker-uri", '[broker]\nmanagement-uri = "http://h:15672"\n' + TWO_QUEUES, "broker.uri: ", "required"),
    ("no-source", BROKER, "source: ", "is required (one or more [[source]] tables)"),
    ("empty-source-list", "source = []\n" + BROKER, "source: ", "at least one [[source]]"),
    ("source-not-a-table", 'source = ["orders"]\n' + BROKER, "source[0]: ", "expected a [[source]] table"),
    (
        "queue-and-stream",
        BROKER + TWO_QUEUES + 'src-stream = "s"\n',
        "source[1]: ",
        "exactly one of src-queue, src-stream or src-queue-pattern",
    ),
    (
        "neither-queue-nor-stream",
        BROKER + TWO_QUEUES.replace('src-queue = "b"', "prefetch-count = 5"),
        "source[1]: ",
        "exactly one of src-queue, src-stream or src-queue-pattern",
    ),
    (
        "bad-mode",
        BROKER + TWO_QUEUES + 'mode = "copy"\n',
        "source[1].mode: ",
        "expected one of move, tap, snapshot, got 'copy'",
    ),
    (
        "bad-ack-mode",
        BROKER + TWO_QUEUES + 'ack-mode = "on-ack"\n',
        "source[1].ack-mode: ",
        "expected one of on-confirm, on-publish, no-ack, got 'on-ack'",
    ),
    ("zero-prefetch", BROKER + TWO_QUEUES + "prefetch-count = 0\n", "source[1].prefetch-count: ", "positive"),
    ("negative-prefetch", BROKER + TWO_QUEUES + "prefetch-count = -5\n", "source[1].prefetch-count: ", "positive"),
    ("zero-reconnect-delay", BROKER + TWO_QUEUES + "reconnect-delay = 0\n", "source[1].reconnect-delay: ", "positive"),
    (
        "zero-segment-max-bytes",
        BROKER + "[archive]\nsegment-max-bytes = 0\n" + TWO_QUEUES,
        "archive.segment-max-bytes: ",
        "positive",
    ),
    (
        "negative-definitions-interval",
        BROKER + "[archive]\ndefinitions-interval = -1\n" + TWO_QUEUES,
        "archive.definitions-interval: ",
        "non-negative",
    ),
    (
        "delete-after-sometimes",
        BROKER + TWO_QUEUES + 'src-delete-after = "sometimes"\n',
        "source[1].src-delete-after: ",
        'expected "never", "queue-length" or a number',
    ),
    (
        "delete-after-zero",
        BROKER + TWO_QUEUES + "src-delete-after = 0\n",
        "source[1].src-delete-after: ",
        "positive number of messages",
    ),
    (
        "delete-after-bool",
        BROKER + TWO_QUEUES + "src-delete-after = true\n",
        "source[1].src-delete-after: ",
        '"never", "queue-length" or a number',
    ),
    ("negative-offset", BROKER + QUEUE_AND_STREAM + "offset = -1\n", "source[1].offset: ", "non-negative offset"),
    (
        "bad-offset",
        BROKER + QUEUE_AND_STREAM + 'offset = "yesterday"\n',
        "source[1].offset: ",
        'expected "first", "last", "next", an offset or a time',
    ),
    (
        "offset-without-utc-offset",
        BROKER + QUEUE_AND_STREAM + 'offset = "2024-05-01T10:00:00"\n',
        "source[1].offset: ",
        "an offset or a time",
    ),
    ("http-broker-uri", '[broker]\nuri = "http://h:15672/"\n' + TWO_QUEUES, "broker.uri: ", "amqp:// or amqps://"),
    ("schemeless-broker-uri", '[broker]\nuri = "rabbit.example"\n' + TWO_QUEUES, "broker.uri: ", "amqp://"),
    (
        "same-queue-twice",
        BROKER + TWO_QUEUES.replace('"b"', '"a"'),
        "source[1]: ",
        "queue 'a' in vhost '/' is configured twice",
    ),
    (
        "same-queue-twice-via-the-vhost-in-its-uri",
        BROKER + TWO_QUEUES.replace('"b"', '"a"') + 'src-uri = "amqp://other:pw@localhost/%2F"\n',
        "source[1]: ",
        "configured twice",
    ),
    (
        "same-stream-twice",
        BROKER + '[[source]]\nsrc-stream = "s"\n\n[[source]]\nsrc-stream = "s"\noffset = "last"\n',
        "source[1]: ",
        "stream 's' in vhost '/' is configured twice",
    ),
]


@pytest.mark.parametrize(("text", "where", "expected"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_refused_naming_the_file_the_key_and_what_was_expected(tmp_path, text, where, expected):
    path = write(tmp_path, text)
    message = refused(path)
    assert message.startswith(f"{path}: {where}"), message
    if expected is not None:
        assert expected in message, message
    assert "\n" not in message


@pytest.mark.parametrize("value", ["0", "4", '"most"', "true", "-1"])
def test_an_impossible_write_quorum_is_refused_saying_what_is_expected(tmp_path, value):
    text = BROKER + f'[archive]\nsinks = ["/a", "/b", "/c"]\nwrite-quorum = {value}\n' + TWO_QUEUES
    path = write(tmp_path, text)
    message = refused(path)
    assert message.startswith(f"{path}: archive.write-quorum: expected"), message
    assert '"all"' in message, message


def test_invalid_toml_is_refused_naming_the_file(tmp_path):
    path = write(tmp_path, BROKER + '[[source]]\nsrc-queue = "unterminated\n')
    message = refused(path)
    assert message.startswith(f"{path}: not valid TOML"), message


def test_a_missing_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "nowhere" / "warren.toml"
    assert refused(path) == f"{path}: no such file"


# ---- the command line -------------------------------------------------------------------------


def test_config_from_args_builds_the_same_config_as_the_equivalent_file(tmp_path):
    from_args = config_from_args(
        "amqp://u:p@rabbit.example:5672/v",
        ["orders", "audit"],
        ["events"],
        ["file:///a", "/b"],
        stream_uri="rabbitmq-stream://u:p@rabbit.example:5552/v",
        mode="tap",
        ack_mode="on-publish",
        prefetch_count=50,
        offset="2024-05-01T10:00:00Z",
        segment_max_age=12.5,
    )
    from_file = load_config(
        write(
            tmp_path,
            """
            [broker]
            uri = "amqp://u:p@rabbit.example:5672/v"
            stream-uri = "rabbitmq-stream://u:p@rabbit.example:5552/v"

            [archive]
            sinks = ["file:///a", "/b"]
            segment-max-age = 12.5

            [[source]]
            src-queue = "orders"
            mode = "tap"
            ack-mode = "on-publish"
            prefetch-count = 50

            [[source]]
            src-queue = "audit"
            mode = "tap"
            ack-mode = "on-publish"
            prefetch-count = 50

            [[source]]
            src-stream = "events"
            offset = "2024-05-01T10:00:00Z"
            """,
        )
    )
    assert from_args == from_file
    assert from_args.sources[2].offset == StreamOffset("timestamp", MAY_1_10H_MS)


def test_config_from_args_with_defaults_matches_a_minimal_file(tmp_path):
    from_args = config_from_args("amqp://localhost", ["q"], ["s"], [], management_uri="http://mgmt:15672")
    text = '[broker]\nuri = "amqp://localhost"\nmanagement-uri = "http://mgmt:15672"\n'
    text += '[[source]]\nsrc-queue = "q"\n\n[[source]]\nsrc-stream = "s"\n'
    assert from_args == load_config(write(tmp_path, text))
    assert from_args.archive == ArchiveSettings()


def test_config_from_args_refuses_mistakes_naming_the_command_line():
    with pytest.raises(ConfigError) as caught:
        config_from_args("amqp://localhost", ["q"], [], [], prefetch_count=0)
    assert str(caught.value).startswith("command line: source[0].prefetch-count: expected a positive number")
    with pytest.raises(ConfigError, match=r"^command line: source\[1\]: queue 'q' in vhost '/' is configured twice"):
        config_from_args("amqp://localhost", ["q", "q"], [], [])


def test_warren_archive_with_a_bad_config_exits_2_with_one_line_naming_the_file_and_key(tmp_path):
    path = write(tmp_path, BROKER + TWO_QUEUES + "prefetch-count = 0\n", name="BAD.toml")
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "archive", "--config", str(path)],
        cwd=REPO,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == f"warren archive: {path}: source[1].prefetch-count: expected a positive number, got 0"
    assert result.stdout == ""


def test_a_management_or_stream_uri_without_a_user_takes_the_brokers_credentials():
    config = parse_config(
        {
            "broker": {
                "uri": "amqp://archiver:s3cret@rabbit-1:5672/%2F",
                "management-uri": "https://rabbit-1:15671",
                "stream-uri": "rabbitmq-stream://rabbit-1:5552/%2F",
            },
            "source": [{"src-queue": "orders"}],
        },
        "test",
    )
    assert config.broker.management_uri == "https://archiver:s3cret@rabbit-1:15671"
    assert config.broker.stream_uri == "rabbitmq-stream://archiver:s3cret@rabbit-1:5552/%2F"


def test_a_management_uri_with_a_user_of_its_own_keeps_it():
    config = parse_config(
        {
            "broker": {
                "uri": "amqp://archiver:s3cret@rabbit-1/%2F",
                "management-uri": "http://monitor:pw@rabbit-1:15672",
            },
            "source": [{"src-queue": "orders"}],
        },
        "test",
    )
    assert config.broker.management_uri == "http://monitor:pw@rabbit-1:15672"
