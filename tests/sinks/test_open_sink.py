"""open_sink: from a URI or path in the configuration to a sink, with errors an operator can act on."""

from __future__ import annotations

from pathlib import Path

import pytest

from sinks import LocalSink, ObjectNotFound, SinkConfigError, SinkUnavailable, open_sink, redact_url


def test_file_uri_opens_a_local_sink_at_that_path(tmp_path: Path):
    sink = open_sink((tmp_path / "my archive").as_uri())
    assert isinstance(sink, LocalSink)
    assert sink.root == tmp_path / "my archive"  # percent-escapes decoded


@pytest.mark.parametrize("uri", ["FILE:///srv/archive", "file://localhost/srv/archive"])
def test_file_uri_variants(uri: str):
    sink = open_sink(uri)
    assert isinstance(sink, LocalSink) and sink.root == Path("/srv/archive")


def test_plain_paths_open_local_sinks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    relative = open_sink("warren-archive")
    absolute = open_sink("/srv/archive")
    assert isinstance(relative, LocalSink) and relative.root == tmp_path / "warren-archive"
    assert isinstance(absolute, LocalSink) and absolute.root == Path("/srv/archive")


@pytest.mark.parametrize("uri", ["file://somehost/srv/archive", "file:///srv/archive?x=1", ""])
def test_unusable_local_uris_are_config_errors(uri: str):
    with pytest.raises(SinkConfigError):
        open_sink(uri)


def test_unknown_scheme_names_it_and_the_supported_ones():
    with pytest.raises(SinkConfigError) as caught:
        open_sink("ftp://user:hunter2@example.com/archive")
    message = str(caught.value)
    assert "'ftp'" in message
    for scheme in ("file://", "s3://", "gs://", "az://", "plain path"):
        assert scheme in message
    assert "hunter2" not in message and "user" not in message
    assert not caught.value.retryable


@pytest.mark.parametrize("scheme", ["s3", "gs", "az"])
def test_cloud_uris_with_credentials_in_them_are_refused_without_showing_them(scheme: str):
    with pytest.raises(SinkConfigError) as caught:
        open_sink(f"{scheme}://AKIAKEY:s3cr3t@bucket/prefix?sig=t0ken")
    assert "s3cr3t" not in str(caught.value) and "t0ken" not in str(caught.value)


def test_redact_url_masks_user_info_holding_slashes():
    assert redact_url("az://acct:Eby8/K1SZ+w==@container/p") == "az://***@container/p"


def test_redact_url_masks_user_info_and_query_values():
    assert redact_url("az://acct:key@container/p?sv=1&sig=abc") == "az://***@container/p?sv=***&sig=***"
    assert redact_url("s3://bucket/prefix") == "s3://bucket/prefix"


def test_errors_say_whether_to_retry():
    assert SinkUnavailable("timed out", sink="s3://b").retryable
    assert not ObjectNotFound("gone", sink="s3://b", key="k").retryable
    error = ObjectNotFound("no object under this key", sink="file:///srv/archive", key="seg/1")
    assert str(error) == "file:///srv/archive: key 'seg/1': no object under this key"
