"""`warren archive` when its storage fails without going away: a full disk, and an S3 endpoint that stalls.

What must hold, with a real private RabbitMQ node and the archiver as a subprocess of the CLI:

- a local sink on a small tmpfs fills up with incompressible messages: nothing more is acknowledged
  (the broker holds every message not archived), the log says "no space left on <path>", no temporary
  file is left in the archive, and once space is freed archiving resumes by itself until every message
  is archived, `warren verify` passes, and the archive holds exactly what was published;
- an S3 endpoint (moto behind a proxy of the test's own) stops answering: the archiver logs the stall
  within seconds, acknowledges nothing meanwhile, and resumes when the proxy forwards again.

Every wait polls with a deadline.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest

from bridge.harness.nodes import free_port
from bridge.harness.proxy import FaultProxy
from tests.integration.archiving import (
    ArchiverProcess,
    Outgoing,
    assert_verifies,
    health,
    publish,
    queue_counts,
    queue_source,
    read_archive,
    warren,
    write_config,
)
from tests.polling import wait_until
from tests.sinks.emulators_s3 import MotoServer, use_test_credentials

pytestmark = pytest.mark.slow

BODY = 64 * 1024


def waiting_on(archiver: ArchiverProcess, check: Callable[[], object], *, timeout: float, what: str) -> None:
    """`wait_until`, failing with the end of the archiver's log, which says what it was doing."""
    try:
        wait_until(check, timeout=timeout, what=what, every=0.2)
    except AssertionError as err:
        raise AssertionError(f"{err}; the archiver's log ends:\n{archiver.stderr()[-6000:]}") from None


def random_messages(count: int, queue: str) -> list[Outgoing]:
    """`count` messages of BODY random (incompressible) bytes, identified by message_id."""
    return [
        Outgoing("", queue, os.urandom(BODY), pika.BasicProperties(message_id=f"msg-{i:07d}", delivery_mode=2))
        for i in range(count)
    ]


def fresh_queue(node, queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(node.amqp_uri))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        channel.queue_purge(queue)
    finally:
        connection.close()


def assert_archive_holds_exactly(records: list, published: list[Outgoing]) -> None:
    got = [(r.properties.message_id, bytes(r.body)) for r in records]
    want = [(m.message_id, m.body) for m in published]
    assert len(got) == len(want), f"{len(got)} records archived, {len(want)} published"
    assert got == want, "the archive does not hold exactly what was published, in order"


# ---- a full disk --------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs of the test's own (it runs as root), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


def temporary_files(root: Path) -> list[Path]:
    return [path for path in root.rglob(".tmp-*") if path.is_file()]


def archived_ids(archive: Path, queue: str) -> set[str]:
    if not archive.exists():
        return set()
    return {r.properties.message_id for r in read_archive(archive, queue_source(queue))}


def test_a_full_disk_acknowledges_nothing_more_leaves_no_temporary_file_and_archiving_resumes_when_space_returns(
    broker, archivers, small_disk, tmp_path
):
    queue = "faults.full-disk"
    prefetch = 40  # segments of a quarter of it: 10 messages, 640 KiB
    fresh_queue(broker, queue)
    filler = small_disk / "filler"
    filler.write_bytes(os.urandom(10 * 1024 * 1024))  # leaves about 6 MiB for the archive
    archive = small_disk / "archive"
    config = write_config(
        tmp_path / "warren.toml",
        broker,
        archive,
        [{"src-queue": queue, "prefetch-count": prefetch}],
        segment_max_age=1,
    )
    archiver = archivers.start("--config", str(config))
    archiver.wait_for_log("msg=archiving", timeout=60)

    published = random_messages(160, queue)  # 10 MiB: more than fits
    publish(broker.amqp_uri, published)

    def full_and_holding() -> bool:
        assert archiver.running(), f"the archiver exited; its log:\n{archiver.stderr()}"
        ready, unacked = queue_counts(broker, queue)
        assert unacked <= prefetch, f"{unacked} unacknowledged, more than the prefetch of {prefetch}"
        archived = archived_ids(archive, queue)
        acknowledged = len(published) - ready - unacked
        # The broker acknowledges in order: the first `acknowledged` must all be archived, and every
        # message not archived is still in the broker (ready, or delivered and unacknowledged).
        missing = [m.message_id for m in published[:acknowledged] if m.message_id not in archived]
        assert not missing, f"acknowledged but not archived: {missing[:5]} ({len(missing)})"
        full = f"no space left on {archive}" in archiver.stderr()
        return full and 0 < acknowledged <= len(archived) < len(published)

    waiting_on(archiver, full_and_holding, timeout=90, what="the disk full and the broker holding the rest")
    # Failed writes leave nothing behind (a retry in progress may hold one for a moment).
    wait_until(lambda: not temporary_files(archive), timeout=30, what="no temporary files in the archive")
    log = archiver.stderr()
    assert "Traceback" not in log
    report = next(line for line in log.splitlines() if f"no space left on {archive}" in line)
    assert "free, the write needed" in report and "level=warning" in report, report

    filler.unlink()

    def drained() -> bool:
        assert archiver.running(), f"the archiver exited; its log:\n{archiver.stderr()}"
        return queue_counts(broker, queue) == (0, 0)

    waiting_on(archiver, drained, timeout=120, what="archiving to resume by itself once space returned")
    archiver.terminate()
    assert "sink writable again" in archiver.stderr()
    assert not temporary_files(archive)
    assert_verifies(archive)
    assert_archive_holds_exactly(read_archive(archive, queue_source(queue)), published)


