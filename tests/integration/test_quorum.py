"""`warren archive` onto three cloud sinks with `write-quorum = 2`, through sink outages.

The sinks are the three storage emulators on loopback (moto for S3, gcp-storage-emulator for GCS,
Azurite for Azure Blob), the broker is the session's private node, the archiver runs as a subprocess
of the CLI, and pika publishes with confirms in a steady flow. What must hold:

- at every moment, each message the archiver has acknowledged (gone from the queue) is on at least two
  sinks, read back with warren's own reader, also while one sink is down;
- a sink that was down (Azurite, on disk, so that it comes back with what it held) is caught up from
  the others until `warren ls` counts the same records on all three; `warren verify` passes on each,
  and `warren replay` from each one restores the same messages in the same order;
- with two of three sinks down nothing is acknowledged (the broker keeps every message, at most the
  prefetch window handed to the archiver), and archiving resumes by itself when one sink comes back.

Every wait polls with a deadline; the publisher paces itself, which is the only timed sleep.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pika
import pika.exceptions
import pytest

from bridge.archive.reader import list_segments, read_records
from bridge.harness.nodes import LocalNode, free_port
from protocol.loop import run
from sinks import open_sink
from tests.integration.archiving import (
    ArchiverProcess,
    Outgoing,
    publish,
    queue_counts,
    queue_source,
    simple_messages,
    warren,
)
from tests.integration.replaying import declare, drain_queue
from tests.polling import wait_until
from tests.sinks.emulators_azure import Azurite, find_azurite
from tests.sinks.emulators_gcs import GCSEmulator, _emulator_executable
from tests.sinks.emulators_s3 import MotoServer, use_test_credentials

pytestmark = pytest.mark.slow

PREFIX = "warren"
RATE = 300  # messages per second from the steady publisher


# ---- the three emulators, for this module -------------------------------------------------------


@dataclass
class Emulators:
    s3: MotoServer
    gcs: GCSEmulator
    azurite: Azurite

    def ensure_running(self) -> None:
        """Start again whatever a test stopped (and failed before restarting)."""
        if not self.gcs.running:
            self.gcs.start()
        if not self.azurite.running:
            self.azurite.stop()  # forget a process that died by itself
            self.azurite.start()

    def new_sinks(self) -> dict[str, str]:
        """A fresh bucket or container on each emulator; the sink URIs by backend, in mirror order."""
        return {
            "s3": f"s3://{self.s3.create_bucket()}/{PREFIX}?endpoint-url={self.s3.endpoint}",
            "gs": f"gs://{self.gcs.create_bucket()}/{PREFIX}?endpoint={self.gcs.endpoint}",
            "az": f"az://{self.azurite.create_container()}/{PREFIX}",
        }


@pytest.fixture(scope="module")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulators]:
    """moto (in memory), gcp-storage-emulator and Azurite (both on disk, so they survive a restart),
    with the credentials the archiver subprocesses and warren's reader in this process find in the
    environment, as an operator would set them."""
    pytest.importorskip("moto.server", reason="the S3 emulator needs moto[server]")
    pytest.importorskip("aiobotocore", reason="the S3 sink needs aiobotocore")
    pytest.importorskip("google.cloud.storage", reason="the GCS sink needs google-cloud-storage")
    pytest.importorskip("azure.storage.blob", reason="the Azure sink needs azure-storage-blob")
    gcs_executable = _emulator_executable()
    if gcs_executable is None:
        pytest.skip("gcp-storage-emulator is not installed (pip install gcp-storage-emulator)")
    root = tmp_path_factory.mktemp("quorum-emulators")
    started: list[MotoServer | GCSEmulator | Azurite] = []
    with pytest.MonkeyPatch.context() as env:
        use_test_credentials(env, root)
        for name in ("AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT", "STORAGE_EMULATOR_HOST"):
            env.delenv(name, raising=False)
        try:
            s3 = MotoServer(root).start()
            started.append(s3)
            gcs = GCSEmulator(gcs_executable, free_port(), root / "gcs.log", data_dir=root / "gcs")
            started.append(gcs)
            gcs.start()
            (root / "azurite").mkdir()
            azurite = Azurite(find_azurite(), root / "azurite", persistent=True)
            started.append(azurite)
            azurite.start()
            env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
            yield Emulators(s3, gcs, azurite)
        finally:
            for emulator in reversed(started):
                emulator.stop()


@pytest.fixture
def sinks(emulators: Emulators) -> Iterator[dict[str, str]]:
    emulators.ensure_running()
    try:
        yield emulators.new_sinks()
    finally:
        emulators.ensure_running()  # the next test finds all three up


# ---- configuration, publishing, reading back ---------------------------------------------------


def mirror_config(path: Path, node: LocalNode, sink_uris: list[str], queue: str, **source: object) -> Path:
    """`warren archive --config` onto the sinks with write-quorum 2 and segments rolled every second."""
    s = json.dumps  # a JSON string is a TOML basic string
    lines = [
        "[broker]",
        f"uri = {s(node.amqp_uri)}",
        f"management-uri = {s(node.management_uri)}",
        "",
        "[archive]",
        f"sinks = [{', '.join(s(u) for u in sink_uris)}]",
        "write-quorum = 2",
        "segment-max-age = 1",
        "",
        "[[source]]",
        f"src-queue = {s(queue)}",
        *(f"{key} = {s(value)}" for key, value in source.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def fresh_queue(node: LocalNode, queue: str) -> None:
    declare(node.amqp_uri, lambda ch: (ch.queue_delete(queue), ch.queue_declare(queue, durable=True)))


def message(queue: str, i: int) -> Outgoing:
    return simple_messages(1, queue, start=i)[0]


class SteadyPublisher(threading.Thread):
    """Publishes msg-0000000, msg-0000001, ... to a queue at `rate` per second, each confirmed before the
    next (pika's BlockingConnection), until `stop()`. `confirmed` only grows: messages [0, confirmed)
    are in the broker."""

    def __init__(self, uri: str, queue: str, rate: float) -> None:
        super().__init__(name=f"publish {queue}", daemon=True)
        self.uri, self.queue, self.rate = uri, queue, rate
        self.confirmed = 0
        self.error: BaseException | None = None
        self._stopping = threading.Event()

    def run(self) -> None:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(self.uri))
            channel = connection.channel()
            channel.confirm_delivery()
            started = time.monotonic()
            while not self._stopping.is_set():
                if self.confirmed >= (time.monotonic() - started) * self.rate:
                    self._stopping.wait(0.002)  # pacing, not waiting for anything
                    continue
                m = message(self.queue, self.confirmed)
                channel.basic_publish(m.exchange, m.routing_key, m.body, m.properties, mandatory=True)
                self.confirmed += 1
            connection.close()
        except BaseException as err:
            self.error = err

    def stop(self) -> int:
        """Stop publishing; the number of messages confirmed, all of them."""
        self._stopping.set()
        self.join(30)
        assert not self.is_alive(), "the publisher did not stop"
        assert self.error is None, f"publishing failed after {self.confirmed} confirms: {self.error!r}"
        return self.confirmed


@dataclass
class ArchiveWatch:
    """The message ids each sink holds of one queue, in sequence order, read with warren's reader
    (`bridge.archive.reader` over `sinks.open_sink`). Segments are immutable, so each is read once."""

    uris: dict[str, str]
    queue: str
    _segments: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def message_ids(self, name: str) -> list[str]:
        source = queue_source(self.queue)
        known = self._segments.setdefault(name, {})

        async def main() -> list[str]:
            async with open_sink(self.uris[name]) as sink:
                ids: list[str] = []
                for seg in await list_segments(sink, source=source):
                    if seg.key not in known:
                        known[seg.key] = [r.properties.message_id async for r in read_records(sink, seg)]
                    ids += known[seg.key]
                return ids

        return run(main())


def acknowledged(node: LocalNode, queue: str, confirmed: int) -> int:
    """How many of the first messages the archiver has surely acknowledged: of the `confirmed` ones (counted
    before asking the queue), those no longer in it, ready or unacknowledged. The queue hands them out in
    order and the archiver acknowledges in order, so they are a prefix."""
    ready, unacked = queue_counts(node, queue)
    return max(0, confirmed - ready - unacked)


def assert_on_quorum(watch: ArchiveWatch, up: list[str], count: int, note: str) -> None:
    """msg-0 .. msg-(count-1) are each on at least two of the sinks that are up."""
    held = {name: set(watch.message_ids(name)) for name in up}
    short = [f"msg-{i:07d}" for i in range(count) if sum(f"msg-{i:07d}" in ids for ids in held.values()) < 2]
    counts = {name: len(ids) for name, ids in held.items()}
    assert not short, f"{len(short)} acknowledged messages on fewer than 2 sinks ({note}), e.g. {short[:5]}; {counts}"


def ls_records(uri: str, queue: str) -> int:
    """Records of `queue` as `warren ls --json` reports them (-1 if it fails)."""
    result = warren("ls", uri, "--json", timeout=60)
    if result.returncode != 0:
        return -1
    return sum(int(row["records"]) for row in json.loads(result.stdout) if row["source"] == queue)


def watch_quorum_while(
    archiver: ArchiverProcess,
    publisher: SteadyPublisher,
    node: LocalNode,
    queue: str,
    watch: ArchiveWatch,
    up: list[str],
    *,
    until: int,
    note: str,
    timeout: float = 60,
) -> int:
    """Check the quorum again and again, at least three times, until `until` messages are acknowledged."""
    checks = 0
    deadline = time.monotonic() + timeout
    while True:
        assert archiver.running(), f"the archiver exited ({note}); its log:\n{archiver.stderr()}"
        assert publisher.error is None, f"publishing failed ({note}): {publisher.error!r}"
        acked = acknowledged(node, queue, publisher.confirmed)
        assert_on_quorum(watch, up, acked, note)
        checks += 1
        if checks >= 3 and acked >= until:
            return acked
        assert time.monotonic() < deadline, f"only {acked} of {until} messages acknowledged after {timeout}s ({note})"


# ---- the tests -----------------------------------------------------------------------------------


def test_one_sink_down_and_back_archive_stays_on_quorum_and_the_sink_catches_up(
    broker, fresh_broker, emulators, sinks, archivers, tmp_path
):
    queue = "quorum.one-down"
    fresh_queue(broker, queue)
    uris = list(sinks.values())
    watch = ArchiveWatch(sinks, queue)
    config = mirror_config(tmp_path / "warren.toml", broker, uris, queue)
    archiver = archivers.start("--config", str(config))
    archiver.wait_for_log("msg=archiving", timeout=60)
    publisher = SteadyPublisher(broker.amqp_uri, queue, RATE)
    publisher.start()
    try:
        before = watch_quorum_while(
            archiver, publisher, broker, queue, watch, ["s3", "gs", "az"], until=RATE, note="all three up"
        )

        emulators.azurite.stop()
        during = watch_quorum_while(
            archiver, publisher, broker, queue, watch, ["s3", "gs"], until=before + 4 * RATE, note="Azurite down"
        )
        archiver.wait_for_log("sink fell behind")

        emulators.azurite.start()
        watch_quorum_while(
            archiver, publisher, broker, queue, watch, ["s3", "gs", "az"], until=during + RATE, note="Azurite back"
        )
    finally:
        total = publisher.stop()
    wait_until(lambda: queue_counts(broker, queue) == (0, 0), timeout=30, what=f"{queue} drained by the archiver")
    assert_on_quorum(watch, ["s3", "gs", "az"], total, "publishing over")

    def same_counts() -> dict[str, int] | None:
        counts = {name: ls_records(uri, queue) for name, uri in sinks.items()}
        return counts if set(counts.values()) == {total} else None

    # The catch-up retries with capped backoff (up to 30 s between tries), so allow for one long pause.
    wait_until(same_counts, timeout=90, what=f"warren ls to count {total} records on every sink", every=0.5)
    log = archiver.terminate()
    assert "sink caught up" in log, log

    want = [message(queue, i) for i in range(total)]
    for name, uri in sinks.items():
        result = warren("verify", uri)
        assert result.returncode == 0, f"warren verify {name}: exit {result.returncode}\n{result.stdout}{result.stderr}"
        assert watch.message_ids(name) == [m.message_id for m in want], f"{name} holds other messages"

    target = fresh_broker()
    for name, uri in sinks.items():
        restored = f"{queue}.from-{name}"
        declare(target.amqp_uri, lambda ch, q=restored: ch.queue_declare(q, durable=True))
        result = warren(
            "replay", "--archive", uri, "--target", target.amqp_uri, "--map-queue", f"{queue}={restored}", timeout=180
        )
        assert result.returncode == 0, f"warren replay from {name}: exit {result.returncode}\n{result.stdout}"
        got = drain_queue(target.amqp_uri, restored)
        assert [g.properties.message_id for g in got] == [m.message_id for m in want], f"replayed from {name}"
        assert [g.body for g in got] == [m.body for m in want], f"bodies replayed from {name}"


def test_two_sinks_down_nothing_is_acknowledged_until_one_is_back(broker, emulators, sinks, archivers, tmp_path):
    queue = "quorum.two-down"
    prefetch = 100
    fresh_queue(broker, queue)
    watch = ArchiveWatch(sinks, queue)
    config = mirror_config(
        tmp_path / "warren.toml", broker, list(sinks.values()), queue, **{"prefetch-count": prefetch}
    )
    archiver = archivers.start("--config", str(config))
    archiver.wait_for_log("msg=archiving", timeout=60)

    first, then = 200, 600
    publish(broker.amqp_uri, simple_messages(first, queue))
    wait_until(lambda: queue_counts(broker, queue) == (0, 0), timeout=30, what=f"the first {first} archived")
    assert_on_quorum(watch, ["s3", "gs", "az"], first, "all three up")

    emulators.gcs.stop()
    emulators.azurite.stop()
    publish(broker.amqp_uri, simple_messages(then, queue, start=first))

    def window_held_and_quorum_refused() -> bool:
        ready, unacked = queue_counts(broker, queue)
        assert ready + unacked == then, f"messages acknowledged with one sink of three up: {ready=} {unacked=}"
        assert unacked <= prefetch, f"{unacked} unacknowledged, more than the prefetch of {prefetch}"
        assert archiver.running(), f"the archiver exited; its log:\n{archiver.stderr()}"
        return unacked == prefetch and archiver.stderr().count("write-quorum 2 not met") >= 2

    wait_until(window_held_and_quorum_refused, timeout=60, what="the window held while the quorum is refused")
    assert queue_counts(broker, queue) == (then - prefetch, prefetch)

    emulators.azurite.start()

    def drained() -> bool:
        ready, unacked = queue_counts(broker, queue)
        assert ready + unacked <= then and unacked <= prefetch, (ready, unacked)
        return ready + unacked == 0

    wait_until(drained, timeout=90, what="archiving to resume with two sinks of three up", every=0.2)
    archiver.terminate()
    want = [f"msg-{i:07d}" for i in range(first + then)]
    for name in ("s3", "az"):
        assert watch.message_ids(name) == want, f"{name} does not hold every message once, in order"


def test_an_azure_sink_does_not_log_every_http_request_at_the_default_level(emulators, sinks):
    result = warren("ls", sinks["az"])
    assert result.returncode == 0, result.stderr
    assert "http_logging_policy" not in result.stderr, result.stderr[:2000]
