"""What RabbitMQ 4.0 changed under warren, on real nodes (issue 16), and the same on 3.10 where it applies.

- 3.x definitions with classic-mirroring policies restore into 4.0, the dropped keys said per policy;
  a refusal by the target's management API exits 7 with the API's reason, never "unreachable" (3);
- stream replay publishes each message's filter value, so filtered consumers of the restored stream get
  what they got from the original (4.0 only: 3.10 has no stream filtering);
- replay removes the source broker's `x-delivery-count` (quorum queues' redelivery count) unless
  `--keep-delivery-count`, and leaves every other header byte for byte as it was.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pika
import pytest
from rstream import AMQPMessage, Producer
from rstream._pyamqp.message import Properties

from bridge.archive.definitions import decode_definitions, encode_definitions
from bridge.harness.nodes import INSTALLS, LocalNode, free_port
from protocol.core.header_table import DELIVERY_COUNT, without_delivery_count
from tests.integration import test_replay
from tests.integration.archiving import (
    Archivers,
    Outgoing,
    Witness,
    definitions_objects,
    pika_properties,
    publish,
    queue_source,
    read_archive,
    rich_properties,
    simple_messages,
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
    replay,
    vhost_uri,
    wait_archived,
)
from tests.integration.test_replay import target_args

target = test_replay.target  # the replay tests' target node fixture: one of this module's own, per version

# ---- definitions with classic-mirroring policies -----------------------------------------------------

MIRRORED = "mirrored.orders"
HA_ALL = {"ha-mode": "all", "ha-sync-mode": "automatic", "max-length": 1000}
HA_TWO = {"ha-mode": "exactly", "ha-params": 2, "ha-promote-on-shutdown": "always"}
MIRRORING_GONE = "(classic mirroring is gone in RabbitMQ 4.0)"


@pytest.fixture(scope="module")
def mirrored_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An archive of a RabbitMQ 3.10 node whose definitions hold classic-mirroring policies, as a 3.x
    operator's do, and five messages of a queue one of them applies to."""
    work = tmp_path_factory.mktemp("mirrored")
    sink = work / "archive"
    with private_node(work / "source", INSTALLS["3.10"]) as source:
        management = Management(source)
        ha_all = {"pattern": r"^mirrored\.", "apply-to": "queues", "definition": HA_ALL}
        management.request("PUT", "/policies/%2F/ha-all", ha_all)
        ha_two = {"pattern": r"^two\.", "apply-to": "all", "priority": 1, "definition": HA_TWO}
        management.request("PUT", "/policies/%2F/ha-two", ha_two)
        declare(source.amqp_uri, lambda channel: channel.queue_declare(MIRRORED, durable=True))
        publish(source.amqp_uri, simple_messages(5, MIRRORED))
        with Archivers(work) as archivers:
            config = write_config(work / "warren.toml", source, sink, [{"src-queue": MIRRORED}], segment_max_age=1)
            archiver = archivers.start("--config", str(config))
            archiver.wait_for_log("definitions saved")
            wait_archived(sink, {MIRRORED: 5})
            archiver.terminate()
    return sink


def policies(node: LocalNode, vhost: str) -> dict[str, dict[str, Any]]:
    return {p["name"]: p["definition"] for p in Management(node).request("GET", f"/policies/{quote(vhost, safe='')}")}


def test_3_x_definitions_with_mirroring_policies_restore_saying_what_the_target_could_not_take(
    mirrored_archive, target
):
    vhost = Management(target).create_vhost("mirrored")
    result = replay("--archive", str(mirrored_archive), *target_args(target, vhost), "--definitions")
    assert result.returncode == 0, output(result)
    lines = result.stdout.splitlines()
    if target.version == "3.10":
        assert policies(target, vhost) == {"ha-all": HA_ALL, "ha-two": HA_TWO}
        assert not [line for line in lines if line.startswith("policy ")], output(result)
    else:
        assert policies(target, vhost) == {"ha-all": {"max-length": 1000}}
        assert f"policy 'ha-all' in vhost '{vhost}': dropped ha-mode, ha-sync-mode {MIRRORING_GONE}" in lines, output(
            result
        )
        dropped_whole = f"policy 'ha-two' in vhost '{vhost}': dropped whole, it held only "
        assert f"{dropped_whole}ha-mode, ha-params, ha-promote-on-shutdown {MIRRORING_GONE}" in lines, output(result)
    assert depth(vhost_uri(target, vhost), MIRRORED) == 5


def test_definitions_the_target_refuses_exit_7_with_the_management_apis_reason(mirrored_archive, target, tmp_path):
    archive = tmp_path / "archive"
    shutil.copytree(mirrored_archive, archive)
    for saved in definitions_objects(archive):
        definitions = decode_definitions(saved.read_bytes())
        bogus = {"vhost": "/", "name": "bogus", "pattern": "^b", "priority": 0, "definition": {"no-such-setting": 1}}
        definitions["policies"].append(bogus)
        saved.write_bytes(encode_definitions(definitions))
    vhost = Management(target).create_vhost("refused")
    result = replay("--archive", str(archive), *target_args(target, vhost), "--definitions")
    assert result.returncode == 7, output(result)
    assert "the target broker (RabbitMQ " in result.stderr and "refused the definitions: 400" in result.stderr
    assert "no-such-setting" in result.stderr and "not recognised policy settings" in result.stderr, output(result)
    assert "cannot reach" not in result.stderr and "Traceback" not in result.stderr, output(result)


