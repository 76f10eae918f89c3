"""The metrics endpoint as Prometheus and a load balancer see it, over real loopback HTTP: a writer's
durable segments counted per source, sink requests counted and timed by outcome, /readyz false while no
source consumes or the sink refuses writes, and addresses that default to loopback."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.archive.record import Source, SourceKind
from bridge.archiver.ledger import LedgerNotes
from bridge.archiver.status import SourceStates
from bridge.archiver.writer import RollPolicy, SegmentWriter
from bridge.config import load_config
from bridge.errors import ConfigError
from bridge.harness.nodes import free_port
from bridge.metrics.archiver import ArchiverMetrics, liveness, readiness
from bridge.metrics.endpoint import Health, MetricsEndpoint
from bridge.metrics.listen import ListenAddress, parse_listen
from protocol.loop import run
from sinks import LocalSink, ObjectNotFound
from tests.polling import eventually
from tests.unit.test_archive_writer import FlakySink, msg

QUEUE = Source("/", SourceKind.QUEUE, "orders")
FAST_RETRIES = {"retry_base": 0.01, "retry_max": 0.01}


class Archived:
    """What the metrics watch of a source: its name, its writer and its gap-ledger notes."""

    def __init__(self, writer: SegmentWriter) -> None:
        self.writer = writer
        self.ledger = LedgerNotes(writer.sink, writer.prefix, writer.source)
        self.name = str(writer.source)
        self.archived = 0


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and labels, as Prometheus' own parser reads them."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("9419", ListenAddress("127.0.0.1", 9419)),
        ("127.0.0.1:9419", ListenAddress("127.0.0.1", 9419)),
        ("[::1]:9419", ListenAddress("::1", 9419)),
        ("0.0.0.0:9419", ListenAddress("0.0.0.0", 9419)),
    ],
)
def test_a_listen_address_is_loopback_unless_a_host_is_given(value, expected):
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["localhost:http", "127.0.0.1:70000", "127.0.0.1:"])
def test_a_bad_listen_address_is_a_configuration_error_naming_it(value):
    with pytest.raises(ConfigError, match="metrics-listen"):
        parse_listen(value)


def test_a_bad_metrics_listen_in_the_configuration_names_the_key_and_file(tmp_path):
    path = tmp_path / "warren.toml"
    path.write_text(
        '[broker]\nuri = "amqp://guest:guest@127.0.0.1:5672/"\n\n[archive]\nmetrics-listen = "here:port"\n\n'
        '[[source]]\nsrc-queue = "orders"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert "metrics-listen" in str(caught.value) and "warren.toml" in str(caught.value)


def test_durable_segments_and_sink_requests_are_counted_and_readiness_follows_the_sources(tmp_path: Path):
    async def scenario() -> None:
        metrics = ArchiverMetrics()
        sink = metrics.sinks.timed(LocalSink(tmp_path / "archive"))
        await sink.check()
        writer = SegmentWriter(sink, QUEUE, policy=RollPolicy(max_records=10), observer=metrics.for_source(str(QUEUE)))
        await writer.start()
        source = Archived(writer)
        states = SourceStates([source])
        metrics.watch([source], states)
        endpoint = MetricsEndpoint(
            ListenAddress("127.0.0.1", free_port()),
            metrics.registry,
            lambda: liveness(states),
            lambda: readiness([source], states),
        )
        await endpoint.start()
        try:
            status, text = await get(endpoint.port, "/readyz")
            assert (status, text.split(":")[0]) == (503, "not ok"), text
            assert "no source consuming" in text

            states.consuming(source.name)
            for n in range(25):
                writer.append_message(msg(n))
            await writer.flush()
            with pytest.raises(ObjectNotFound):
                await sink.get("no/such/object")

            status, text = await get(endpoint.port, "/readyz")
            assert status == 200, text
            status, text = await get(endpoint.port, "/metrics")
            assert status == 200
            found = samples(text)
            labels = (("source", str(QUEUE)),)
            assert found[("warren_archived_messages_total", labels)] == 25
            assert found[("warren_segments_committed_total", labels)] == 3  # 10 + 10 + 5
            assert found[("warren_ack_latency_seconds_count", labels)] == 3
            assert found[("warren_archived_bytes_total", labels)] == sum(
                p.stat().st_size for p in (tmp_path / "archive").rglob("*.wseg")
            )
            assert found[("warren_committed_sequence", labels)] == 25
            assert found[("warren_source_consuming", labels)] == 1
            url = sink.url
            puts = found[("warren_sink_requests_total", (("operation", "put"), ("outcome", "ok"), ("sink", url)))]
            assert puts >= 3  # the segments, and checkpoints beside them
            absent = (("operation", "get"), ("outcome", "absent"), ("sink", url))
            assert found[("warren_sink_requests_total", absent)] >= 1
            assert found[("warren_sink_request_seconds_count", (("operation", "put"), ("sink", url)))] == puts

            states.failing(source.name, ConnectionResetError("reset by peer"))
            status, text = await get(endpoint.port, "/readyz")
            assert status == 503 and "no source consuming" in text, text
            assert samples((await get(endpoint.port, "/metrics"))[1])[("warren_source_failures", labels)] == 1
            assert (await get(endpoint.port, "/healthz"))[0] == 200  # failing and retrying: alive
            states.stopped(source.name, RuntimeError("archive write failed"))
            status, text = await get(endpoint.port, "/healthz")
            assert status == 503 and "stopped for good" in text, text
        finally:
            await endpoint.stop()
            await writer.close()

    run(scenario())


def test_a_sink_refusing_writes_makes_the_archiver_unready_until_it_takes_them_again(tmp_path: Path):
    async def scenario() -> None:
        flaky = FlakySink(tmp_path / "archive")
        await flaky.check()
        writer = SegmentWriter(flaky, QUEUE, policy=RollPolicy(max_records=5), retry_base=0.2, retry_max=0.2)
        await writer.start()
        source = Archived(writer)
        states = SourceStates([source])
        states.consuming(source.name)
        try:
            assert readiness([source], states).ok
            flaky.failures = 10**9
            for n in range(5):
                writer.append_message(msg(n))
            await eventually(lambda: not readiness([source], states).ok, "unready while the sink refuses writes")
            health = readiness([source], states)
            assert "the sink is not taking writes" in health.detail and "injected fault" in health.detail
            flaky.failures = 0
            await writer.flush()
            assert readiness([source], states).ok
        finally:
            await writer.close()

    run(scenario())


def test_a_taken_port_is_a_configuration_error_naming_the_address():
    async def scenario() -> None:
        first = MetricsEndpoint(ListenAddress("127.0.0.1", free_port()), ArchiverMetrics().registry, _ok, _ok)
        await first.start()
        try:
            second = MetricsEndpoint(first.address, ArchiverMetrics().registry, _ok, _ok)
            with pytest.raises(ConfigError, match=f"metrics-listen 127.0.0.1:{first.port}: cannot listen there"):
                await second.start()
        finally:
            await first.stop()

    run(scenario())


def _ok() -> Health:
    return Health(True, "fine")
