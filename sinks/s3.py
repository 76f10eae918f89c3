"""A sink on Amazon S3 or any S3-compatible store: `s3://bucket/prefix?endpoint-url=URL&region=NAME`.

Keys live under the URI's prefix. Credentials come from the standard AWS chain (environment, shared
config and profile, container or instance role), never from the URI, so they cannot reach a log or
an error message. Every put carries a CRC32 checksum that the service verifies; objects larger than
`multipart_threshold` go up as a multipart upload with a checksum per part, aborted if it fails.
A conditional create (`if_absent`) is `If-None-Match: *`, which S3 applies atomically.

Every request attempt is bounded (see `sinks.deadlines`): botocore's connect and read timeouts, and
an HTTP session of our own that hands the body over a slice at a time and gives up on an upload that
stops moving or a request that outlives its size's deadline; a stalled endpoint is SinkUnavailable.

One aiobotocore client serves the sink within an event loop, opened on first use. aiohttp binds
connections to the loop that made them, so a sink used from a later loop (the test harness runs each
step in a fresh one) opens a new client there, and every loop closes its own client when it shuts
down, or when `close()` is awaited on it (see `_hold_client`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiobotocore.client import AioBaseClient
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import get_session
from botocore import exceptions as boto
from botocore.handlers import add_expect_header

from sinks.base import ObjectInfo, Sink, modified_ns, redact_url, validate_key
from sinks.deadlines import DEFAULT_DEADLINES, Deadlines, Stalled, Upload, bounded, content_length
from sinks.errors import (
    InvalidKey,
    ObjectExists,
    ObjectNotFound,
    SinkConfigError,
    SinkError,
    SinkPermissionDenied,
    SinkUnavailable,
)
from sinks.location import bucket_url, parse_bucket_uri

MiB = 1024 * 1024
MULTIPART_THRESHOLD = 16 * MiB
PART_SIZE = 8 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
MAX_PARTS = 10_000  # S3's maximum per upload
PART_CONCURRENCY = 4  # parts of one object in flight at once
MAX_ATTEMPTS = 3  # attempts per request (botocore's standard retry mode) before SinkUnavailable reaches the caller
# Connections per client: more than the parts of all the uploads in flight, so that no request waits for
# a connection long enough to pass its deadline.
MAX_POOL_CONNECTIONS = 32

OPTIONS = ("endpoint-url", "region")
# S3's bucket naming rules, loosened to the legacy names (capitals, '_') some S3-compatible stores accept.
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")
_BUCKET_RULE = "3-255 letters, digits, '.', '_' and '-', a letter or digit at each end"
_REGION = re.compile(r"[a-z0-9][a-z0-9-]*")

# Service error codes by what the caller can do about them; `_service_error` falls back on the status.
_NOT_FOUND = {"NoSuchKey", "NotFound", "404"}
_EXISTS = {"PreconditionFailed", "412"}
_DENIED = {
    "AccessDenied",
    "AccountProblem",
    "AllAccessDisabled",
    "ExpiredToken",
    "Forbidden",
    "InvalidAccessKeyId",
    "InvalidToken",
    "SignatureDoesNotMatch",
    "403",
}
_MISCONFIGURED = {
    "AuthorizationHeaderMalformed",  # wrong region
    "IllegalLocationConstraintException",
    "InvalidBucketName",
    "NotImplemented",  # an S3-compatible store without conditional writes or checksums
    "PermanentRedirect",  # wrong region or endpoint
    "301",
}
_TRANSIENT = {
    "BadDigest",  # the body's checksum did not match: damaged in transit
    "ConditionalRequestConflict",  # a concurrent conditional write to the same key: retry to learn the outcome
    "InternalError",
    "NoSuchUpload",  # a multipart upload aborted under us (a lifecycle rule): the whole put may be retried
    "OperationAborted",
    "RequestTimeout",
    "RequestTimeTooSkewed",  # botocore corrects its clock offset on the next attempt
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
}
_CREDENTIALS = (
    boto.NoCredentialsError,
    boto.PartialCredentialsError,
    boto.CredentialRetrievalError,
    boto.ProfileNotFound,
)
_UNREACHABLE = (boto.ConnectionError, boto.HTTPClientError, boto.IncompleteReadError, aiohttp.ClientError, OSError)
_DAMAGED = (boto.ChecksumError, boto.FlexibleChecksumError, boto.AwsChunkedWrapperError)


class RequestStalled(boto.ReadTimeoutError):
    """One request attempt passed its deadline; a timeout to botocore, which retries it like any other."""

    fmt = 'Request stalled on endpoint URL: "{endpoint_url}": {reason}'


def bounded_session(deadlines: Deadlines) -> type[AIOHTTPSession]:
    """aiobotocore's HTTP session, with `deadlines` on every request attempt (see `sinks.deadlines.bounded`)."""

    class BoundedSession(AIOHTTPSession):
        async def send(self, request: Any) -> Any:
            body = request.body
            upload = _upload_of(body)
            size = content_length(request.headers, body)
            if upload is not None:
                request.body = upload  # read once, as the attempt starts; put back for a retry
            try:
                return await bounded(super().send(request), deadlines, size=size, upload=upload)
            except Stalled as err:
                raise RequestStalled(endpoint_url=request.url, reason=err.reason) from err
            finally:
                request.body = body

    return BoundedSession


