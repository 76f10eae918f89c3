"""`warren replay --to-origin`: undo dead-lettering. Messages a consumer rejected and messages that
expired land in a dead-letter queue, which warren archives; the replay sends them back to the queue they
died in on a fresh broker, filtered by the reason they died for, with or without their death history.
pika publishes, rejects and reads."""

from __future__ import annotations

import secrets
from pathlib import Path

import pika

from tests.integration import test_replay
from tests.integration.archiving import Archivers, Witness, message_ids, queue_source, read_archive, write_config
from tests.integration.replaying import output, replay, summary, wait_archived
from tests.integration.test_replay import target_args
from tests.polling import wait_until

target = test_replay.target  # the replay tests' target node: one of that module's own, per version


def dead_letter(uri: str, work: str, dlq: str) -> None:
    """Four messages rejected by a consumer, two expired: all six in `dlq`, as RabbitMQ puts them there."""
    connection = pika.BlockingConnection(pika.URLParameters(uri))
    channel = connection.channel()
    channel.queue_declare(dlq, durable=True)
    channel.queue_declare(
        work, durable=True, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}
    )
    channel.confirm_delivery()
    for n in range(4):
        channel.basic_publish("", work, b"order %d" % n, pika.BasicProperties(message_id=f"m-{n}", delivery_mode=2))
    for _ in range(4):
        method, _, _ = channel.basic_get(work)
        channel.basic_reject(method.delivery_tag, requeue=False)
    for n in (4, 5):
        props = pika.BasicProperties(message_id=f"m-{n}", delivery_mode=2, expiration="1")
        channel.basic_publish("", work, b"order %d" % n, props)

    # The expired ones are dead-lettered as the queue looks at its head: a basic.get makes it look.
    def all_dead_lettered() -> bool:
        method, _, _ = channel.basic_get(work)
        if method is not None:  # not expired yet: back it goes, to expire there
            channel.basic_nack(method.delivery_tag, requeue=True)
            return False
        return channel.queue_declare(dlq, passive=True).method.message_count == 6

    wait_until(all_dead_lettered, timeout=10, what=f"all six messages dead-lettered into {dlq}", every=0.1)
    connection.close()


def archived_ids(sink: Path, queue: str) -> list[str | None]:
    return message_ids(read_archive(sink, queue_source(queue)))


def test_dead_lettered_messages_go_back_to_the_queue_they_died_in_by_reason(broker, target, tmp_path):
    work = f"work.{secrets.token_hex(3)}"
    dlq, sink = f"{work}.dlq", tmp_path / "archive"
    dead_letter(broker.amqp_uri, work, dlq)
    config = write_config(tmp_path / "warren.toml", broker, sink, [{"src-queue": dlq}], segment_max_age=0.5)
    with Archivers(tmp_path) as archivers:
        archiver = archivers.start("--config", str(config))
        wait_archived(sink, {dlq: 6})
        archiver.terminate()

    rejected = replay(
        "--archive", str(sink), *target_args(target), "--source", dlq, "--definitions",
        "--to-origin", "--death-reason", "rejected", "--strip-death",
    )  # fmt: skip
    assert rejected.returncode == 0, output(rejected)
    line = summary(rejected.stdout)[dlq].text
    assert f"sent back to {work!r}: 4" in line and "2 dead-lettered for other reasons" in line, line
    with Witness(target.amqp_uri) as witness:
        back = witness.fetch_all(work)
        assert witness.depth(dlq) == 0
    assert [p.message_id for p, _ in back] == ["m-0", "m-1", "m-2", "m-3"]
    assert [body for _, body in back] == [b"order %d" % n for n in range(4)]
    assert all(not (p.headers or {}) for p, _ in back), [p.headers for p, _ in back]  # no death history

    expired = replay(
        "--archive", str(sink), *target_args(target), "--source", dlq, "--to-origin", "--death-reason", "expired"
    )
    assert expired.returncode == 0, output(expired)
    with Witness(target.amqp_uri) as witness:
        back = witness.fetch_all(work)
    # In the order the dead-letter queue got them: the broker may expire m-5 first, while m-4 is out on
    # the set-up's basic.get.
    archived = [m for m in archived_ids(sink, dlq) if m in ("m-4", "m-5")]
    assert sorted(archived) == ["m-4", "m-5"]
    assert [p.message_id for p, _ in back] == archived
    assert all(p.headers["x-death"][0]["reason"] in ("expired", b"expired") for p, _ in back)  # history kept
    with Witness(broker.amqp_uri) as witness:
        witness.delete(work)
        witness.delete(dlq)
