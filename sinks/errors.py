"""Typed errors of the storage layer: what went wrong, on which sink, for which key, and whether to retry.

`sinks` must not import `bridge`, so this layer has its own root, `SinkError`; the CLI maps it to an
exit code alongside `bridge.errors.WarrenError`. `sink` is always a redacted description (never
credentials), and the underlying exception, when there is one, is chained as `__cause__`.
"""

from __future__ import annotations


class SinkError(Exception):
    """Root of every error raised by a sink; `retryable` says whether the same call may succeed later."""

    retryable: bool = False

    def __init__(self, detail: str, *, sink: str, key: str | None = None) -> None:
        where = sink if key is None else f"{sink}: key {key!r}"
        super().__init__(f"{where}: {detail}")
        self.detail = detail
        self.sink = sink
        self.key = key


class ObjectNotFound(SinkError):
    """No object under that key."""


class ObjectExists(SinkError):
    """A conditional create (`put(..., if_absent=True)`) found an object already under that key."""


class InvalidKey(SinkError):
    """A key that is not a safe relative path: a bug in the caller, refused before touching storage."""


class SinkUnavailable(SinkError):
    """A transient failure (I/O error, timeout, full disk): the same call may succeed later."""

    retryable = True


class SinkPermissionDenied(SinkError):
    """The storage refused us: credentials, ACLs, file modes or a read-only mount. Needs an operator."""


class SinkConfigError(SinkError):
    """The sink cannot be used as configured: bad URI, missing bucket, root that is not a directory."""


class MissingExtra(SinkConfigError):
    """The URI needs a cloud SDK that is not installed: `extra` names warren's optional extra that brings it."""

    def __init__(self, scheme: str, label: str, extra: str, *, sink: str, cause: str) -> None:
        super().__init__(
            f"{scheme}:// needs warren's {label} support: pip install 'warren[{extra}]' ({cause})", sink=sink
        )
        self.scheme = scheme
        self.extra = extra