def test_an_unreachable_management_api_exits_3_and_wrong_credentials_exit_6(mirrored_archive, target):
    args = ["--archive", str(mirrored_archive), "--target", target.amqp_uri, "--definitions"]
    unreachable = replay(*args, "--target-management-uri", f"http://guest:guest@127.0.0.1:{free_port()}")
    assert unreachable.returncode == 3, output(unreachable)
    assert "cannot reach" in unreachable.stderr, output(unreachable)
    wrong = replay(*args, "--target-management-uri", f"http://guest:wrong@127.0.0.1:{target.ports.management}")
    assert wrong.returncode == 6, output(wrong)
    assert "401" in wrong.stderr and "wrong" not in wrong.stderr, output(wrong)  # and no password in the message


# ---- stream filtering ---------------------------------------------------------------------------------

FILTERED = "filtered.events"
COLOURS = ("red", "blue", None)  # over AMQP 0-9-1, in the header x-stream-filter-value (None: no value)
REGIONS = ("emea", "amer")  # over the stream protocol, beside each message, from its application property


def colour(i: int) -> str | None:
    return COLOURS[i % len(COLOURS)]


def region(i: int) -> str:
    return REGIONS[i % len(REGIONS)]


def publish_filtered(node: LocalNode, count: int) -> None:
    """`count` messages over AMQP 0-9-1 with their filter value in the header, one chunk each (the
    publisher waits for each confirm), then `count` over the stream protocol with a filter value
    extractor that leaves the value where RabbitMQ does not look: an application property."""
    connection = pika.BlockingConnection(pika.URLParameters(node.amqp_uri))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for i in range(count):
            headers = {"n": i} | ({"x-stream-filter-value": colour(i)} if colour(i) else {})
            properties = pika.BasicProperties(message_id=f"amqp-{i}", headers=headers, delivery_mode=2)
            channel.basic_publish("", FILTERED, b"amqp %d" % i, properties)
    finally:
        connection.close()

    async def over_the_stream_protocol() -> None:
        async def filter_value(message: AMQPMessage) -> str:
            return message.application_properties[b"region"].decode()

        producer = Producer(
            "127.0.0.1", node.ports.stream, username="guest", password="guest", filter_value_extractor=filter_value
        )
        async with producer:
            for i in range(count):
                message = AMQPMessage(
                    body=b"stream %d" % i,
                    properties=Properties(message_id=f"stream-{i}"),
                    application_properties={b"region": region(i).encode()},
                )
                await producer.send_wait(FILTERED, message)

    asyncio.run(over_the_stream_protocol())


def filter_value_seen(properties: pika.spec.BasicProperties) -> str | None:
    """The value a filtering consumer checks each message against (the broker's filter is per chunk)."""
    headers = properties.headers or {}
    value = headers.get("x-stream-filter-value", headers.get("region"))
    return value.decode() if isinstance(value, bytes) else value


def read_filtered(uri: str, value: str, *, idle: float = 1.5) -> tuple[list[str], list[str]]:
    """What a consumer with `x-stream-filter: value` receives from the first offset (message ids), and
    what of that it keeps after checking each message's value, as a filtering consumer must."""
    connection = pika.BlockingConnection(pika.URLParameters(uri))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=500)
        received: list[str] = []
        kept: list[str] = []
        arguments = {"x-stream-offset": "first", "x-stream-filter": value}
        for method, properties, _body in channel.consume(FILTERED, arguments=arguments, inactivity_timeout=idle):
            if method is None:
                break
            received.append(properties.message_id)
            if filter_value_seen(properties) == value:
                kept.append(properties.message_id)
            channel.basic_ack(method.delivery_tag)
        channel.cancel()
        return received, kept
    finally:
        connection.close()


