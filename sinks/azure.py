"""A sink on Azure Blob Storage: `az://container/prefix`, one block blob per object.

The container must exist (`check()` says so, naming it, if it does not); keys live under the URI's
prefix. Credentials never appear in the URI, only in the environment, tried in this order:

- `?connection-string-env=NAME`: the connection string in environment variable NAME;
- `?account-url=https://ACCOUNT.blob.core.windows.net`: with a SAS token in `AZURE_STORAGE_SAS_TOKEN`,
  else the account key in `AZURE_STORAGE_KEY` (account name from `AZURE_STORAGE_ACCOUNT`, else from
  the URL), else `DefaultAzureCredential` when azure-identity is installed;
- otherwise the connection string in `AZURE_STORAGE_CONNECTION_STRING`.

Storage accounts with a hierarchical namespace (Data Lake Gen2) are not supported: there a key is
also a directory, and listings are not in plain lexicographic order.

Every request attempt is bounded (see `sinks.deadlines`): the SDK's connection and read timeouts, and
a transport of our own that hands the body over a slice at a time and gives up on an upload that stops
moving or a request that outlives its size's deadline; the SDK retries that as a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    HttpResponseError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.transport import AioHttpTransport
from azure.storage.blob.aio import BlobClient, ContainerClient, ExponentialRetry

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
from sinks.location import BucketLocation, parse_bucket_uri

MiB = 1024 * 1024

RETRIES = 2  # the SDK's own retries; callers retry SinkUnavailable at their own pace
SINGLE_PUT_MAX = 8 * MiB  # larger objects go up as blocks, several at a time, each MD5-checked
BLOCK_SIZE = 4 * MiB
CONCURRENCY = 4  # blocks (or download chunks) in flight per object
MAX_BLOB_NAME = 1024  # characters, Azure's limit on a blob name (prefix included)
_SUFFIX_ATTEMPTS = 3  # reads of an object's end, when it is replaced between sizing and reading it

_CONTAINER = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
_CONTAINER_RULE = "3-63 lowercase letters, digits and single inner hyphens"
_OPTIONS = ("account-url", "connection-string-env")
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class _Account:
    """How to reach and sign in to the storage account; its repr shows no secret."""

    connection_string: str | None = field(default=None, repr=False)
    account_url: str | None = None
    credential: str | dict[str, str] | None = field(default=None, repr=False)  # SAS token or account key
    default_credential: bool = False
    secrets: tuple[str, ...] = field(default=(), repr=False)  # scrubbed from every message we build


def _describe(uri: str) -> str:
    """`uri` safe for a message: not shown at all if it has an '@' before its query (user info, which
    may hold a '/') or a ':' in its host part (a key without an '@', or a port), else redacted."""
    try:
        netloc = urlsplit(uri).netloc
    except ValueError:
        return redact_url(uri)  # "<unparseable sink URI>"
    if "@" in uri.partition("?")[0] or ":" in netloc:
        return "az://*** (the URI holds credentials or a port; not shown)"
    return redact_url(uri)


def _config_error(uri: str, detail: str) -> SinkConfigError:
    return SinkConfigError(detail, sink=_describe(uri))


def _account_name(url: str) -> str:
    """The account an account URL names: its first path segment (emulators, as Azurite's
    http://127.0.0.1:10000/devstoreaccount1), else its first host label (ACCOUNT.blob.core.windows.net)."""
    parts = urlsplit(url)
    return parts.path.strip("/").split("/")[0] or (parts.hostname or "").split(".")[0]


def _connection_string_secrets(connection_string: str) -> tuple[str, ...]:
    values = (item.partition("=") for item in connection_string.split(";"))
    found = [value for name, _, value in values if name.strip().lower() in ("accountkey", "sharedaccesssignature")]
    return (connection_string, *(value for value in found if value))


def _resolve_account(uri: str, options: Mapping[str, str]) -> _Account:
    env_name = options.get("connection-string-env")
    account_url = options.get("account-url")
    if env_name is not None and account_url is not None:
        raise _config_error(uri, "give either account-url or connection-string-env, not both")
    if env_name is not None:
        connection_string = os.environ.get(env_name, "")
        if not connection_string:
            raise _config_error(uri, f"connection-string-env names ${env_name}, which is not set or empty")
        return _Account(connection_string=connection_string, secrets=_connection_string_secrets(connection_string))
    if account_url is not None:
        parts = urlsplit(account_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _config_error(uri, "account-url must be an http(s) URL, like https://ACCOUNT.blob.core.windows.net")
        if parts.query or parts.username or parts.password or parts.fragment:
            raise _config_error(
                uri, "account-url must carry no credentials: put a SAS token in $AZURE_STORAGE_SAS_TOKEN instead"
            )
        account_url = account_url.rstrip("/")
        if sas := os.environ.get("AZURE_STORAGE_SAS_TOKEN", "").lstrip("?"):
            signatures = tuple(value for name, value in parse_qsl(sas) if name == "sig")
            return _Account(account_url=account_url, credential=sas, secrets=(sas, *signatures))
        if key := os.environ.get("AZURE_STORAGE_KEY", ""):
            name = os.environ.get("AZURE_STORAGE_ACCOUNT") or _account_name(account_url)
            return _Account(
                account_url=account_url, credential={"account_name": name, "account_key": key}, secrets=(key,)
            )
        if importlib.util.find_spec("azure.identity") is not None:
            return _Account(account_url=account_url, default_credential=True)
        raise _config_error(
            uri,
            "account-url needs a credential: set $AZURE_STORAGE_SAS_TOKEN, or $AZURE_STORAGE_KEY "
            "(and $AZURE_STORAGE_ACCOUNT), or install azure-identity for DefaultAzureCredential",
        )
    if connection_string := os.environ.get("AZURE_STORAGE_CONNECTION_STRING", ""):
        return _Account(connection_string=connection_string, secrets=_connection_string_secrets(connection_string))
    raise _config_error(
        uri,
        "no Azure credentials: set $AZURE_STORAGE_CONNECTION_STRING, or add ?connection-string-env=NAME, "
        "or ?account-url=https://ACCOUNT.blob.core.windows.net with $AZURE_STORAGE_SAS_TOKEN or $AZURE_STORAGE_KEY",
    )


class _BoundedTransport(AioHttpTransport):
    """The SDK's aiohttp transport, with `deadlines` on every request attempt (`sinks.deadlines.bounded`)."""

    def __init__(self, deadlines: Deadlines, **kwargs: Any) -> None:
        super().__init__(connection_timeout=deadlines.connect, read_timeout=deadlines.stall, **kwargs)
        self._deadlines = deadlines

    async def send(self, request: Any, **config: Any) -> Any:
        data = getattr(request, "data", None)
        upload = None
        if isinstance(data, bytes | bytearray) and data and not getattr(request, "files", None):
            upload = Upload(data)
            request.data = upload  # read once, as the attempt starts; put back for a retry
        try:
            return await bounded(
                super().send(request, **config),
                self._deadlines,
                size=content_length(request.headers, data),
                upload=upload,
            )
        except Stalled as err:
            raise ServiceResponseTimeoutError(f"request stalled: {err.reason}", error=err) from err
        finally:
            if upload is not None:
                request.data = data


def _stall(err: BaseException) -> Stalled | None:
    chain: list[BaseException] = [err]
    while (inner := getattr(chain[-1], "inner_exception", None) or chain[-1].__cause__) is not None:
        if inner in chain:
            break
        chain.append(inner)
    return next((link for link in chain if isinstance(link, Stalled)), None)


def _code(err: HttpResponseError) -> str:
    code = getattr(err, "error_code", None)  # set by the storage SDK on the errors it raises, not by azure-core
    return str(getattr(code, "value", code) or "")


def _reason(err: BaseException) -> str:
    """A short cause an operator can read ('Connection refused', 'timed out'), from the chained errors."""
    chain = [err]
    while (inner := getattr(chain[-1], "inner_exception", None) or chain[-1].__cause__) is not None:
        if inner in chain:
            break
        chain.append(inner)
    if any(isinstance(link, TimeoutError | ServiceRequestTimeoutError | ServiceResponseTimeoutError) for link in chain):
        return "timed out"
    innermost = chain[-1]
    if isinstance(innermost, OSError) and innermost.errno:
        return os.strerror(innermost.errno)
    return type(innermost).__name__


class AzureBlobSink(Sink):
    """Objects as block blobs in one container, under an optional prefix.

    The SDK client is made on first use and belongs to the event loop it was made in; a sink used from
    another loop (tests run each step in a fresh one) makes a new client and closes the old in close().
    """

    def __init__(
        self, location: BucketLocation, account: _Account, *, deadlines: Deadlines = DEFAULT_DEADLINES
    ) -> None:
        self._deadlines = deadlines
        self._container_name = location.bucket
        self._prefix = location.prefix
        self._account = account
        self._url = location.url
        self._client: ContainerClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opened: list[tuple[ContainerClient, Any]] = []  # every client made, with its token credential
        client, credential = self._new_client()  # a malformed connection string fails here, at open
        self._opened.append((client, credential))
        self._client = client
        self._endpoint = f"{client.scheme}://{client.primary_hostname}"  # no query, so no SAS

    @classmethod
    def from_uri(cls, uri: str, *, deadlines: Deadlines = DEFAULT_DEADLINES) -> AzureBlobSink:
        """The sink `az://container/prefix?options` names (see the module docstring); SinkConfigError if
        the URI is malformed or no credentials are configured. Touches no storage."""
        location = parse_bucket_uri(
            uri,
            scheme="az",
            what="container",
            name_pattern=_CONTAINER,
            name_rule=_CONTAINER_RULE,
            credentials_hint="they come from the environment (see connection-string-env= and account-url=)",
            options=_OPTIONS,
            sink=_describe(uri),
        )
        return cls(location, _resolve_account(uri, location.options), deadlines=deadlines)

    @property
    def url(self) -> str:
        return self._url

    @property
    def endpoint(self) -> str:
        """The storage account's endpoint, e.g. https://ACCOUNT.blob.core.windows.net: safe to log."""
        return self._endpoint

    def __repr__(self) -> str:
        return f"AzureBlobSink({self._url!r}, endpoint={self._endpoint!r})"

    # -- clients, keys and errors

    def _new_client(self) -> tuple[ContainerClient, Any]:
        options: dict[str, Any] = {
            # Connection and read timeouts are the transport's: a few seconds to connect, then `stall`.
            "transport": _BoundedTransport(self._deadlines),
            # Waits of about 1.5 s then 2.25 s: a dead endpoint fails within seconds, a busy one gets a breather.
            "retry_policy": ExponentialRetry(  # the SDK annotates int, and computes with any number
                initial_backoff=0,
                increment_base=1.5,  # type: ignore[arg-type]
                retry_total=RETRIES,
                random_jitter_range=0.5,  # type: ignore[arg-type]
            ),
            "max_single_put_size": SINGLE_PUT_MAX,
            "max_block_size": BLOCK_SIZE,
        }
        account = self._account
        if account.connection_string is not None:
            try:
                client = ContainerClient.from_connection_string(
                    account.connection_string, self._container_name, **options
                )
            except ValueError:
                raise SinkConfigError("the Azure connection string is malformed", sink=self._url) from None
            return client, None
        assert account.account_url is not None
        credential: Any = account.credential
        token_credential = None
        if account.default_credential:
            from azure.identity.aio import DefaultAzureCredential  # optional: only for account-url without a key

            credential = token_credential = DefaultAzureCredential()
        client = ContainerClient(account.account_url, self._container_name, credential=credential, **options)
        return client, token_credential

    def _container(self) -> ContainerClient:
        """The client for the running event loop (aiohttp sessions cannot cross loops)."""
        loop = asyncio.get_running_loop()
        if self._client is None or (self._loop is not None and self._loop is not loop):
            self._client, credential = self._new_client()
            self._opened.append((self._client, credential))
        self._loop = loop
        return self._client

    def _blob(self, key: str) -> BlobClient:
        validate_key(key, sink=self._url)
        name = self._prefix + key
        if len(name) > MAX_BLOB_NAME:
            raise InvalidKey(f"the blob name would exceed Azure's {MAX_BLOB_NAME} characters", sink=self._url, key=key)
        return self._container().get_blob_client(name)

    def _scrub(self, text: str) -> str:
        for secret in self._account.secrets:
            text = text.replace(secret, "***")
        return text

    def _error(self, err: Exception, key: str | None, doing: str, *, if_absent: bool = False) -> SinkError:
        if isinstance(err, ServiceRequestError | ServiceResponseError | DecodeError | aiohttp.ClientError | OSError):
            if stalled := self._stalled(err):
                return SinkUnavailable(f"{doing}: {self._endpoint} {stalled}", sink=self._url, key=key)
            return SinkUnavailable(
                f"{doing}: no answer from {self._endpoint} ({self._scrub(_reason(err))})", sink=self._url, key=key
            )
        if not isinstance(err, HttpResponseError):
            return SinkError(f"{doing}: {type(err).__name__} from the Azure SDK", sink=self._url, key=key)
        code, status = _code(err), err.status_code or 0
        answered = f"{self._endpoint} answered {status} {code}".rstrip()
        if code == "ContainerNotFound":
            return SinkConfigError(
                f"the container {self._container_name!r} does not exist at {self._endpoint}; create it first",
                sink=self._url,
            )
        if status == 404:
            return ObjectNotFound("no object under this key", sink=self._url, key=key)
        if if_absent and (code == "BlobAlreadyExists" or status == 412):
            return ObjectExists("an object already exists under this key", sink=self._url, key=key)
        if isinstance(err, ClientAuthenticationError) or status in (401, 403):
            return SinkPermissionDenied(
                f"{doing}: {answered}: check the credentials and what they may do", sink=self._url, key=key
            )
        if status in _TRANSIENT_STATUS or code == "Md5Mismatch":  # a mismatch is data damaged on the way
            return SinkUnavailable(f"{doing}: {answered}", sink=self._url, key=key)
        return SinkError(f"{doing}: {answered}", sink=self._url, key=key)

    def _stalled(self, err: BaseException) -> str:
        """How a request passed its deadline, or '' if `err` is no timeout."""
        if (stall := _stall(err)) is not None:
            return f"stalled: {stall.reason}"
        if isinstance(err, ServiceRequestTimeoutError):
            return f"did not accept a connection within {self._deadlines.connect:g}s"
        if _reason(err) == "timed out":
            return f"stalled: no answer for {self._deadlines.stall:g}s"
        return ""

    @contextlib.contextmanager
    def _translate(self, key: str | None, doing: str, *, if_absent: bool = False) -> Iterator[None]:
        try:
            yield
        except (AzureError, aiohttp.ClientError, OSError) as err:
            raise self._error(err, key, doing, if_absent=if_absent) from err

    # -- writing

    async def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        blob = self._blob(key)
        with self._translate(key, "writing", if_absent=if_absent):
            # overwrite=False sends If-None-Match: * (with the block list, for a block upload): a
            # conditional create the service decides atomically.
            await blob.upload_blob(
                data,
                length=len(data),
                overwrite=not if_absent,
                validate_content=True,
                max_concurrency=CONCURRENCY,
            )

    async def delete(self, key: str) -> None:
        blob = self._blob(key)
        with self._translate(key, "deleting"):
            try:
                await blob.delete_blob(delete_snapshots="include")
            except HttpResponseError as err:
                if err.status_code != 404 or _code(err) == "ContainerNotFound":
                    raise

    # -- reading

    async def get(self, key: str) -> bytes:
        blob = self._blob(key)
        with self._translate(key, "reading"):
            download = await blob.download_blob(max_concurrency=CONCURRENCY)
            return await download.readall()

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        if length < 0:
            raise ValueError(f"length must not be negative, got {length}")
        blob = self._blob(key)
        with self._translate(key, "reading"):
            if start >= 0 and length > 0:
                try:
                    download = await blob.download_blob(offset=start, length=length, max_concurrency=CONCURRENCY)
                    return await download.readall()
                except HttpResponseError as err:
                    if _code(err) == "InvalidRange":  # starts at or past the end (or the object is empty)
                        return b""
                    raise
            # Azure has no suffix ranges: the size says where the end begins, and the ETag makes the read
            # fail rather than mix versions if the object is replaced in between.
            for _ in range(_SUFFIX_ATTEMPTS):
                properties = await blob.get_blob_properties()
                offset = max(properties.size + start, 0) if start < 0 else start
                if length == 0 or offset >= properties.size:
                    return b""
                try:
                    download = await blob.download_blob(
                        offset=offset,
                        length=length,
                        etag=properties.etag,
                        match_condition=MatchConditions.IfNotModified,
                        max_concurrency=CONCURRENCY,
                    )
                    return await download.readall()
                except HttpResponseError as err:
                    if err.status_code != 412:
                        raise
        raise SinkUnavailable("the object kept being replaced while its end was read", sink=self._url, key=key)

    async def head(self, key: str) -> ObjectInfo | None:
        blob = self._blob(key)
        with self._translate(key, "reading metadata"):
            try:
                properties = await blob.get_blob_properties()
            except HttpResponseError as err:
                if err.status_code == 404 and _code(err) != "ContainerNotFound":
                    return None
                raise
        return ObjectInfo(key, properties.size, modified_ns(properties.last_modified))

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        validate_key(prefix, sink=self._url, prefix=True)
        container = self._container()
        cut = len(self._prefix)
        # The service lists blob names in lexicographic order, page by page.
        with self._translate(None, "listing"):
            async for blob in container.list_blobs(name_starts_with=self._prefix + prefix):
                yield ObjectInfo(blob.name[cut:], blob.size, modified_ns(blob.last_modified))

    # -- housekeeping

    async def close(self) -> None:
        """Close every client this sink made (and their credentials), in whichever loop they were made."""
        opened, self._opened = self._opened, []
        self._client = self._loop = None
        for client, credential in opened:
            # A client whose loop has ended has nothing left to flush; closing it only marks it closed.
            with contextlib.suppress(Exception):
                await client.close()
            if credential is not None:
                with contextlib.suppress(Exception):
                    await credential.close()
