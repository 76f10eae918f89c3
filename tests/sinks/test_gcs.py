"""What only the Google Cloud Storage sink promises: its URI, large uploads, a missing bucket, an
unreachable service, credentials kept out of errors. The contract suite covers the rest.

The fixtures (`gcs_emulator`, `gcs_sink`) come from tests/sinks/emulators_gcs.py through conftest.py.
"""

from __future__ import annotations

import http.server
import json
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("google.cloud.storage", reason="the GCS sink needs google-cloud-storage")

from google.api_core.exceptions import RequestRangeNotSatisfiable
from google.cloud.storage import Blob
from google.cloud.storage._media.requests import ResumableUpload

import sinks.gcs
from protocol.loop import run
from sinks import ObjectInfo, SinkConfigError, SinkError, SinkPermissionDenied, SinkUnavailable
from sinks.gcs import GCSSink
from tests.sinks.emulators_gcs import GCSEmulator

MiB = 1024 * 1024


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def operations(sink: GCSSink) -> dict[str, Callable[[], Awaitable[object]]]:
    """One call of every verb, by name."""

    async def listing() -> list[ObjectInfo]:
        return [info async for info in sink.list("")]

    return {
        "put": lambda: sink.put("seg/1", b"data"),
        "put_if_absent": lambda: sink.put("seg/1", b"data", if_absent=True),
        "get": lambda: sink.get("seg/1"),
        "get_range": lambda: sink.get_range("seg/1", -4, 4),
        "head": lambda: sink.head("seg/1"),
        "list": listing,
        "delete": lambda: sink.delete("seg/1"),
        "check": sink.check,
    }


VERBS = ["put", "put_if_absent", "get", "get_range", "head", "list", "delete", "check"]


# -- the URI


def test_uri_names_bucket_prefix_and_options():
    sink = GCSSink.from_uri("gs://my-bucket/archive/prod/?endpoint=http://127.0.0.1:4443/&project=my-project")
    assert (sink.bucket, sink.prefix, sink.url) == ("my-bucket", "archive/prod/", "gs://my-bucket/archive/prod")
    bare = GCSSink.from_uri("gs://my-bucket")
    assert (bare.prefix, bare.url) == ("", "gs://my-bucket")
    assert GCSSink.from_uri("gs://b.with.dots/a%20b").prefix == "a b/"


@pytest.mark.parametrize(
    ("uri", "complaint"),
    [
        ("gs://user:s3cr3t@bucket/prefix", "takes no credentials"),
        ("gs:///prefix", "bucket name must be"),
        ("gs://Bucket_Upper/p", "bucket name must be"),
        ("gs://ab/p", "bucket name must be"),
        ("gs://bucket/a//b", "empty"),
        ("gs://bucket//p", "relative"),
        ("gs://bucket/a/../b", "'..'"),
        ("gs://bucket/p?token=s3cr3t", "unknown option 'token'"),
        ("gs://bucket/p?project=a&project=s3cr3t", "given twice"),
        ("gs://bucket/p?endpoint=", "needs a value"),
        ("gs://bucket/p?endpoint=ftp://host", "http:// or https://"),
        ("gs://bucket/p?endpoint=http://admin:s3cr3t@127.0.0.1:1", "no user info"),
        ("gs://bucket/p#frag", "no #fragment"),
    ],
)
def test_unusable_uris_are_config_errors_without_secrets(uri: str, complaint: str):
    with pytest.raises(SinkConfigError, match=complaint) as caught:
        GCSSink.from_uri(uri)
    assert "s3cr3t" not in str(caught.value)
    assert not caught.value.retryable


