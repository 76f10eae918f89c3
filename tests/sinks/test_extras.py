"""The cloud SDKs are optional extras: a URI whose SDK is not installed is refused with a typed error naming
the extra to install, never an ImportError. A missing SDK is simulated by blocking its module
(`sys.modules[name] = None` makes every import of it fail, as if it were not installed)."""

from __future__ import annotations

import sys

import pytest

from sinks import MissingExtra, SinkConfigError, open_sink

# scheme, the backend module, the SDK module it cannot do without, the extra that brings it
CASES = [
    ("s3", "sinks.s3", "aiobotocore", "s3"),
    ("gs", "sinks.gcs", "google.cloud.storage", "gcs"),
    ("az", "sinks.azure", "azure.storage.blob", "azure"),
]


def block(monkeypatch: pytest.MonkeyPatch, backend: str, sdk: str) -> None:
    """As if `sdk` were not installed and `backend` never imported."""
    monkeypatch.delitem(sys.modules, backend, raising=False)
    monkeypatch.setitem(sys.modules, sdk, None)
    for loaded in [name for name in sys.modules if name.startswith(sdk + ".")]:
        # an SDK submodule imported earlier (by another test) would be found there without its parent
        monkeypatch.setitem(sys.modules, loaded, None)
    parent, _, child = sdk.rpartition(".")
    if parent in sys.modules and sys.modules[parent] is not None:
        monkeypatch.delattr(sys.modules[parent], child, raising=False)  # `from parent import child` looks here first


@pytest.mark.parametrize(("scheme", "backend", "sdk", "extra"), CASES, ids=[c[0] for c in CASES])
def test_a_uri_whose_sdk_is_missing_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, scheme: str, backend: str, sdk: str, extra: str
):
    block(monkeypatch, backend, sdk)
    with pytest.raises(MissingExtra) as caught:
        open_sink(f"{scheme}://bucket/prefix")
    err = caught.value
    assert f"{scheme}:// needs warren's" in str(err)
    assert f"pip install 'warren[{extra}]'" in str(err)
    assert err.extra == extra and err.scheme == scheme
    assert isinstance(err, SinkConfigError) and not err.retryable
    assert isinstance(err.__cause__, ImportError)


def test_the_s3_message_reads_as_documented(monkeypatch: pytest.MonkeyPatch):
    block(monkeypatch, "sinks.s3", "aiobotocore")
    with pytest.raises(MissingExtra) as caught:
        open_sink("s3://bucket/prefix")
    assert str(caught.value).startswith("s3://bucket/prefix: s3:// needs warren's S3 support: pip install 'warren[s3]'")


def test_a_missing_sdk_leaves_the_other_backends_and_local_paths_usable(monkeypatch: pytest.MonkeyPatch, tmp_path):
    block(monkeypatch, "sinks.s3", "aiobotocore")
    block(monkeypatch, "sinks.gcs", "google.cloud.storage")
    block(monkeypatch, "sinks.azure", "azure.storage.blob")
    assert open_sink(str(tmp_path)).url
    assert open_sink(tmp_path.as_uri()).url