def _upload_of(body: object) -> Upload | None:
    """The request body as an `Upload`, or None if it is empty or a stream of unknown length."""
    if isinstance(body, io.BytesIO):
        # botocore wraps a bytes Body in a BytesIO; getvalue() hands back those same bytes, uncopied.
        data: bytes | bytearray | memoryview = memoryview(body.getvalue())[body.tell() :]
    elif isinstance(body, bytes | bytearray):
        data = body
    else:
        return None
    return Upload(data) if len(data) else None


@dataclass(frozen=True, slots=True)
class S3Location:
    """What an `s3://` URI names: a bucket, a key prefix ('' or ending in '/'), and how to reach them."""

    bucket: str
    prefix: str
    endpoint_url: str | None
    region: str | None

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        location = parse_bucket_uri(
            uri,
            scheme="s3",
            what="bucket",
            name_pattern=_BUCKET,
            name_rule=_BUCKET_RULE,
            credentials_hint="they come from the AWS environment, profile or instance role",
            options=OPTIONS,
        )
        shown = redact_url(uri)
        endpoint = location.options.get("endpoint-url")
        if endpoint is not None:
            target = urlsplit(endpoint)
            if target.scheme not in ("http", "https") or not target.hostname:
                raise SinkConfigError("endpoint-url must be an http:// or https:// URL", sink=shown)
            if target.username is not None or target.password is not None:
                raise SinkConfigError("endpoint-url takes no credentials", sink=shown)
        region = location.options.get("region")
        if region is not None and not _REGION.fullmatch(region):
            raise SinkConfigError(f"{region!r} is not a region name", sink=shown)
        return cls(location.bucket, location.prefix, endpoint, region)

    @property
    def url(self) -> str:
        """The location as a URI without secrets (it holds none: credentials never come from the URI)."""
        url = bucket_url("s3", self.bucket, self.prefix)
        options = [("endpoint-url", self.endpoint_url), ("region", self.region)]
        query = "&".join(f"{name}={value}" for name, value in options if value is not None)
        return f"{url}?{query}" if query else url


@dataclass(eq=False)
class _LoopClient:
    """The client of one event loop, and the suspended generator that holds it open."""

    loop: asyncio.AbstractEventLoop
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    client: AioBaseClient | None = None
    holder: AsyncGenerator[AioBaseClient, None] | None = None