# ---- an S3 endpoint that stalls -----------------------------------------------------------------


@pytest.fixture
def moto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    """A moto S3 server of this test's own, with test credentials in the environment the archiver inherits."""
    pytest.importorskip("moto.server", reason="the S3 emulator needs moto[server]")
    use_test_credentials(monkeypatch, tmp_path)
    server = MotoServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


def test_a_stalled_s3_endpoint_is_reported_within_seconds_nothing_is_acknowledged_and_archiving_resumes(
    broker, archivers, moto, tmp_path
):
    queue = "faults.stalled-s3"
    prefetch = 100
    metrics_port = free_port()
    fresh_queue(broker, queue)
    bucket = moto.create_bucket()
    with FaultProxy(("127.0.0.1", moto.port)) as proxy:
        through_proxy = f"s3://{bucket}/warren?endpoint-url={proxy.endpoint}&region=us-east-1"
        direct = f"s3://{bucket}/warren?endpoint-url={moto.endpoint}&region=us-east-1"
        config = write_config(
            tmp_path / "warren.toml",
            broker,
            through_proxy,  # type: ignore[arg-type]  # any sink URI: write_config writes str(sink)
            [{"src-queue": queue, "prefetch-count": prefetch}],
            segment_max_age=1,
            metrics_listen=f"127.0.0.1:{metrics_port}",
        )
        archiver = archivers.start("--config", str(config))
        archiver.wait_for_log("msg=archiving", timeout=60)
        wait_until(lambda: health(metrics_port, "/readyz")[0] == 200, timeout=30, what="ready")

        first = random_messages(40, queue)
        publish(broker.amqp_uri, first)
        wait_until(lambda: queue_counts(broker, queue) == (0, 0), timeout=60, what="the first batch archived")
        assert "sink write stalled" not in archiver.stderr()

        proxy.pause()
        stalled_at = time.monotonic()
        then = [
            Outgoing(m.exchange, m.routing_key, m.body, pika.BasicProperties(message_id=f"late-{i:07d}"))
            for i, m in enumerate(random_messages(40, queue))
        ]
        publish(broker.amqp_uri, then)

        def stall_reported() -> bool:
            ready, unacked = queue_counts(broker, queue)
            assert ready + unacked == len(then), f"acknowledged while S3 stalls: {ready=} {unacked=}"
            assert archiver.running(), f"the archiver exited; its log:\n{archiver.stderr()}"
            return "sink write stalled" in archiver.stderr()

        waiting_on(archiver, stall_reported, timeout=20, what="the stall reported")
        reported_after = time.monotonic() - stalled_at
        assert reported_after < 12, f"the stall was reported only after {reported_after:.1f}s"
        line = next(line for line in archiver.stderr().splitlines() if "sink write stalled" in line)
        for field in ("level=warning", through_proxy.split("?")[0], "key=", "operation=", "waited_s="):
            assert field in line, f"{field!r} missing from the stall report: {line}"
        # Still nothing acknowledged a while later.
        wait_until(
            lambda: archiver.stderr().count("sink write stalled") >= 2 or time.monotonic() - stalled_at > 25,
            timeout=30,
            what="the stall lasting",
        )
        assert sum(queue_counts(broker, queue)) == len(then)
        # What a load balancer or an alert sees meanwhile: not ready, saying why; alive all the same.
        status, text = health(metrics_port, "/readyz")
        assert status == 503 and "the sink is not taking writes" in text, (status, text)
        assert health(metrics_port, "/healthz")[0] == 200

        proxy.resume()
        waiting_on(archiver, lambda: queue_counts(broker, queue) == (0, 0), timeout=120, what="archiving to resume")
        assert health(metrics_port, "/readyz")[0] == 200
        log = archiver.terminate()
    assert "sink write completed" in log or "sink writable again" in log, log
    assert "Traceback" not in log
    result = warren("verify", direct)
    assert result.returncode == 0, f"warren verify exited {result.returncode}:\n{result.stdout}{result.stderr}"
    assert_archive_holds_exactly(read_archive(direct, queue_source(queue)), first + then)  # type: ignore[arg-type]