@pytest.mark.rabbitmq("4.0")
def test_stream_replay_keeps_filter_values_so_filtered_consumers_see_what_they_saw(broker, target, tmp_path):
    count = 12
    declare(
        broker.amqp_uri,
        lambda ch: (
            ch.queue_delete(FILTERED),
            ch.queue_declare(FILTERED, durable=True, arguments={"x-queue-type": "stream"}),
        ),
    )
    publish_filtered(broker, count)
    sink = tmp_path / "archive"
    with Archivers(tmp_path) as archivers:
        config = write_config(tmp_path / "warren.toml", broker, sink, [{"src-stream": FILTERED}], segment_max_age=1)
        archiver = archivers.start("--config", str(config))
        wait_archived(sink, {FILTERED: 2 * count})
        archiver.terminate()

    def restored(vhost: str, *options: str) -> str:
        Management(target).create_vhost(vhost)
        uri = vhost_uri(target, vhost)
        declare(uri, lambda ch: ch.queue_declare(FILTERED, durable=True, arguments={"x-queue-type": "stream"}))
        result = replay("--archive", str(sink), *target_args(target, vhost), "--source", FILTERED, *options)
        assert result.returncode == 0, output(result)
        return uri

    with_regions = restored("filtered", "--stream-filter-from", "application-properties.region")
    for value in (*COLOURS[:2], *REGIONS):
        on_source = read_filtered(broker.amqp_uri, value)
        received, kept = read_filtered(with_regions, value)
        assert set(kept) <= set(received)
        assert kept == on_source[1], f"{value}: the target's filtered consumer differs from the source's"
        want = [f"amqp-{i}" for i in range(count) if colour(i) == value]
        want += [f"stream-{i}" for i in range(count) if value in REGIONS and region(i) == value]
        assert kept == want, value
    assert read_filtered(with_regions, "purple") == ([], []), "chunks without the value reached the consumer"

    annotation_only = restored("filtered-annotation-only")
    assert read_filtered(annotation_only, "red")[1] == [f"amqp-{i}" for i in range(count) if colour(i) == "red"]
    # Without --stream-filter-from, a stream-protocol publisher's values are not in the archive to restore.
    assert read_filtered(annotation_only, "emea") == ([], [])


# ---- the source broker's delivery count ---------------------------------------------------------------

REDELIVERED = "redelivered.quorum"


def test_replay_removes_the_source_brokers_delivery_count_unless_asked_to_keep_it(broker, target, tmp_path):
    declare(
        broker.amqp_uri,
        lambda ch: (
            ch.queue_delete(REDELIVERED),
            ch.queue_declare(REDELIVERED, durable=True, arguments={"x-queue-type": "quorum"}),
        ),
    )
    bare = Outgoing("", REDELIVERED, b"no headers at all", pika.BasicProperties(message_id="bare", delivery_mode=2))
    sent = [Outgoing("", REDELIVERED, b"rich %d" % i, rich_properties(i)) for i in range(4)]
    publish(broker.amqp_uri, [*sent[:2], bare])
    with Witness(broker.amqp_uri) as witness:  # nack with requeue: each time a delivery the queue counts
        for _ in range(3):
            witness.fetch_all(REDELIVERED, ack=False)
        publish(broker.amqp_uri, sent[2:])
        witness.fetch_all(REDELIVERED, ack=False)
    sent.append(bare)
    sink = tmp_path / "archive"
    with Archivers(tmp_path) as archivers:
        config = write_config(tmp_path / "warren.toml", broker, sink, [{"src-queue": REDELIVERED}], segment_max_age=1)
        archiver = archivers.start("--config", str(config))
        wait_archived(sink, {REDELIVERED: len(sent)})
        archiver.terminate()
    archived = {r.properties.message_id: r for r in read_archive(sink, queue_source(REDELIVERED))}
    counts = {message_id: (r.properties.headers or {}).get(DELIVERY_COUNT) for message_id, r in archived.items()}
    # What the archiver was delivered: the count of the deliveries before it (4.0 and 3.10 alike).
    assert counts == {"msg-0000000": 4, "msg-0000001": 4, "bare": 4, "msg-0000002": 1, "msg-0000003": 1}, counts

    def restored(vhost: str, *options: str) -> dict[str, Received]:
        # A classic queue: a quorum queue would add the target's own count on delivery (3.10: from 0).
        Management(target).create_vhost(vhost)
        uri = vhost_uri(target, vhost)
        declare(uri, lambda ch: ch.queue_declare(REDELIVERED, durable=True))
        result = replay("--archive", str(sink), *target_args(target, vhost), "--source", REDELIVERED, *options)
        assert result.returncode == 0, output(result)
        got = {g.properties.message_id: g for g in drain_queue(uri, REDELIVERED)}
        assert set(got) == set(counts)
        return got

    published = {m.message_id: m for m in sent}
    for message_id, got in restored("delivery-count-removed").items():
        assert DELIVERY_COUNT not in (got.properties.headers or {}), message_id
        assert got.body == published[message_id].body
        # Everything else as archived, byte for byte (re-encoded by pika on both sides) ...
        without = pika_properties(without_delivery_count(archived[message_id].raw_properties))
        assert got.raw_properties == b"".join(without.encode()), message_id
        # ... and as published: the broker sorts a table it adds a header to, but keeps every value.
        assert got.properties.headers == published[message_id].properties.headers, message_id

    for message_id, got in restored("delivery-count-kept", "--keep-delivery-count").items():
        assert got.raw_properties == b"".join(pika_properties(archived[message_id].raw_properties).encode()), message_id
        headers = dict(got.properties.headers)
        assert headers.pop(DELIVERY_COUNT) == counts[message_id], message_id
        assert headers == (published[message_id].properties.headers or {}), message_id
