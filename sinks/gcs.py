"""A sink on Google Cloud Storage: `gs://bucket/prefix`, one object per key below the prefix.

Two options may follow in the query: `endpoint=` sends requests to another server (an emulator) with
anonymous credentials, and `project=` names the client's project. The client also honours
STORAGE_EMULATOR_HOST. Otherwise credentials are the environment's defaults (GOOGLE_APPLICATION_CREDENTIALS,
gcloud's application-default login, or the metadata server on GCP); they never reach `url` or an error.

google-cloud-storage blocks, so every call runs on a small thread pool the sink owns, with short
timeouts and a few seconds of retries: an unreachable service fails as SinkUnavailable within
seconds, and the caller, which knows what a failure costs, decides whether to try again.

The timeouts are `sinks.deadlines.Deadlines`, as requests applies them to each socket operation: a
few seconds to connect, then `stall` seconds of silence for reads; an upload request's body is sent
with one bounded write, so an upload's timeout is `for_bytes` of what that request carries (a chunk
at most).
"""

from __future__ import annotations

import asyncio
import base64
import builtins  # `list` in the class body is the sink's own method
import functools
import http.client
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import urlsplit

import google_crc32c
import requests
import urllib3
from google.api_core import exceptions as api_errors
from google.auth import exceptions as auth_errors
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
from google.cloud.storage.retry import DEFAULT_RETRY

from sinks.base import ObjectInfo, Sink, modified_ns, redact_url, validate_key
from sinks.deadlines import DEFAULT_DEADLINES, Deadlines
from sinks.errors import (
    InvalidKey,
    ObjectExists,
    ObjectNotFound,
    SinkConfigError,
    SinkError,
    SinkPermissionDenied,
    SinkUnavailable,
)
from sinks.location import BucketLocation, parse_bucket_uri

T = TypeVar("T")

MiB = 1024 * 1024
DEFAULT_ENDPOINT = "https://storage.googleapis.com"

# The client uploads objects above 8 MiB as resumable uploads, in chunks of this size (a multiple of
# 256 KiB): a failed chunk is retried alone, and no request carries more than this.
CHUNK_SIZE = 16 * MiB
RETRY_SECONDS = 4.0  # total time one call spends retrying 429, 5xx and connection errors
# The client's own predicate (what it deems transient), with backoff bounded to a few seconds instead
# of the default two minutes.
RETRY = DEFAULT_RETRY.with_delay(initial=0.25, maximum=2.0, multiplier=2.0).with_timeout(RETRY_SECONDS)
WORKERS = 8  # concurrent calls per sink; within the HTTP session's pool of 10 connections

_MAX_NAME_BYTES = 1024  # GCS's limit on an object name, UTF-8 encoded
_BUCKET_NAME = re.compile(r"(?!.*\.\.)[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_BUCKET_RULE = "3-222 lowercase letters, digits, '.', '_' and '-', a letter or digit at each end, no '..'"
_OPTIONS = ("endpoint", "project")
_LIST_FIELDS = "items(name,size,updated),nextPageToken"

# Failures below HTTP: refused or reset connections, DNS, TLS, timeouts.
_TRANSPORT_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)
_HANDLED_ERRORS = (
    api_errors.GoogleAPIError,
    auth_errors.GoogleAuthError,
    DataCorruption,
    InvalidResponse,
    *_TRANSPORT_ERRORS,
)


def _crc32c(data: bytes) -> str:
    """The CRC32C of `data` as GCS spells it in object metadata: base64 of the big-endian value."""
    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode("ascii")


def _http_summary(err: api_errors.GoogleAPICallError) -> str:
    """'HTTP 403 Forbidden: <the service's message>'.

    Never `str(err)`: for uploads and downloads it holds the request URL, and a resumable upload's
    URL (its upload_id) lets anyone who has it write to the object.
    """
    code = err.code or 0
    try:
        summary = f"HTTP {code} {HTTPStatus(code).phrase}"
    except ValueError:
        summary = f"HTTP {code}"
    message = ""
    try:
        payload = err.response.json() if err.response is not None else None
    except (ValueError, AttributeError):
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        message = str(payload["error"].get("message") or "")
    if message:
        summary += f": {message[:300]}"
    return summary


def _transport_reason(err: BaseException) -> str:
    """The innermost OS-level reason ('Connection refused', 'Name or service not known') for a failure
    below HTTP, or 'timed out'; these nest several exceptions deep inside requests and urllib3."""
    pending: list[BaseException] = [err]
    seen: set[int] = set()
    reason = ""
    timed_out = False
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            reason = current.strerror  # keep going: deeper is more precise
        if isinstance(current, requests.Timeout | urllib3.exceptions.TimeoutError | TimeoutError):
            timed_out = True
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        pending.extend(item for item in linked if isinstance(item, BaseException))
    if reason:
        return reason
    return "timed out" if timed_out else type(err).__name__