def test_keys_live_under_the_prefix_and_listing_strips_it(gcs_sink: GCSSink, gcs_emulator: GCSEmulator):
    bucket = gcs_emulator.admin().bucket(gcs_sink.bucket)
    for name in ("outside", "some/prefixed", "some/prefix/"):  # the last is a console "folder" placeholder
        bucket.blob(name).upload_from_string(b"not ours")

    async def body() -> list[str]:
        await gcs_sink.put("a/b", b"1")
        return [info.key async for info in gcs_sink.list("")]

    assert run(body()) == ["a/b"]
    assert sorted(blob.name for blob in bucket.list_blobs()) == [
        "outside",
        "some/prefix/",
        "some/prefix/a/b",
        "some/prefixed",
    ]


def test_the_sink_starts_no_threads_beyond_its_own_pool(gcs_sink: GCSSink, monkeypatch: pytest.MonkeyPatch):
    # google-cloud-storage 3.x would start a bucket-metadata thread per bucket; the sink turns that off.
    started: list[str] = []
    original_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        started.append(thread.name)
        original_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)

    async def body() -> None:
        await gcs_sink.put("t", b"x")
        await gcs_sink.get("t")
        await gcs_sink.head("t")
        [info async for info in gcs_sink.list("")]

    run(body())
    assert started and all(name.startswith("warren-gcs") for name in started), started


# -- large objects


def test_a_20_MiB_object_round_trips_as_a_chunked_resumable_upload(gcs_sink: GCSSink, monkeypatch: pytest.MonkeyPatch):
    data = payload(20 * MiB)
    chunks: list[int] = []
    transmit = ResumableUpload.transmit_next_chunk

    def counting_transmit(upload: ResumableUpload, *args: object, **kwargs: object) -> object:
        chunks.append(upload.chunk_size)
        return transmit(upload, *args, **kwargs)

    monkeypatch.setattr(ResumableUpload, "transmit_next_chunk", counting_transmit)

    async def body() -> tuple[bytes, ObjectInfo | None, bytes]:
        await gcs_sink.put("big/segment", data, if_absent=True)
        return (
            await gcs_sink.get("big/segment"),
            await gcs_sink.head("big/segment"),
            await gcs_sink.get_range("big/segment", -64, 64),
        )

    stored, info, footer = run(body())
    assert stored == data
    assert info is not None and info.size == len(data)
    assert footer == data[-64:]
    assert chunks == [sinks.gcs.CHUNK_SIZE] * 2  # two requests: 16 MiB, then the last 4 MiB


