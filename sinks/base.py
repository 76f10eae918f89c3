"""The one interface every storage backend implements, and the rules all of them share.

A sink stores whole objects under keys, like an object store: no appends, no partial objects, no
directories. Keys are '/'-separated relative paths of safe characters (the archive layer escapes
names); every backend still refuses unsafe keys through `validate_key`, so a bug upstream cannot
write outside the sink.
"""

from __future__ import annotations

import abc
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from urllib.parse import parse_qsl, urlsplit

from sinks.errors import InvalidKey, SinkError

# Keys under this prefix belong to warren itself (start-up probes), never to the archive.
RESERVED_PREFIX = "_warren/"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    modified_ns: int  # last modification, nanoseconds since the Unix epoch


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def modified_ns(moment: datetime | None) -> int:
    """A store's (timezone-aware) modification time as `ObjectInfo.modified_ns`; 0 if it gave none."""
    if moment is None:
        return 0
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def validate_key(key: str, *, sink: str, prefix: bool = False) -> str:
    """Return `key` if it is a safe relative key, else raise InvalidKey.

    With `prefix=True` it checks a `list()` prefix instead: it may be empty, and its last segment is
    only a partial name ("seg-00", or "" after a trailing '/'), so only the segments before it must
    be whole, safe names.
    """
    if "\0" in key:
        raise InvalidKey("key contains a NUL character", sink=sink, key=key)
    if key.startswith("/"):
        raise InvalidKey("key must be relative, not start with '/'", sink=sink, key=key)
    if prefix and not key:
        return key
    segments = key.split("/")
    if prefix:
        segments = segments[:-1]
    for segment in segments:
        if segment in ("", ".", ".."):
            raise InvalidKey(f"key has an empty, '.' or '..' segment ({segment!r})", sink=sink, key=key)
    return key


def redact_url(uri: str) -> str:
    """`uri` without user info and with query values masked, safe for logs and error messages."""
    scheme, sep, rest = uri.partition("://")
    authority_end = len(rest.split("?", 1)[0].split("#", 1)[0])
    at = rest.rfind("@", 0, authority_end)
    if sep and at >= 0:
        # User info may hold '/' (base64 keys), which urlsplit would take for the start of the path.
        uri = f"{scheme}://***@{rest[at + 1 :]}"
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable sink URI>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = "&".join(f"{name}=***" for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    return parts._replace(netloc=netloc, query=query, fragment="").geturl()


class Sink(abc.ABC):
    """Object storage for the archive: the same few verbs on every backend.

    Every method may raise a `SinkError` subclass; `SinkUnavailable` is the only retryable one. Every
    backend bounds each call in time (`sinks.deadlines`): a stalled store is SinkUnavailable, never a hang.
    """

    # The smallest segment the archiver rolls while the broker waits for acknowledgements, as a share of
    # the window. Each object on object storage costs a request (a round trip, a client's CPU, a fee), so
    # fewer and larger ones keep more messages moving; a local file costs an fsync (LocalSink: 1/8).
    min_segment_share = 0.4

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """Where this sink stores objects, redacted: safe to log."""

    @abc.abstractmethod
    async def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        """Store `data` under `key` atomically: readers see no object or the whole object.

        Overwrites an existing object, unless `if_absent`, which raises ObjectExists instead (a
        conditional create, so a retried write cannot clobber a different object).
        """

    @abc.abstractmethod
    async def get(self, key: str) -> bytes:
        """The whole object; ObjectNotFound if there is none."""

    @abc.abstractmethod
    async def get_range(self, key: str, start: int, length: int) -> bytes:
        """Up to `length` bytes from offset `start`; fewer, or none, if the object ends sooner.

        A negative `start` counts from the end, like an HTTP suffix range: -N begins N bytes before
        the end (at the beginning if the object is shorter), which is how a footer is read. A negative
        `length` is a ValueError.
        """

    @abc.abstractmethod
    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size and modification time, or None if there is no object under `key`."""

    @abc.abstractmethod
    def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with `prefix` (a plain string prefix, not necessarily ending in
        '/'), in lexicographic order of the keys' code points (= their UTF-8 bytes, as S3 lists)."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and clients; the sink is not used afterwards."""

    async def check(self) -> None:
        """Verify at start that the sink is reachable and writable, by writing, reading back and deleting
        a probe object under the reserved prefix. Backends extend it with their own preparation.
        """
        key = f"{RESERVED_PREFIX}probe-{secrets.token_hex(8)}"
        probe = b"warren start-up probe " + key.encode()
        step = "write"
        try:
            await self.put(key, probe, if_absent=True)
            step = "read back"
            if await self.get(key) != probe:
                raise SinkError("the probe object read back differs from what was written", sink=self.url, key=key)
            step = "delete"
            await self.delete(key)
        except SinkError as err:
            if err.key != key:
                raise
            # Same class (so `retryable` still tells the truth), with a message saying what was being checked.
            detail = f"start-up check could not {step} a probe object: {err.detail}"
            raise type(err)(detail, sink=err.sink, key=key) from err

    async def __aenter__(self) -> Sink:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
