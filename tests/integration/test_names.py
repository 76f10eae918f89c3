"""Every name RabbitMQ allows, end to end: archive from the session's broker (A) and replay into a node of
this module's own (B), with names as operators give them: spaces, slashes, dots, unicode, 255 bytes of
UTF-8, in a vhost with a slash.

On A, in vhost `warren/test`: `orders eu/ü.1` (the name that crashed the archiver), a queue with a
255-byte name, a quorum queue holding a 1 MiB body, a tap of another 255-byte queue (whose own name
`warren.tap.<queue>` would exceed 255 bytes), a snapshot and a stream with an odd name, all archived by one
`warren archive`. pika on B is the witness that every message came back byte-identical.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.archiver.tap import tap_queue_name
from bridge.harness.nodes import LocalNode
from tests.integration.archiving import (
    Archivers,
    Outgoing,
    assert_verifies,
    publish,
    rich_properties,
    warren,
    write_config,
)
from tests.integration.replaying import (
    Management,
    Received,
    declare,
    depth,
    drain_queue,
    output,
    private_node,
    read_stream,
    replay,
    stream_vhost_uri,
    summary,
    vhost_uri,
    wait_archived,
)
from tests.integration.test_replay import same_stream_message, stream_properties, target_args
from tests.polling import wait_until


def exactly_255(pieces: list[str]) -> str:
    """A name of exactly 255 bytes of UTF-8 (RabbitMQ's limit), cycling through `pieces`."""
    name, i = "", 0
    while len((name + pieces[i % len(pieces)]).encode()) <= 255:
        name += pieces[i % len(pieces)]
        i += 1
    return name + "x" * (255 - len(name.encode()))


VHOST = "warren/test"
QUEUE = "orders eu/ü.1"
LONG = exactly_255(["orders eu/", "ü", ".1 ", "注文", "/", "🐇 "])
TAPPED = exactly_255(["tapped/", "ß ", "キュー", " 1.x"])
QUORUM = "quorum ü/1 MiB"
SNAPSHOT = "snapshot ü/q.1"
STREAM = "events ü/ß 1.x"  # the broker keeps a stream's data under a directory named from vhost and name
EXCHANGE = "ex ü/1"
ROUTING_KEY = "rk ü/1"
QUEUES = (QUEUE, LONG, QUORUM, TAPPED, SNAPSHOT)
COUNT = 20  # messages per source
MIB = 1024 * 1024


def body(i: int) -> bytes:
    return bytes((i * 31 + k) % 256 for k in range(i * 7))


def quorum_message(i: int) -> Outgoing:
    """One of exactly 1 MiB among small ones. No priority: a RabbitMQ 4 quorum queue delivers priorities
    above 4 first, so the order in which it hands messages out would not be the order they were published."""
    properties = rich_properties(i + 200)
    properties.priority = None
    return Outgoing("", QUORUM, body(i) if i != 3 else bytes(range(256)) * (MIB // 256), properties)


def same_message(got: Received, want: Outgoing, version: str) -> None:
    """Byte-identical to what the source broker delivered: the body and the property section, header
    table types and all (RabbitMQ 4 delivers a header table sorted by name: `raw_as_delivered_by`)."""
    assert got.body == want.body, f"body of {want.message_id} differs"
    assert got.raw_properties == want.raw_as_delivered_by(version), f"property bytes of {want.message_id} differ"


@dataclass(frozen=True)
class NamesArchive:
    sink: Path
    sent: dict[str, list[Outgoing]]  # source name -> what was published to it, in order


@pytest.fixture(scope="module")
def target(rabbitmq, tmp_path_factory) -> LocalNode:
    with private_node(tmp_path_factory.mktemp("names-target"), rabbitmq) as node:
        yield node


@pytest.fixture(scope="module")
def names(broker, tmp_path_factory) -> NamesArchive:
    work = tmp_path_factory.mktemp("names")
    sink = work / "archive"
    broker.ctl("add_vhost", VHOST)
    broker.ctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    uri = vhost_uri(broker, VHOST)

    def setup(channel) -> None:
        channel.exchange_declare(EXCHANGE, "direct", durable=True)
        for queue in (QUEUE, LONG, TAPPED, SNAPSHOT):
            channel.queue_declare(queue, durable=True)
        channel.queue_bind(TAPPED, EXCHANGE, ROUTING_KEY)
        channel.queue_declare(QUORUM, durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_declare(STREAM, durable=True, arguments={"x-queue-type": "stream"})

    declare(uri, setup)
    sent = {
        QUEUE: [Outgoing("", QUEUE, body(i), rich_properties(i)) for i in range(COUNT)],
        LONG: [Outgoing("", LONG, body(i + 1), rich_properties(i + 100)) for i in range(COUNT)],
        QUORUM: [quorum_message(i) for i in range(COUNT)],
        SNAPSHOT: [Outgoing("", SNAPSHOT, body(i + 3), rich_properties(i + 300)) for i in range(COUNT)],
        TAPPED: [Outgoing(EXCHANGE, ROUTING_KEY, body(i + 4), rich_properties(i + 400)) for i in range(COUNT)],
        STREAM: [Outgoing("", STREAM, body(i + 5), stream_properties(i)) for i in range(COUNT)],
    }
    for name in (QUEUE, LONG, QUORUM, SNAPSHOT, STREAM):  # a snapshot copies what the queue holds at start
        publish(uri, sent[name])
    config = write_config(
        work / "warren.toml",
        broker,
        sink,
        [
            {"src-queue": QUEUE, "src-uri": uri},
            {"src-queue": LONG, "src-uri": uri},
            {"src-queue": QUORUM, "src-uri": uri},
            {"src-queue": TAPPED, "src-uri": uri, "mode": "tap"},
            {"src-queue": SNAPSHOT, "src-uri": uri, "mode": "snapshot"},
            {"src-stream": STREAM, "src-uri": stream_vhost_uri(broker, VHOST), "offset": "first"},
        ],
        segment_max_age=1,
    )
    management = Management(broker)
    with Archivers(work) as archivers:
        archiver = archivers.start("--config", str(config))
        wait_until(
            lambda: (
                ((management.queue(VHOST, tap_queue_name(TAPPED)) or {}).get("consumers", 0) >= 1)
                or not archiver.running()
            ),
            timeout=60,
            what="the archiver consuming from the tap queue",
        )
        assert archiver.running(), archiver.stderr()
        publish(uri, sent[TAPPED])  # routed to the tapped queue and, through the copied binding, to the tap
        wait_archived(sink, {name: COUNT for name in sent}, timeout=120)
        archiver.terminate()
    return NamesArchive(sink, sent)


def test_the_archiver_moves_taps_and_snapshots_each_queue_as_its_mode_says(names, broker):
    uri = vhost_uri(broker, VHOST)
    assert {q: depth(uri, q) for q in QUEUES} == {QUEUE: 0, LONG: 0, QUORUM: 0, TAPPED: COUNT, SNAPSHOT: COUNT}
    tap = tap_queue_name(TAPPED)
    assert len(tap.encode()) <= 255 and depth(uri, tap) == 0


def test_ls_names_every_source_by_its_vhost_and_name(names):
    result = warren("ls", str(names.sink), "--json")
    assert result.returncode == 0, output(result)
    listed = {(row["vhost"], row["kind"], row["source"]): row["records"] for row in json.loads(result.stdout)}
    want = {(VHOST, "queue", q): COUNT for q in QUEUES} | {(VHOST, "stream", STREAM): COUNT}
    assert listed == want
    table = warren("ls", str(names.sink))
    assert table.returncode == 0 and QUEUE in table.stdout and LONG in table.stdout, output(table)


@pytest.mark.parametrize("name", [QUEUE, LONG, QUORUM], ids=["issue-name", "255-bytes", "quorum"])
def test_inspect_selects_a_source_by_its_name_and_vhost(names, name):
    result = warren("inspect", str(names.sink), "--source", name, "--vhost", VHOST, "--json")
    assert result.returncode == 0, output(result)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {(r["vhost"], r["source"]) for r in rows} == {(VHOST, name)}
    bodies = [r["body"].encode() if r["body_encoding"] == "utf-8" else base64.b64decode(r["body"]) for r in rows]
    assert bodies == [m.body for m in names.sent[name]]
    other_vhost = warren("inspect", str(names.sink), "--source", name, "--vhost", "/", "--json")
    assert other_vhost.returncode == 0 and other_vhost.stdout == "", output(other_vhost)


def test_verify_finds_the_archive_sound(names):
    assert_verifies(names.sink)


def test_replay_with_definitions_brings_every_message_back_byte_identical_under_the_same_names(names, target):
    result = replay("--archive", str(names.sink), *target_args(target), "--definitions")
    assert result.returncode == 0, output(result)
    lines = summary(result.stdout)
    for name in (*QUEUES, STREAM):
        assert not lines[name].failed and lines[name].replayed == COUNT, output(result)
    uri = vhost_uri(target, VHOST)
    management = Management(target)
    assert management.queue(VHOST, QUORUM)["type"] == "quorum"
    assert management.queue(VHOST, tap_queue_name(TAPPED)) is None, "warren's own tap queue was restored"
    for name in QUEUES:
        got = drain_queue(uri, name)
        want = names.sent[name]
        assert [g.properties.message_id for g in got] == [w.message_id for w in want], name
        for g, w in zip(got, want, strict=True):
            same_message(g, w, target.version)
    streamed = read_stream(uri, STREAM, expected=COUNT)
    assert [g.properties.message_id for g in streamed] == [w.message_id for w in names.sent[STREAM]]
    for g, w in zip(streamed, names.sent[STREAM], strict=True):
        same_stream_message(g, w)


def test_replay_of_one_source_into_remapped_odd_names(names, target):
    vhost, queue, exchange = "mapped ü/vh", "renamed ü/q 2", "ex renamed/ü"
    result = replay(
        "--archive",
        str(names.sink),
        *target_args(target),
        "--definitions",
        "--source",
        LONG,
        "--map-vhost",
        f"{VHOST}={vhost}",
        "--map-queue",
        f"{LONG}={queue}",
        "--map-exchange",
        f"{EXCHANGE}={exchange}",
    )
    assert result.returncode == 0, output(result)
    assert set(summary(result.stdout)) == {LONG}, output(result)
    management = Management(target)
    assert management.queue(vhost, LONG) is None, "the original name was restored as well"
    assert exchange in {x["name"] for x in management.exchanges(vhost)}
    got = drain_queue(vhost_uri(target, vhost), queue)
    assert [g.properties.message_id for g in got] == [m.message_id for m in names.sent[LONG]]
    for g, w in zip(got, names.sent[LONG], strict=True):
        same_message(g, w, target.version)
