"""What only the S3 sink promises: multipart uploads, URIs, error mapping, credentials kept out of sight,
and an emulator that goes away. The shared contract runs against S3 through conftest's `sink`."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import random
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore import exceptions as boto

from protocol.loop import run
from sinks import (
    InvalidKey,
    ObjectExists,
    ObjectNotFound,
    SinkConfigError,
    SinkError,
    SinkPermissionDenied,
    SinkUnavailable,
    open_sink,
)
from sinks.s3 import MIN_PART_SIZE, S3Location, S3Sink
from tests.sinks.emulators_s3 import MotoServer, sink_uri, use_test_credentials

# `s3_emulator` (one moto server for the session) and `s3_sink` (a fresh bucket) come from conftest,
# which imports them from emulators_s3 for the contract suite.

MiB = 1024 * 1024
SECRET = "wJalrXUtnFEMI-never-shown"  # a secret key distinctive enough to search every message for
ACCESS_KEY = "AKIAWARRENNEVERSHOWN"


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def private_emulator(tmp_path: Path) -> Iterator[MotoServer]:
    """A moto server of this test alone, which it may stop and start."""
    server = MotoServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


def distinctive_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_test_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)


def assert_no_secrets(text: str) -> None:
    assert SECRET not in text and ACCESS_KEY not in text


# -- multipart


def small_parts_sink(s3_sink: S3Sink) -> S3Sink:
    """Another sink on the same bucket and prefix, uploading anything over 5 MiB in 5 MiB parts."""
    return S3Sink(s3_sink.location.url, multipart_threshold=5 * MiB, part_size=MIN_PART_SIZE)


def stored(emulator: MotoServer, sink: S3Sink, key: str) -> dict[str, Any]:
    head: dict[str, Any] = emulator.s3().head_object(
        Bucket=sink.location.bucket, Key=sink.location.prefix + key, ChecksumMode="ENABLED"
    )
    return head


def unfinished_uploads(emulator: MotoServer, sink: S3Sink) -> list[Any]:
    return list(emulator.s3().list_multipart_uploads(Bucket=sink.location.bucket).get("Uploads", []))


def test_a_multipart_put_of_12_mib_round_trips_with_a_crc32_per_part(s3_emulator: MotoServer, s3_sink: S3Sink):
    sink = small_parts_sink(s3_sink)
    data = payload(12 * MiB)

    async def body() -> tuple[bytes, bytes, Any]:
        try:
            await sink.put("segments/big", data)
            return (
                await sink.get("segments/big"),
                await sink.get_range("segments/big", -16, 16),
                await sink.head("segments/big"),
            )
        finally:
            await sink.close()

    whole, footer, info = run(body())
    assert whole == data and footer == data[-16:]
    assert info is not None and info.size == len(data)
    head = stored(s3_emulator, sink, "segments/big")
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 2 MiB
    assert head["ChecksumCRC32"]  # moto keeps a CRC32 of the whole; S3 may keep one of the parts' CRC32s
    assert unfinished_uploads(s3_emulator, sink) == []


def test_a_multipart_conditional_create_refuses_an_existing_key_and_keeps_it(s3_emulator: MotoServer, s3_sink: S3Sink):
    sink = small_parts_sink(s3_sink)
    original, other = payload(12 * MiB, seed=1), payload(12 * MiB, seed=2)

    async def body() -> bytes:
        try:
            await sink.put("segments/big", original, if_absent=True)
            with pytest.raises(ObjectExists) as caught:
                await sink.put("segments/big", other, if_absent=True)
            assert caught.value.key == "segments/big" and not caught.value.retryable
            return await sink.get("segments/big")
        finally:
            await sink.close()

    assert run(body()) == original
    assert unfinished_uploads(s3_emulator, sink) == []


def test_if_none_match_on_completion_decides_a_multipart_race(
    s3_emulator: MotoServer, s3_sink: S3Sink, monkeypatch: pytest.MonkeyPatch
):
    """The head before uploading only saves work: an object that lands between it and the completion
    (here: a head that looks too early) still makes the conditional create fail, and the upload is
    aborted."""
    sink = small_parts_sink(s3_sink)

    async def nothing_there(key: str) -> None:
        return None

    monkeypatch.setattr(sink, "head", nothing_there)

    async def body() -> bytes:
        try:
            await s3_sink.put("segments/big", b"written meanwhile")
            with pytest.raises(ObjectExists):
                await sink.put("segments/big", payload(12 * MiB), if_absent=True)
            return await s3_sink.get("segments/big")
        finally:
            await sink.close()

    assert run(body()) == b"written meanwhile"
    assert unfinished_uploads(s3_emulator, sink) == []


def test_a_failed_part_aborts_the_multipart_upload(s3_emulator: MotoServer, s3_sink: S3Sink):
    sink = small_parts_sink(s3_sink)

    async def body() -> None:
        client = await sink._client()
        upload_part = client.upload_part

        async def failing_upload_part(**request: Any) -> Any:
            if request["PartNumber"] == 2:
                raise boto.ClientError({"Error": {"Code": "InternalError", "Message": "injected"}}, "UploadPart")
            return await upload_part(**request)

        client.upload_part = failing_upload_part
        try:
            with pytest.raises(SinkUnavailable, match="InternalError"):
                await sink.put("segments/big", payload(12 * MiB))
            assert await sink.head("segments/big") is None
        finally:
            await sink.close()

    run(body())
    assert unfinished_uploads(s3_emulator, sink) == []


def test_single_puts_carry_a_crc32_the_store_keeps(s3_emulator: MotoServer, s3_sink: S3Sink):
    data = b"0123456789"
    run(s3_sink.put("small", data))
    crc32 = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    assert stored(s3_emulator, s3_sink, "small")["ChecksumCRC32"] == crc32


# -- keys and prefix


def test_keys_live_under_the_uri_prefix_and_list_sees_only_that_prefix(s3_emulator: MotoServer, s3_sink: S3Sink):
    bucket = s3_sink.location.bucket
    s3 = s3_emulator.s3()
    for foreign in ("outside", "some/prefixed", "some/prefix/", "some/prefix/a//b", "some/prefix/dir/"):
        s3.put_object(Bucket=bucket, Key=foreign, Body=b"not ours")

    async def body() -> list[str]:
        await s3_sink.put("2024/seg-1", b"x")
        return [info.key async for info in s3_sink.list("")]

    # Folder markers and 'a//b' are objects no verb could address, so they are not listed.
    assert run(body()) == ["2024/seg-1"]
    assert s3.get_object(Bucket=bucket, Key="some/prefix/2024/seg-1")["Body"].read() == b"x"


def test_a_sink_without_prefix_uses_the_whole_bucket(s3_emulator: MotoServer, s3_sink: S3Sink):
    whole = S3Sink(f"s3://{s3_sink.location.bucket}?endpoint-url={s3_emulator.endpoint}")

    async def body() -> list[str]:
        try:
            await s3_sink.put("k", b"x")
            return [info.key async for info in whole.list("some/")]
        finally:
            await whole.close()

    assert run(body()) == ["some/prefix/k"]


@pytest.mark.parametrize(
    ("uri", "location"),
    [
        ("s3://bucket", ("bucket", "", None, None)),
        ("s3://bucket/", ("bucket", "", None, None)),
        ("s3://bucket/a/b/", ("bucket", "a/b/", None, None)),
        (
            "s3://bucket/a?endpoint-url=http://127.0.0.1:9000&region=eu-west-3",
            ("bucket", "a/", "http://127.0.0.1:9000", "eu-west-3"),
        ),
        (
            "S3://bucket/a?endpoint-url=https%3A%2F%2Fminio.example%3A9000",
            ("bucket", "a/", "https://minio.example:9000", None),
        ),
    ],
)
def test_s3_uris_name_a_bucket_a_prefix_and_options(uri: str, location: tuple[str, str, str | None, str | None]):
    assert S3Location.parse(uri) == S3Location(*location)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://",
        "s3:///prefix",
        "s3://b/prefix",  # too short for a bucket name
        "s3://bucket/a//b",
        "s3://bucket/../b",
        "s3://bucket/p#frag",
        "s3://bucket/p?endpoint=http://x",
        "s3://bucket/p?region=",
        "s3://bucket/p?region=a&region=b",
        "s3://bucket/p?region=EU%20West",
        "s3://bucket/p?endpoint-url=ftp://host",
        "s3://bucket/p?endpoint-url=127.0.0.1:9000",
    ],
)
def test_unusable_s3_uris_are_config_errors(uri: str):
    with pytest.raises(SinkConfigError) as caught:
        S3Sink(uri)
    assert not caught.value.retryable


def test_url_round_trips_and_holds_only_what_the_uri_said():
    sink = S3Sink("s3://bucket/a/b/?region=eu-west-3&endpoint-url=http://127.0.0.1:9000")
    assert sink.url == "s3://bucket/a/b?endpoint-url=http://127.0.0.1:9000&region=eu-west-3"
    assert S3Location.parse(sink.url) == sink.location
    assert S3Sink("s3://bucket").url == "s3://bucket"


def test_open_sink_opens_s3_uris_as_s3_sinks():
    sink = open_sink("s3://bucket/prefix?endpoint-url=http://127.0.0.1:9000")
    assert isinstance(sink, S3Sink)
    assert sink.location == S3Location("bucket", "prefix/", "http://127.0.0.1:9000", None)


# -- credentials never shown


def test_open_sink_refuses_credentials_in_an_s3_uri_without_showing_them():
    with pytest.raises(SinkConfigError) as caught:
        open_sink(f"s3://{ACCESS_KEY}:{SECRET}@bucket/prefix?sig=t0ken")
    assert_no_secrets(str(caught.value))
    assert "t0ken" not in str(caught.value) and "bucket/prefix" in str(caught.value)


@pytest.mark.parametrize(
    "uri",
    [
        f"s3://{ACCESS_KEY}:{SECRET}@bucket/prefix",
        f"s3://{SECRET}@bucket/prefix",
        f"s3://bucket/prefix?endpoint-url=http://{ACCESS_KEY}:{SECRET}@127.0.0.1:9000",
        f"s3://bucket/prefix?aws-secret-access-key={SECRET}",
    ],
)
def test_credentials_in_a_uri_are_refused_without_showing_them(uri: str):
    with pytest.raises(SinkConfigError) as caught:
        S3Sink(uri)
    assert_no_secrets(str(caught.value))
    assert_no_secrets(caught.value.sink)


def test_errors_and_url_never_contain_the_credentials(
    s3_emulator: MotoServer, s3_sink: S3Sink, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    distinctive_credentials(monkeypatch, tmp_path)
    sink = S3Sink(s3_sink.location.url)
    missing_bucket = S3Sink(sink_uri(s3_emulator.endpoint, "warren-no-such-bucket"))

    async def failures() -> list[BaseException]:
        try:
            return await asyncio.gather(sink.get("missing"), missing_bucket.check(), return_exceptions=True)
        finally:
            await sink.close()
            await missing_bucket.close()

    shown = [sink.url, repr(sink), *(str(err) for err in run(failures()))]
    for text in shown:
        assert_no_secrets(text)


# -- errors


def test_a_missing_bucket_is_a_permanent_config_error_naming_it(
    s3_emulator: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    use_test_credentials(monkeypatch, tmp_path)
    sink = S3Sink(sink_uri(s3_emulator.endpoint, "warren-no-such-bucket"))

    async def attempts() -> list[BaseException]:
        try:
            return [
                *await asyncio.gather(
                    sink.check(), sink.put("k", b"x"), sink.get("k"), sink.delete("k"), return_exceptions=True
                ),
                *await asyncio.gather(anext(aiter(sink.list(""))), return_exceptions=True),
            ]
        finally:
            await sink.close()

    for outcome in run(attempts()):
        assert isinstance(outcome, SinkConfigError), outcome
        assert "'warren-no-such-bucket' does not exist" in str(outcome)
        assert not outcome.retryable


def test_a_stopped_emulator_makes_every_verb_unavailable_and_the_sink_recovers_when_it_returns(
    private_emulator: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    distinctive_credentials(monkeypatch, tmp_path)
    bucket = private_emulator.create_bucket()
    sink = S3Sink(sink_uri(private_emulator.endpoint, bucket), max_attempts=2)

    async def body() -> list[BaseException]:
        try:
            await sink.put("before", b"x")  # leaves a pooled connection to the server about to go
            private_emulator.stop()
            failures = await asyncio.gather(
                sink.put("k", b"x"),
                sink.put("k", b"x", if_absent=True),
                sink.get("before"),
                sink.get_range("before", 0, 1),
                sink.head("before"),
                sink.delete("before"),
                anext(aiter(sink.list(""))),
                sink.check(),
                return_exceptions=True,
            )
            private_emulator.start()  # same port, but empty: moto keeps nothing
            private_emulator.create_bucket(bucket)
            await sink.put("after", b"y")
            assert await sink.get("after") == b"y"
            return list(failures)
        finally:
            await sink.close()

    for outcome in run(body()):
        assert isinstance(outcome, SinkUnavailable), outcome
        assert outcome.retryable
        assert f"cannot reach the S3 endpoint {private_emulator.endpoint}" in str(outcome)
        assert_no_secrets(str(outcome))


def test_wrong_credentials_are_refused_as_permission_denied(
    private_emulator: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """moto accepts any credentials unless told to authenticate: create a user with S3 rights, then
    switch authentication on (moto-api/reset-auth) and try a wrong secret, an unknown key and a user
    without rights."""
    bucket = private_emulator.create_bucket()
    iam = private_emulator.client("iam")
    iam.create_user(UserName="archiver")
    iam.put_user_policy(
        UserName="archiver",
        PolicyName="s3",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        ),
    )
    iam.create_user(UserName="nobody")
    good = iam.create_access_key(UserName="archiver")["AccessKey"]
    powerless = iam.create_access_key(UserName="nobody")["AccessKey"]
    private_emulator.enforce_authentication()

    use_test_credentials(monkeypatch, tmp_path)

    def attempt(key_id: str, secret: str) -> BaseException | None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        sink = S3Sink(sink_uri(private_emulator.endpoint, bucket))

        async def body() -> BaseException | None:
            try:
                await sink.check()
            except SinkError as err:
                return err
            finally:
                await sink.close()
            return None

        return run(body())

    assert attempt(good["AccessKeyId"], good["SecretAccessKey"]) is None
    refusals = {
        "wrong secret": attempt(good["AccessKeyId"], SECRET),
        "unknown key": attempt(ACCESS_KEY, SECRET),
        "no rights": attempt(powerless["AccessKeyId"], powerless["SecretAccessKey"]),
    }
    for case, outcome in refusals.items():
        assert isinstance(outcome, SinkPermissionDenied), (case, outcome)
        assert not outcome.retryable
        assert_no_secrets(str(outcome))
        assert good["SecretAccessKey"] not in str(outcome) and powerless["SecretAccessKey"] not in str(outcome)


def client_error(code: str, status: int) -> boto.ClientError:
    response: Any = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return boto.ClientError(response, "Op")


ENDPOINT_URL = "http://127.0.0.1:9/bucket/p/k"
ERROR_CASES: list[tuple[Exception, type[SinkError]]] = [
    (client_error("NoSuchKey", 404), ObjectNotFound),
    (client_error("", 404), ObjectNotFound),  # HEAD answers carry no code
    (client_error("PreconditionFailed", 412), ObjectExists),
    (client_error("AccessDenied", 403), SinkPermissionDenied),
    (client_error("InvalidAccessKeyId", 403), SinkPermissionDenied),
    (client_error("SignatureDoesNotMatch", 403), SinkPermissionDenied),
    (client_error("NoSuchBucket", 404), SinkConfigError),
    (client_error("PermanentRedirect", 301), SinkConfigError),
    (client_error("NotImplemented", 501), SinkConfigError),
    (client_error("KeyTooLongError", 400), InvalidKey),
    (client_error("SlowDown", 503), SinkUnavailable),
    (client_error("InternalError", 500), SinkUnavailable),
    (client_error("BadGateway", 502), SinkUnavailable),
    (client_error("RequestTimeout", 400), SinkUnavailable),
    (client_error("ConditionalRequestConflict", 409), SinkUnavailable),
    (client_error("BadDigest", 400), SinkUnavailable),
    (client_error("InvalidArgument", 400), SinkError),
    (boto.EndpointConnectionError(endpoint_url=ENDPOINT_URL), SinkUnavailable),
    (boto.ConnectionClosedError(endpoint_url=ENDPOINT_URL), SinkUnavailable),
    (boto.ReadTimeoutError(endpoint_url=ENDPOINT_URL), SinkUnavailable),
    (boto.ConnectTimeoutError(endpoint_url=ENDPOINT_URL), SinkUnavailable),
    (boto.NoCredentialsError(), SinkConfigError),
    (boto.FlexibleChecksumError(error_msg="crc32 mismatch"), SinkUnavailable),
]


def case_id(case: tuple[Exception, type[SinkError]]) -> str:
    error, expected = case
    what = error.response["Error"]["Code"] or "no code" if isinstance(error, boto.ClientError) else type(error).__name__
    return f"{what}->{expected.__name__}"


@pytest.mark.parametrize("case", ERROR_CASES, ids=[case_id(case) for case in ERROR_CASES])
def test_storage_errors_map_to_what_a_caller_can_act_on(case: tuple[Exception, type[SinkError]]):
    error, expected = case
    sink = S3Sink("s3://bucket/p?endpoint-url=http://127.0.0.1:9")
    with pytest.raises(SinkError) as caught, sink._translating("k", "reading"):
        raise error
    assert type(caught.value) is expected
    assert caught.value.__cause__ is error
    assert caught.value.retryable == (expected is SinkUnavailable)


# -- event loops


def test_a_sink_used_from_successive_event_loops_leaves_no_client_open(s3_sink: S3Sink):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(s3_sink.put("k", b"x"))
        assert run(s3_sink.get("k")) == b"x"
        run(s3_sink.close())
        gc.collect()
    assert [str(warning.message) for warning in caught if "nclosed" in str(warning.message)] == []


def test_check_names_the_endpoint_it_cannot_reach(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    distinctive_credentials(monkeypatch, tmp_path)
    sink = S3Sink("s3://bucket/p?endpoint-url=http://127.0.0.1:9", max_attempts=1)
    with pytest.raises(SinkUnavailable) as caught:
        run(sink.check())
    assert "http://127.0.0.1:9" in str(caught.value) and "start-up check" in str(caught.value)
    assert_no_secrets(str(caught.value))
