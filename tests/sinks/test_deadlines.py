"""Every cloud sink gives up on a stalled endpoint within its deadlines, with a retryable error naming it.

The endpoint is a loopback listener of the test's own (tests/sinks/stalling.py) that accepts and never
answers: it reads and discards ("mute"), reads nothing so that an upload stops moving ("deaf"), or
answers a byte at a time, forever ("trickle"). Deadlines are shortened so that each case takes seconds;
the bound each test allows is what the deadlines and the SDK's own retries add up to, plus slack.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from protocol.loop import run
from sinks import Sink, SinkUnavailable
from sinks.deadlines import Deadlines
from tests.sinks.emulators_azure import ACCOUNT, ACCOUNT_KEY
from tests.sinks.emulators_s3 import use_test_credentials
from tests.sinks.stalling import StallingServer

MiB = 1024 * 1024
FAST = Deadlines(connect=1.0, stall=1.0, min_rate=16 * MiB)
SLACK = 3.0  # seconds for the event loop, threads and the SDKs' own bookkeeping


def payload(size: int) -> bytes:
    return random.Random(size).randbytes(size)


@pytest.fixture
def mute() -> Iterator[StallingServer]:
    with StallingServer("mute") as server:
        yield server


@pytest.fixture
def deaf() -> Iterator[StallingServer]:
    with StallingServer("deaf") as server:
        yield server


@pytest.fixture
def trickle() -> Iterator[StallingServer]:
    with StallingServer("trickle") as server:
        yield server


def fails_in_time(sink: Sink, call: Callable[[], Awaitable[object]], within: float) -> SinkUnavailable:
    """Run `call` on `sink` (closed after it); it must raise SinkUnavailable within `within` seconds."""

    async def attempt() -> float:
        began = time.monotonic()
        try:
            await call()
        finally:
            elapsed = time.monotonic() - began
            await sink.close()
        raise AssertionError(f"the call succeeded against a stalled endpoint after {elapsed:.1f}s")

    began = time.monotonic()
    with pytest.raises(SinkUnavailable) as caught:
        run(attempt())
    elapsed = time.monotonic() - began
    assert elapsed < within, f"took {elapsed:.1f}s, allowed {within:.1f}s: {caught.value}"
    assert caught.value.retryable
    assert "Traceback" not in str(caught.value)
    return caught.value


# -- S3


def s3_sink(server: StallingServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **options: object) -> Sink:
    from sinks.s3 import S3Sink

    use_test_credentials(monkeypatch, tmp_path)
    return S3Sink(f"s3://bucket/prefix?endpoint-url={server.endpoint}", max_attempts=1, deadlines=FAST, **options)


def test_s3_put_to_an_endpoint_that_never_answers_fails_within_its_deadline(mute, monkeypatch, tmp_path):
    sink = s3_sink(mute, monkeypatch, tmp_path)
    error = fails_in_time(sink, lambda: sink.put("seg/1", b"checkpoint"), FAST.connect + FAST.stall + SLACK)
    assert f"the S3 endpoint {mute.endpoint} stalled" in str(error)
    assert "'seg/1'" in str(error) and "writing" in str(error)
    assert "testing" not in str(error)  # the access key


def test_s3_put_sends_its_body_without_waiting_a_round_trip_for_100_continue(mute, monkeypatch, tmp_path):
    # An endpoint that never answers receives the whole body only if the client sent it with the
    # headers; with "Expect: 100-continue" it would get the headers and wait for a go-ahead.
    sink = s3_sink(mute, monkeypatch, tmp_path)
    body = payload(200_000)
    fails_in_time(sink, lambda: sink.put("seg/2", body), FAST.connect + FAST.stall + SLACK)
    assert mute.received > len(body)


def test_s3_get_from_an_endpoint_that_never_answers_fails_within_its_deadline(mute, monkeypatch, tmp_path):
    sink = s3_sink(mute, monkeypatch, tmp_path)
    error = fails_in_time(sink, lambda: sink.get("seg/1"), FAST.connect + FAST.stall + SLACK)
    assert f"the S3 endpoint {mute.endpoint} stalled" in str(error) and "reading" in str(error)


def test_s3_upload_to_an_endpoint_that_stops_reading_fails_when_it_stops_moving(deaf, monkeypatch, tmp_path):
    # 64 MiB in one request, whose total deadline (6 s) lies well beyond the progress deadline: only an
    # upload seen not to move ends it this soon (botocore asks for 100-continue, which never comes).
    sink = s3_sink(deaf, monkeypatch, tmp_path, multipart_threshold=128 * MiB)
    data = payload(64 * MiB)
    error = fails_in_time(sink, lambda: sink.put("seg/big", data), FAST.connect + FAST.stall + SLACK)
    assert f"the S3 endpoint {deaf.endpoint} stalled: " in str(error) and "upload" in str(error)


def test_s3_request_answered_a_byte_at_a_time_fails_at_its_total_deadline(trickle, monkeypatch, tmp_path):
    sink = s3_sink(trickle, monkeypatch, tmp_path)
    error = fails_in_time(sink, lambda: sink.head("seg/1"), FAST.connect + FAST.for_bytes(0) + SLACK)
    assert f"the S3 endpoint {trickle.endpoint} stalled: not done within" in str(error)
    assert trickle.received > 0  # it did take the request


def test_s3_default_deadlines_are_a_few_seconds_to_connect_and_bounded_progress():
    from sinks.s3 import S3Sink

    config = S3Sink("s3://bucket/prefix")._config
    assert config.connect_timeout == 5 and config.read_timeout == 15


# -- GCS

GCS_RETRYING = 4.0  # sinks.gcs.RETRY_SECONDS: the client retries a timed-out request while this lasts


def gcs_sink(server: StallingServer) -> Sink:
    pytest.importorskip("google.cloud.storage", reason="the GCS sink needs google-cloud-storage")
    from sinks.gcs import GCSSink

    return GCSSink.from_uri(f"gs://bucket/prefix?endpoint={server.endpoint}", deadlines=FAST)


def test_gcs_put_to_an_endpoint_that_never_answers_fails_within_its_deadline(mute):
    sink = gcs_sink(mute)
    error = fails_in_time(sink, lambda: sink.put("seg/1", b"checkpoint"), GCS_RETRYING + 2 * FAST.stall + SLACK)
    assert f"{mute.endpoint} stalled: no progress for" in str(error)
    assert "'seg/1'" in str(error) and "writing" in str(error)


def test_gcs_get_from_an_endpoint_that_never_answers_fails_within_its_deadline(mute):
    sink = gcs_sink(mute)
    error = fails_in_time(sink, lambda: sink.get("seg/1"), GCS_RETRYING + 2 * FAST.stall + SLACK)
    assert f"{mute.endpoint} stalled: no progress for {FAST.stall:g}s" in str(error) and "reading" in str(error)


def test_gcs_upload_to_an_endpoint_that_stops_reading_fails_within_its_deadline(deaf):
    sink = gcs_sink(deaf)
    data = payload(6 * MiB)  # one request (the client goes resumable above 8 MiB)
    bound = GCS_RETRYING + 2 * FAST.for_bytes(len(data)) + SLACK
    error = fails_in_time(sink, lambda: sink.put("seg/big", data), bound)
    assert f"{deaf.endpoint} stalled" in str(error)


# -- Azure

AZURE_RETRYING = 3 * 1.0 + 1.5 + 2.25 + 1.0  # sinks.azure: 3 attempts, waits of about 1.5 s and 2.25 s, jitter


def azure_sink(server: StallingServer, monkeypatch: pytest.MonkeyPatch) -> Sink:
    from sinks.azure import AzureBlobSink

    blob_endpoint = f"{server.endpoint}/{ACCOUNT}"
    monkeypatch.setenv(
        "WARREN_TEST_STALLED_AZURE",
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};BlobEndpoint={blob_endpoint};",
    )
    return AzureBlobSink.from_uri(
        "az://container/prefix?connection-string-env=WARREN_TEST_STALLED_AZURE", deadlines=FAST
    )


def test_azure_put_to_an_endpoint_that_never_answers_fails_within_its_deadline(mute, monkeypatch):
    sink = azure_sink(mute, monkeypatch)
    error = fails_in_time(sink, lambda: sink.put("seg/1", b"checkpoint"), AZURE_RETRYING * 2 + SLACK)
    assert f"{mute.endpoint}/{ACCOUNT} stalled" in str(error)
    assert "'seg/1'" in str(error) and "writing" in str(error)
    assert ACCOUNT_KEY not in str(error)


def test_azure_upload_to_an_endpoint_that_stops_reading_fails_when_it_stops_moving(deaf, monkeypatch):
    sink = azure_sink(deaf, monkeypatch)
    data = payload(7 * MiB)  # one request (the SDK goes to blocks above 8 MiB)
    error = fails_in_time(sink, lambda: sink.put("seg/big", data), AZURE_RETRYING * 2 + SLACK)
    assert f"{deaf.endpoint}/{ACCOUNT} stalled: the upload stopped moving at " in str(error)


def test_azure_request_answered_a_byte_at_a_time_fails_at_its_total_deadline(trickle, monkeypatch):
    sink = azure_sink(trickle, monkeypatch)
    error = fails_in_time(sink, lambda: sink.head("seg/1"), AZURE_RETRYING * 3 + SLACK)
    assert f"{trickle.endpoint}/{ACCOUNT} stalled: not done within" in str(error)