def test_a_resumable_upload_that_does_not_match_its_crc32c_creates_no_object(
    gcs_sink: GCSSink, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(sinks.gcs, "_crc32c", lambda data: "AAAAAA==")  # as if the bytes changed after hashing

    with pytest.raises(SinkError) as caught:
        run(gcs_sink.put("big/corrupt", payload(9 * MiB)))
    assert "CRC32C" in str(caught.value)
    assert run(gcs_sink.head("big/corrupt")) is None


# -- ranges


def test_ranges_read_alike_whether_the_server_honours_suffix_ranges_or_not(
    gcs_sink: GCSSink, monkeypatch: pytest.MonkeyPatch
):
    data = payload(1000)

    async def reads() -> list[bytes]:
        return [
            await gcs_sink.get_range("r", -16, 16),
            await gcs_sink.get_range("r", -16, 4),
            await gcs_sink.get_range("r", -5000, 5000),
            await gcs_sink.get_range("r", 990, 100),
            await gcs_sink.get_range("r", 1000, 1),
            await gcs_sink.get_range("empty", -8, 8),
            await gcs_sink.get_range("empty", 0, 8),
        ]

    expected = [data[-16:], data[-16:-12], data, data[990:], b"", b"", b""]

    async def body() -> list[bytes]:
        await gcs_sink.put("r", data)
        await gcs_sink.put("empty", b"")
        return await reads()

    # gcp-storage-emulator ignores "bytes=-N" and sends the whole object, with 200.
    assert run(body()) == expected

    # GCS answers a suffix range with at most N bytes, and 416 for a range starting at or past the end.
    whole_object = Blob.download_as_bytes

    def as_gcs_answers(blob: Blob, *args: Any, start: int | None = None, end: int | None = None, **kwargs: Any):
        whole = whole_object(blob, *args, **kwargs)
        if start is not None and (start >= len(whole) or not whole):
            raise RequestRangeNotSatisfiable("416 Requested range not satisfiable")
        if start is not None and start < 0:
            return whole[start:]
        return whole if start is None else whole[start : None if end is None else end + 1]

    monkeypatch.setattr(Blob, "download_as_bytes", as_gcs_answers)
    assert run(reads()) == expected


# -- a missing bucket


@pytest.mark.parametrize("verb", VERBS)
def test_a_missing_bucket_is_a_config_error_naming_it(gcs_emulator: GCSEmulator, verb: str):
    sink = GCSSink.from_uri(f"gs://no-such-bucket-here/p?endpoint={gcs_emulator.endpoint}")
    try:
        with pytest.raises(SinkConfigError) as caught:
            run(operations(sink)[verb]())
    finally:
        run(sink.close())
    assert "bucket 'no-such-bucket-here' does not exist" in str(caught.value)
    assert not caught.value.retryable


# -- an unreachable service


@pytest.fixture
def stopped_emulator(gcs_emulator: GCSEmulator) -> Iterator[GCSEmulator]:
    try:
        yield gcs_emulator
    finally:
        gcs_emulator.start()  # for the tests after this one (it comes back empty)


@pytest.mark.parametrize("verb", VERBS)
def test_an_unreachable_endpoint_fails_retryably_within_seconds_naming_it(
    gcs_sink: GCSSink, stopped_emulator: GCSEmulator, verb: str
):
    run(gcs_sink.put("seg/1", b"data"))  # the client is made and has connected before
    stopped_emulator.stop()

    began = time.monotonic()
    with pytest.raises(SinkUnavailable) as caught:
        run(operations(gcs_sink)[verb]())
    elapsed = time.monotonic() - began

    assert caught.value.retryable
    assert elapsed < 10, f"took {elapsed:.1f}s"
    assert f"cannot reach {stopped_emulator.endpoint} (Connection refused)" in str(caught.value)
    assert "upload_id" not in str(caught.value) and "?" not in str(caught.value)


# -- credentials


def test_missing_credentials_are_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    sink = GCSSink.from_uri("gs://some-bucket/p")
    try:
        with pytest.raises(SinkConfigError, match="no Google Cloud credentials found") as caught:
            run(sink.put("k", b"x"))
    finally:
        run(sink.close())
    assert not caught.value.retryable


class _RefusingTokenService(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def token_service() -> Iterator[str]:
    """A token endpoint that refuses every grant, as Google's does for a revoked key."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _RefusingTokenService)
    thread = threading.Thread(target=server.serve_forever, name="refusing-token-service")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("outcome", ["refused", "unreachable"])
def test_service_account_key_material_never_reaches_errors(
    outcome: str, token_service: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    key_file = tmp_path / "service-account.json"
    key_file.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "warren-test",
                "private_key_id": "0123456789abcdef-key-id",
                "private_key": pem,
                "client_email": "archiver@warren-test.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": token_service if outcome == "refused" else "http://127.0.0.1:9/token",
            }
        )
    )
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    sink = GCSSink.from_uri("gs://some-bucket/p")
    try:
        with pytest.raises(SinkError) as caught:
            run(sink.put("k", b"x"))
    finally:
        run(sink.close())

    expected = SinkPermissionDenied if outcome == "refused" else SinkUnavailable
    assert type(caught.value) is expected
    message = str(caught.value)
    assert "PRIVATE KEY" not in message and "0123456789abcdef-key-id" not in message
    assert pem.splitlines()[1] not in message


def test_a_closed_sink_refuses_calls_and_closes_once(gcs_sink: GCSSink):
    run(gcs_sink.close())
    run(gcs_sink.close())
    with pytest.raises(SinkError, match="closed"):
        run(gcs_sink.get("k"))
