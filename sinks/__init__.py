"""Object storage for the archive: one small interface (`Sink`), one module per backend.

`open_sink` turns a URI into a sink: `file:///abs/path` or a plain path for the local filesystem;
`s3://`, `gs://` and `az://` for the cloud backends. A backend registers itself with one line in
`BACKENDS`, and imports its SDK inside its factory: each cloud SDK is an optional extra of warren's
(`warren[s3]`, `warren[gcs]`, `warren[azure]`, or `warren[all]`), and a URI whose extra is missing is
refused with `MissingExtra`, naming the extra to install.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sinks.base import ObjectInfo, Sink, redact_url, validate_key
from sinks.errors import (
    InvalidKey,
    MissingExtra,
    ObjectExists,
    ObjectNotFound,
    SinkConfigError,
    SinkError,
    SinkPermissionDenied,
    SinkUnavailable,
)
from sinks.local import LocalSink

__all__ = [
    "BACKENDS",
    "InvalidKey",
    "LocalSink",
    "MissingExtra",
    "ObjectExists",
    "ObjectInfo",
    "ObjectNotFound",
    "Sink",
    "SinkConfigError",
    "SinkError",
    "SinkPermissionDenied",
    "SinkUnavailable",
    "open_sink",
    "redact_url",
    "validate_key",
]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def _open_file(uri: str) -> Sink:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise SinkConfigError(
            f"a file URI names a local absolute path (file:///path), not host {parts.netloc!r}", sink=redact_url(uri)
        )
    if parts.query or parts.fragment:
        raise SinkConfigError("a file URI takes no query or fragment", sink=redact_url(uri))
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise SinkConfigError("a file URI needs an absolute path: file:///path", sink=redact_url(uri))
    return LocalSink(Path(path))


# Each cloud backend imports its SDK only when a sink of its kind is opened.


@contextlib.contextmanager
def _needs_extra(scheme: str, label: str, extra: str, uri: str) -> Iterator[None]:
    """Importing a backend: its SDK missing (or broken) is the extra to install, not a traceback."""
    try:
        yield
    except ImportError as err:
        raise MissingExtra(scheme, label, extra, sink=redact_url(uri), cause=str(err)) from err


def _open_s3(uri: str) -> Sink:
    with _needs_extra("s3", "S3", "s3", uri):
        from sinks.s3 import S3Sink
    return S3Sink(uri)


def _open_gcs(uri: str) -> Sink:
    with _needs_extra("gs", "Google Cloud Storage", "gcs", uri):
        from sinks.gcs import GCSSink
    return GCSSink.from_uri(uri)


def _open_azure(uri: str) -> Sink:
    with _needs_extra("az", "Azure Blob Storage", "azure", uri):
        from sinks.azure import AzureBlobSink
    return AzureBlobSink.from_uri(uri)


# scheme -> factory taking the full URI (credentials included; a factory must redact them in errors).
BACKENDS: dict[str, Callable[[str], Sink]] = {
    "file": _open_file,
    "s3": _open_s3,
    "gs": _open_gcs,
    "az": _open_azure,
}


def open_sink(uri: str) -> Sink:
    """The sink a URI or plain path (relative or absolute) names; SinkConfigError if it names none.

    Opening touches no storage: call `check()` on the result at start.
    """
    if not uri or "\0" in uri:
        raise SinkConfigError("empty sink URI or path, or one containing NUL", sink=repr(redact_url(uri)))
    match = _SCHEME.match(uri)
    if match is None:
        return LocalSink(Path(uri))
    scheme = match.group(1).lower()
    factory = BACKENDS.get(scheme)
    if factory is None:
        supported = ", ".join(f"{name}://" for name in BACKENDS)
        raise SinkConfigError(
            f"unknown sink scheme {scheme!r}; supported: {supported}, or a plain path", sink=redact_url(uri)
        )
    return factory(uri)