def _timeout_kind(err: BaseException) -> str:
    """'connect' or 'read' if `err` is a timeout (not a refusal or a reset), else ''."""
    if _transport_reason(err) != "timed out":
        return ""
    pending: list[BaseException] = [err]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        # urllib3 files a refused connection (NewConnectionError) under ConnectTimeoutError too.
        if isinstance(current, requests.ConnectTimeout) or (
            isinstance(current, urllib3.exceptions.ConnectTimeoutError)
            and not isinstance(current, urllib3.exceptions.NewConnectionError)
        ):
            return "connect"
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        pending.extend(item for item in linked if isinstance(item, BaseException))
    return "read"


class GCSSink(Sink):
    """Objects in one GCS bucket, below an optional prefix.

    Objects are written whole (uploads carry their CRC32C, so GCS refuses a corrupted one), `if_absent`
    is a generation-0 precondition, and reads of whole objects are checked against the stored CRC32C.
    """

    def __init__(self, location: BucketLocation, *, deadlines: Deadlines = DEFAULT_DEADLINES) -> None:
        """The sink for a parsed `gs://` location; `from_uri` parses one."""
        self._deadlines = deadlines
        self._timeout = (deadlines.connect, deadlines.stall)  # (to connect, between bytes) per request
        self._bucket = location.bucket
        self._prefix = location.prefix
        self._url = location.url
        if "\r" in self._prefix or "\n" in self._prefix:
            raise SinkConfigError("the key prefix contains a line break, which GCS refuses", sink=self._url)
        endpoint = location.options.get("endpoint")
        self._endpoint = None if endpoint is None else self._check_endpoint(endpoint)
        self._project = location.options.get("project")
        self._client: storage.Client | None = None
        self._client_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="warren-gcs")
        self._closed = False

    @classmethod
    def from_uri(cls, uri: str, *, deadlines: Deadlines = DEFAULT_DEADLINES) -> GCSSink:
        """The sink for `gs://bucket[/prefix][?endpoint=URL][&project=ID]`; SinkConfigError if malformed."""
        location = parse_bucket_uri(
            uri,
            scheme="gs",
            what="bucket",
            name_pattern=_BUCKET_NAME,
            name_rule=_BUCKET_RULE,
            credentials_hint="use GOOGLE_APPLICATION_CREDENTIALS or default credentials",
            options=_OPTIONS,
        )
        return cls(location, deadlines=deadlines)

    def _check_endpoint(self, endpoint: str) -> str:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SinkConfigError("endpoint must be an http:// or https:// URL", sink=self._url)
        if "@" in parts.netloc or parts.query or parts.fragment:
            raise SinkConfigError("endpoint takes no user info, query or fragment", sink=self._url)
        return endpoint.rstrip("/")

    @property
    def url(self) -> str:
        return self._url

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def prefix(self) -> str:
        """Prepended to every key to name its object: '' or ending in '/'."""
        return self._prefix

    def __repr__(self) -> str:
        return f"GCSSink({self._url!r})"

    # -- the client and its calls

    def _get_client(self) -> storage.Client:
        """The sink's one client, made on first use (in a worker thread: finding default credentials
        may ask the metadata server)."""
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> storage.Client:
        options = {"api_endpoint": self._endpoint} if self._endpoint else None
        credentials = AnonymousCredentials() if self._endpoint else None
        try:
            # project=None means "none", where leaving it out would make the client guess one.
            client = storage.Client(project=self._project, credentials=credentials, client_options=options)
        except auth_errors.DefaultCredentialsError as err:
            raise SinkConfigError(
                "no Google Cloud credentials found: set GOOGLE_APPLICATION_CREDENTIALS to a key file, run "
                "'gcloud auth application-default login', or run on GCP with a service account",
                sink=self._url,
            ) from err
        # google-cloud-storage 3.x fetches bucket metadata for OpenTelemetry span attributes in a new,
        # unowned thread per bucket (retrying for two minutes against a dead endpoint). We export no
        # such spans, and every thread of ours has an owner: turn it off.
        if getattr(client, "_bucket_metadata_cache", None) is not None:
            client._bucket_metadata_cache = None
        return client

    def _endpoint_name(self) -> str:
        client = self._client
        endpoint = client.api_endpoint if client is not None else self._endpoint
        return redact_url(endpoint or DEFAULT_ENDPOINT)

    def _upload_timeout(self, size: int) -> tuple[float, float]:
        """Timeouts of an upload request: its body goes out in one bounded write, of a chunk at most."""
        return (self._deadlines.connect, self._deadlines.for_bytes(min(size, CHUNK_SIZE)))

    async def _run(self, key: str | None, doing: str, work: Callable[..., T], *args: Any, size: int = 0) -> T:
        """`work(client, *args)` on the sink's thread pool; library errors come back as SinkErrors.
        `size` is what the call uploads, for the deadline an error message names."""
        if self._closed:
            raise SinkError("the sink is closed", sink=self._url, key=key)
        call = functools.partial(self._call, key, doing, size, work, *args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _call(self, key: str | None, doing: str, size: int, work: Callable[..., T], *args: Any) -> T:
        try:
            return work(self._get_client(), *args)
        except SinkError:
            raise
        except _HANDLED_ERRORS as err:
            raise self._error(err, key, doing, size=size) from err

    def _error(self, err: BaseException, key: str | None, doing: str, *, size: int = 0) -> SinkError:
        if isinstance(err, api_errors.RetryError):
            if err.cause is None:
                detail = f"{doing}: still failing after {RETRY_SECONDS:g}s of retries"
                return SinkUnavailable(detail, sink=self._url, key=key)
            err = err.cause
        if isinstance(err, InvalidResponse):
            err = api_errors.from_http_status(err.response.status_code, "", response=err.response)
        if isinstance(err, api_errors.NotFound):
            # Where a 404 can mean a missing object, the operation asked first; here it is the bucket.
            return self._bucket_missing()
        if isinstance(err, api_errors.GoogleAPICallError):
            detail = f"{doing}: {_http_summary(err)}"
            if isinstance(err, api_errors.Unauthorized | api_errors.Forbidden):
                return SinkPermissionDenied(detail, sink=self._url, key=key)
            code = err.code or 0
            if code in (408, 429) or code >= 500:
                return SinkUnavailable(detail, sink=self._url, key=key)
            return SinkError(detail, sink=self._url, key=key)
        if isinstance(err, DataCorruption):
            return SinkUnavailable(f"{doing}: the data failed its CRC32C check in transit", sink=self._url, key=key)
        if isinstance(err, auth_errors.RefreshError) and not err.retryable:
            return SinkPermissionDenied(f"{doing}: the credentials were refused", sink=self._url, key=key)
        if isinstance(err, auth_errors.GoogleAuthError):
            detail = f"{doing}: could not get an access token ({_transport_reason(err)})"
            return SinkUnavailable(detail, sink=self._url, key=key)
        timeout = _timeout_kind(err)
        if timeout == "connect":
            detail = f"{doing}: {self._endpoint_name()} did not accept a connection within {self._deadlines.connect:g}s"
        elif timeout:
            limit = self._upload_timeout(size)[1] if size else self._deadlines.stall
            detail = f"{doing}: {self._endpoint_name()} stalled: no progress for {limit:g}s"
        else:
            detail = f"{doing}: cannot reach {self._endpoint_name()} ({_transport_reason(err)})"
        return SinkUnavailable(detail, sink=self._url, key=key)

    def _bucket_missing(self) -> SinkConfigError:
        return SinkConfigError(
            f"bucket {self._bucket!r} does not exist: create it, or correct the sink URI", sink=self._url
        )

    def _bucket_exists(self, client: storage.Client) -> bool:
        """Whether the bucket exists, asked with the objects.list permission the sink needs anyway
        (an object-only IAM role cannot read the bucket's own metadata)."""
        blobs = client.list_blobs(
            self._bucket, prefix=self._prefix, max_results=1, fields="items(name)", timeout=self._timeout, retry=RETRY
        )
        try:
            next(iter(blobs), None)
        except api_errors.NotFound:
            return False
        return True

    def _no_object(self, client: storage.Client, key: str) -> SinkError:
        """GCS answers 404 alike for a missing object and a missing bucket; only the first is ObjectNotFound."""
        if not self._bucket_exists(client):
            return self._bucket_missing()
        return ObjectNotFound("no object under this key", sink=self._url, key=key)

    def _name(self, key: str) -> str:
        validate_key(key, sink=self._url)
        if "\r" in key or "\n" in key:
            raise InvalidKey("GCS object names cannot contain line breaks", sink=self._url, key=key)
        name = self._prefix + key
        try:
            size = len(name.encode())
        except UnicodeEncodeError:
            raise InvalidKey("key is not valid Unicode text", sink=self._url, key=key) from None
        if size > _MAX_NAME_BYTES:
            raise InvalidKey(f"object name is {size} bytes; GCS allows {_MAX_NAME_BYTES}", sink=self._url, key=key)
        return name

    def _blob(self, client: storage.Client, name: str, *, chunk_size: int | None = None) -> storage.Blob:
        # A chunk size also makes downloads chunked, which skips their checksum: uploads only.
        return client.bucket(self._bucket).blob(name, chunk_size=chunk_size)

    # -- writing

    async def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        name = self._name(key)
        await self._run(key, "writing", self._put, key, name, data, if_absent, size=len(data))

    def _put(self, client: storage.Client, key: str, name: str, data: bytes, if_absent: bool) -> None:
        try:
            self._blob(client, name, chunk_size=CHUNK_SIZE).upload_from_string(
                data,
                content_type="application/octet-stream",
                if_generation_match=0 if if_absent else None,
                # Small objects carry their CRC32C in the request; for resumable uploads it goes in the
                # metadata, so GCS checks the whole object before creating it.
                checksum="crc32c",
                crc32c_checksum_value=_crc32c(data),
                timeout=self._upload_timeout(len(data)),
                retry=RETRY,
            )
        except api_errors.PreconditionFailed as err:
            if not if_absent:
                raise
            raise ObjectExists("an object already exists under this key", sink=self._url, key=key) from err
        except api_errors.NotFound as err:
            raise self._no_object(client, key) from err

    async def delete(self, key: str) -> None:
        name = self._name(key)
        await self._run(key, "deleting", self._delete, key, name)

    def _delete(self, client: storage.Client, key: str, name: str) -> None:
        try:
            self._blob(client, name).delete(timeout=self._timeout, retry=RETRY)
        except api_errors.NotFound as err:
            if not self._bucket_exists(client):
                raise self._bucket_missing() from err

    # -- reading

    async def get(self, key: str) -> bytes:
        name = self._name(key)
        return await self._run(key, "reading", self._get, key, name)

    def _get(self, client: storage.Client, key: str, name: str) -> bytes:
        try:
            return self._blob(client, name).download_as_bytes(checksum="crc32c", timeout=self._timeout, retry=RETRY)
        except api_errors.NotFound as err:
            raise self._no_object(client, key) from err

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        if length < 0:
            raise ValueError(f"length must not be negative, got {length}")
        name = self._name(key)
        if length == 0:
            if await self.head(key) is None:
                raise ObjectNotFound("no object under this key", sink=self._url, key=key)
            return b""
        return await self._run(key, "reading", self._get_range, key, name, start, length)

    def _get_range(self, client: storage.Client, key: str, name: str, start: int, length: int) -> bytes:
        blob = self._blob(client, name)
        try:
            if start >= 0:
                return blob.download_as_bytes(start=start, end=start + length - 1, timeout=self._timeout, retry=RETRY)
            # A suffix range ("bytes=-N"): the last N bytes, or all of a shorter object, in one request.
            data = blob.download_as_bytes(start=start, timeout=self._timeout, retry=RETRY)
            # HTTP lets a server ignore Range and send the whole object (gcp-storage-emulator does, for
            # suffix ranges): more than N bytes can only mean that, so take the suffix ourselves.
            return (data[start:] if len(data) > -start else data)[:length]
        except api_errors.RequestRangeNotSatisfiable:
            return b""  # 416: the range begins at or past the end (or the object is empty)
        except api_errors.NotFound as err:
            raise self._no_object(client, key) from err

    async def head(self, key: str) -> ObjectInfo | None:
        name = self._name(key)
        return await self._run(key, "reading metadata", self._head, key, name)

    def _head(self, client: storage.Client, key: str, name: str) -> ObjectInfo | None:
        blob = client.bucket(self._bucket).get_blob(name, timeout=self._timeout, retry=RETRY)
        if blob is None:
            if not self._bucket_exists(client):
                raise self._bucket_missing()
            return None
        return ObjectInfo(key, blob.size or 0, modified_ns(blob.updated))

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        validate_key(prefix, sink=self._url, prefix=True)
        # GCS lists in lexicographic order of the names' UTF-8 bytes, a page of up to 1000 at a time.
        pages = await self._run(None, "listing", self._pages, prefix)
        while (infos := await self._run(None, "listing", self._next_page, pages)) is not None:
            for info in infos:
                yield info

    def _pages(self, client: storage.Client, prefix: str) -> Iterator[Any]:
        blobs = client.list_blobs(
            self._bucket, prefix=self._prefix + prefix, fields=_LIST_FIELDS, timeout=self._timeout, retry=RETRY
        )
        return iter(blobs.pages)  # lazy: each next() fetches a page

    def _next_page(self, client: storage.Client, pages: Iterator[Any]) -> builtins.list[ObjectInfo] | None:
        page = next(pages, None)
        if page is None:
            return None
        skip = len(self._prefix)
        return [
            ObjectInfo(blob.name[skip:], blob.size or 0, modified_ns(blob.updated))
            for blob in page
            # Names ending in '/' are the console's "folder" placeholders, never keys of ours.
            if not blob.name.endswith("/")
        ]

    # -- housekeeping

    async def close(self) -> None:
        """Wait for calls in flight, then drop the pool and the client's connections. Calls still queued
        are cancelled: nobody waits for them any more (a mirror has given up on its background writes by
        now), and against an unreachable endpoint each would spend its retries before the process could exit."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._client is not None:
            self._client.close()