class S3Sink(Sink):
    """Objects in an S3 bucket under a key prefix; `check()` writes, reads and deletes a probe object.

    `multipart_threshold` (bytes) is the size above which a put becomes a multipart upload of
    `part_size` parts; `max_attempts` bounds botocore's own retries of one request, and `deadlines`
    each attempt.
    """

    def __init__(
        self,
        uri: str,
        *,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
        max_attempts: int = MAX_ATTEMPTS,
        deadlines: Deadlines = DEFAULT_DEADLINES,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum), got {part_size}")
        if multipart_threshold < 0 or max_attempts < 1:
            raise ValueError("multipart_threshold must not be negative, and max_attempts must be at least 1")
        self._location = S3Location.parse(uri)
        self._url = self._location.url
        self._multipart_threshold = multipart_threshold
        self._part_size = part_size
        self._deadlines = deadlines
        self._config = AioConfig(
            connect_timeout=deadlines.connect,
            read_timeout=deadlines.stall,  # silence while awaiting or reading an answer
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            max_pool_connections=MAX_POOL_CONNECTIONS,
            http_session_cls=bounded_session(deadlines),
        )
        # One session for the sink's life: it caches the service model and the resolved credentials.
        self._session = get_session()
        self._endpoint = self._location.endpoint_url or "the AWS S3 endpoint"  # resolved when a client opens
        self._current: _LoopClient | None = None

    @property
    def url(self) -> str:
        return self._url

    @property
    def location(self) -> S3Location:
        return self._location

    def __repr__(self) -> str:
        return f"S3Sink({self._url!r})"

    # -- the client

    async def _client(self) -> AioBaseClient:
        loop = asyncio.get_running_loop()
        current = self._current
        if current is None or current.loop is not loop:
            # An earlier loop's client cannot be used (nor closed) from this one; that loop closes it.
            current = self._current = _LoopClient(loop)
        if current.client is None:
            async with current.lock:
                if current.client is None:
                    holder = self._hold_client()
                    current.client = await anext(holder)
                    current.holder = holder
        return current.client

    async def _hold_client(self) -> AsyncGenerator[AioBaseClient, None]:
        """Open a client and stay suspended until closed. Being an async generator is the point: the
        event loop tracks it, and `asyncio.run` (or a Runner) closes it on that loop at shutdown, so a
        client is never left to a closed loop, even if `close()` is called from another one."""
        location = self._location
        async with self._session.create_client(
            "s3", endpoint_url=location.endpoint_url, region_name=location.region, config=self._config
        ) as client:
            # botocore sends every file-like body with "Expect: 100-continue", so each PUT waits a round
            # trip for the go-ahead before its body: twice the latency per segment. A refused PUT then
            # costs its body's bytes once; an accepted one (nearly all) costs one round trip less.
            client.meta.events.unregister("before-call.s3", add_expect_header)
            self._endpoint = redact_url(client.meta.endpoint_url)
            yield client

    async def close(self) -> None:
        current, self._current = self._current, None
        if current is not None and current.holder is not None and current.loop is asyncio.get_running_loop():
            await current.holder.aclose()

    # -- keys and errors

    def _s3_key(self, key: str) -> str:
        validate_key(key, sink=self._url)
        return self._location.prefix + key

    @contextlib.contextmanager
    def _translating(self, key: str | None, doing: str) -> Iterator[None]:
        """Turn what botocore and aiohttp raise inside the block into the matching SinkError."""
        try:
            yield
        except (boto.BotoCoreError, boto.ClientError, aiohttp.ClientError, OSError) as err:
            raise self._error(err, key, doing) from err

    def _error(self, err: Exception, key: str | None, doing: str) -> SinkError:
        if isinstance(err, boto.ClientError):
            return self._service_error(err, key, doing)
        if isinstance(err, _CREDENTIALS):
            # The message is not shown: a credential process or profile may echo what it was given.
            return SinkConfigError(
                f"{doing}: no usable AWS credentials ({type(err).__name__}); set them in the environment, "
                "a shared config profile or an instance role",
                sink=self._url,
                key=key,
            )
        if isinstance(err, _DAMAGED):
            return SinkUnavailable(f"{doing}: data damaged in transit: {err}", sink=self._url, key=key)
        if stalled := self._stalled(err):
            return SinkUnavailable(f"{doing}: the S3 endpoint {self._endpoint} {stalled}", sink=self._url, key=key)
        if isinstance(err, _UNREACHABLE):
            return SinkUnavailable(
                f"{doing}: cannot reach the S3 endpoint {self._endpoint}: {type(err).__name__}: {err}",
                sink=self._url,
                key=key,
            )
        return SinkError(f"{doing}: {type(err).__name__}: {err}", sink=self._url, key=key)

    def _stalled(self, err: Exception) -> str:
        """How a request passed its deadline, or '' if `err` is no timeout."""
        if isinstance(err, RequestStalled):
            return f"stalled: {err.kwargs['reason']}"
        if isinstance(err, boto.ConnectTimeoutError):
            return f"did not accept a connection within {self._deadlines.connect:g}s"
        if isinstance(err, boto.ReadTimeoutError | aiohttp.ServerTimeoutError | TimeoutError):
            return f"stalled: no answer for {self._deadlines.stall:g}s"
        return ""

    def _service_error(self, err: boto.ClientError, key: str | None, doing: str) -> SinkError:
        error = err.response.get("Error", {})
        code = str(error.get("Code") or "")
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = str(error.get("Message") or "")[:300]
        said = f"{code or status}" + (f": {message}" if message else "")
        sink = self._url
        if code == "NoSuchBucket":
            bucket = self._location.bucket
            return SinkConfigError(f"{doing}: the bucket {bucket!r} does not exist at {self._endpoint}", sink=sink)
        if code in _NOT_FOUND or (not code and status == 404):
            return ObjectNotFound("no object under this key", sink=sink, key=key)
        if code in _EXISTS or status == 412:
            return ObjectExists("an object already exists under this key", sink=sink, key=key)
        if code == "KeyTooLongError":
            return InvalidKey(f"{doing}: the key is too long for S3 ({said})", sink=sink, key=key)
        if code in _DENIED or status == 403:
            return SinkPermissionDenied(f"{doing}: S3 refused the request ({said})", sink=sink, key=key)
        if code in _MISCONFIGURED or status == 301:
            return SinkConfigError(f"{doing}: {said} (check the bucket, region and endpoint)", sink=sink, key=key)
        if code in _TRANSIENT or status in (409, 429) or status >= 500:
            return SinkUnavailable(f"{doing}: {said}", sink=sink, key=key)
        return SinkError(f"{doing}: {said}", sink=sink, key=key)

    # -- writing

    async def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        """Store `data` under `key`; with `if_absent`, only if no object is there (`If-None-Match: *`).

        A conditional put that botocore retries after a lost response may find its own first attempt
        and raise ObjectExists: a caller that must know compares the stored bytes.
        """
        s3_key = self._s3_key(key)
        with self._translating(key, "writing"):
            client = await self._client()
            if len(data) > self._multipart_threshold:
                await self._put_multipart(client, key, s3_key, data, if_absent)
                return
            condition = {"IfNoneMatch": "*"} if if_absent else {}
            await client.put_object(
                Bucket=self._location.bucket, Key=s3_key, Body=data, ChecksumAlgorithm="CRC32", **condition
            )

    async def _put_multipart(self, client: AioBaseClient, key: str, s3_key: str, data: bytes, if_absent: bool) -> None:
        bucket = self._location.bucket
        if if_absent and await self.head(key) is not None:
            # Only saves uploading the parts for nothing; If-None-Match on completion is what decides.
            raise ObjectExists("an object already exists under this key", sink=self._url, key=key)
        created = await client.create_multipart_upload(Bucket=bucket, Key=s3_key, ChecksumAlgorithm="CRC32")
        upload_id = created["UploadId"]
        try:
            parts = await self._upload_parts(client, s3_key, upload_id, data)
            condition = {"IfNoneMatch": "*"} if if_absent else {}
            await client.complete_multipart_upload(
                Bucket=bucket, Key=s3_key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **condition
            )
        except BaseException:
            # The parts of an unfinished upload stay stored (and billed) until it is aborted. If this
            # fails too, a bucket lifecycle rule (AbortIncompleteMultipartUpload) sweeps them later.
            with contextlib.suppress(Exception):
                await client.abort_multipart_upload(Bucket=bucket, Key=s3_key, UploadId=upload_id)
            raise

    async def _upload_parts(
        self, client: AioBaseClient, s3_key: str, upload_id: str, data: bytes
    ) -> list[dict[str, Any]]:
        """Upload `data` in parts, a few at a time; the parts' list for CompleteMultipartUpload."""
        part_size = max(self._part_size, -(-len(data) // MAX_PARTS))
        pending = enumerate(range(0, len(data), part_size), start=1)
        parts: list[dict[str, Any]] = []

        async def upload_some() -> None:
            for number, offset in pending:  # shared: each worker takes the next part not yet taken
                sent = await client.upload_part(
                    Bucket=self._location.bucket,
                    Key=s3_key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data[offset : offset + part_size],
                    ChecksumAlgorithm="CRC32",
                )
                part = {"PartNumber": number, "ETag": sent["ETag"]}
                if "ChecksumCRC32" in sent:
                    part["ChecksumCRC32"] = sent["ChecksumCRC32"]
                parts.append(part)

        try:
            async with asyncio.TaskGroup() as workers:
                for _ in range(PART_CONCURRENCY):
                    workers.create_task(upload_some())
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None  # the first failure tells the caller what went wrong
        return sorted(parts, key=lambda part: part["PartNumber"])

    async def delete(self, key: str) -> None:
        s3_key = self._s3_key(key)
        with self._translating(key, "deleting"):
            client = await self._client()
            try:
                await client.delete_object(Bucket=self._location.bucket, Key=s3_key)
            except boto.ClientError as err:
                if err.response.get("Error", {}).get("Code") != "NoSuchKey":  # S3 says 204; some stores, 404
                    raise

    # -- reading

    async def get(self, key: str) -> bytes:
        s3_key = self._s3_key(key)
        with self._translating(key, "reading"):
            client = await self._client()
            # ChecksumMode makes botocore check the whole object against its stored CRC32.
            response = await client.get_object(Bucket=self._location.bucket, Key=s3_key, ChecksumMode="ENABLED")
            async with response["Body"] as body:
                return await body.read()

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        if length < 0:
            raise ValueError(f"length must not be negative, got {length}")
        s3_key = self._s3_key(key)
        if length == 0:
            # No HTTP range selects nothing ("bytes=5-4" is ignored: the whole object comes back).
            if await self.head(key) is None:
                raise ObjectNotFound("no object under this key", sink=self._url, key=key)
            return b""
        wanted = f"bytes={start}" if start < 0 else f"bytes={start}-{start + length - 1}"
        with self._translating(key, "reading"):
            client = await self._client()
            try:
                response = await client.get_object(Bucket=self._location.bucket, Key=s3_key, Range=wanted)
            except boto.ClientError as err:
                if err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416:
                    return b""  # InvalidRange: the object exists, but ends before `start` (or is empty)
                raise
            async with response["Body"] as body:
                data = await body.read()
        if not response.get("ContentRange"):
            data = data[start:]  # the store ignored the range and sent the whole object
        return data[:length]

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size and time, or None. A missing bucket also answers 404 without saying which is
        missing, so it reads as None here; `check()` (and every other verb) names it."""
        s3_key = self._s3_key(key)
        with self._translating(key, "reading metadata"):
            client = await self._client()
            try:
                response = await client.head_object(Bucket=self._location.bucket, Key=s3_key)
            except boto.ClientError as err:
                if err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return None
                raise
        return ObjectInfo(key, response["ContentLength"], modified_ns(response["LastModified"]))

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """S3 lists keys in UTF-8 byte order, which is the contract's order. Objects whose keys no verb
        could address (a console's 'folder/' markers, 'a//b' from other tools) are left out."""
        validate_key(prefix, sink=self._url, prefix=True)
        strip = len(self._location.prefix)
        with self._translating(None, "listing"):
            client = await self._client()
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self._location.bucket, Prefix=self._location.prefix + prefix
            )
            async for page in pages:
                for entry in page.get("Contents", ()):
                    key = entry["Key"][strip:]
                    if _addressable(key):
                        yield ObjectInfo(key, entry["Size"], modified_ns(entry["LastModified"]))


def _addressable(key: str) -> bool:
    try:
        validate_key(key, sink="")
    except InvalidKey:
        return False
    return True
