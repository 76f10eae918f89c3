"""What only the Azure sink does: block uploads, its URI and credentials, and its failures, on Azurite.

The behaviour every sink shares is in test_contract.py, which runs against Azure too.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta

import pytest

from protocol.loop import run
from sinks import (
    InvalidKey,
    ObjectExists,
    ObjectNotFound,
    SinkConfigError,
    SinkError,
    SinkPermissionDenied,
    SinkUnavailable,
)
from sinks.azure import BLOCK_SIZE, SINGLE_PUT_MAX, AzureBlobSink
from tests.sinks.emulators_azure import ACCOUNT, ACCOUNT_KEY, Azurite

MiB = 1024 * 1024


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def committed_blocks(emulator: Azurite, container: str, name: str) -> int:
    from azure.storage.blob.aio import BlobClient

    async with BlobClient.from_connection_string(emulator.connection_string, container, name) as blob:
        committed, _ = await blob.get_block_list("committed")
        return len(committed)


def container_of(sink: AzureBlobSink) -> str:
    return sink.url.removeprefix("az://").split("/")[0]


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert ACCOUNT_KEY not in text and ACCOUNT_KEY[:20] not in text, text


# -- large objects


def test_a_20_MiB_object_round_trips_through_block_upload(azure_sink: AzureBlobSink, azure_emulator: Azurite):
    data = payload(20 * MiB)
    assert len(data) > SINGLE_PUT_MAX

    async def body() -> tuple[bytes, bytes, bytes, int]:
        await azure_sink.put("big/segment", data)
        blocks = await committed_blocks(azure_emulator, container_of(azure_sink), "some/prefix/big/segment")
        across = await azure_sink.get_range("big/segment", BLOCK_SIZE - 8, 16)
        return await azure_sink.get("big/segment"), across, await azure_sink.get_range("big/segment", -100, 64), blocks

    whole, across_blocks, footer, blocks = run(body())
    assert whole == data
    assert across_blocks == data[BLOCK_SIZE - 8 : BLOCK_SIZE + 8]
    assert footer == data[-100:-36]
    assert blocks == 5  # 20 MiB in 4 MiB blocks, not one put


def test_a_conditional_block_upload_onto_an_existing_key_raises_and_keeps_the_original(azure_sink: AzureBlobSink):
    async def body() -> bytes:
        await azure_sink.put("big/checkpoint", b"original")
        with pytest.raises(ObjectExists):
            await azure_sink.put("big/checkpoint", payload(12 * MiB), if_absent=True)
        return await azure_sink.get("big/checkpoint")

    assert run(body()) == b"original"


def test_concurrent_conditional_block_uploads_store_exactly_the_winners_bytes(azure_sink: AzureBlobSink):
    versions = [payload(10 * MiB, seed) for seed in range(3)]

    async def body() -> tuple[list[object], bytes]:
        outcomes = await asyncio.gather(
            *(azure_sink.put("race/big", data, if_absent=True) for data in versions), return_exceptions=True
        )
        return outcomes, await azure_sink.get("race/big")

    outcomes, stored = run(body())
    winners = [n for n, outcome in enumerate(outcomes) if outcome is None]
    assert len(winners) == 1, outcomes
    assert all(isinstance(outcome, ObjectExists) for outcome in outcomes if outcome is not None)
    assert stored == versions[winners[0]]  # no blocks of the losers mixed in


# -- failures


def test_a_missing_container_is_a_permanent_config_error_naming_it(
    azure_emulator: Azurite, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azure_emulator.connection_string)
    sink = AzureBlobSink.from_uri("az://no-such-container/prefix")

    async def attempts() -> list[object]:
        outcomes: list[object] = []
        for attempt in (
            sink.check(),
            sink.put("k", b"x"),
            sink.get("k"),
            sink.get_range("k", -4, 4),
            sink.head("k"),
            sink.delete("k"),
        ):
            try:
                outcomes.append(await attempt)
            except SinkError as err:
                outcomes.append(err)
        try:
            outcomes.append([info async for info in sink.list("")])
        except SinkError as err:
            outcomes.append(err)
        await sink.close()
        return outcomes

    for outcome in run(attempts()):
        assert isinstance(outcome, SinkConfigError), outcome
        assert "'no-such-container'" in str(outcome) and "does not exist" in str(outcome)
        assert not outcome.retryable


def test_a_stopped_emulator_makes_calls_unavailable_within_seconds_naming_the_endpoint(
    azure_sink: AzureBlobSink, azure_emulator: Azurite
):
    run(azure_sink.put("before", b"x"))
    azure_emulator.stop()
    try:
        for attempt in (azure_sink.put("k", b"x"), azure_sink.get("before"), azure_sink.head("before")):
            started = time.monotonic()
            with pytest.raises(SinkUnavailable) as caught:
                run(attempt)
            assert time.monotonic() - started < 10
            assert caught.value.retryable
            assert azure_emulator.endpoint in str(caught.value)
            assert_no_secret(str(caught.value))
    finally:
        azure_emulator.start()
    # Same port, data gone: once its container is back, the same sink works again.
    run(azure_emulator._create_container(container_of(azure_sink)))
    run(azure_sink.put("after", b"y"))
    assert run(azure_sink.get("after")) == b"y"


def test_a_wrong_account_key_is_permission_denied_without_showing_any_key(
    azure_emulator: Azurite, monkeypatch: pytest.MonkeyPatch
):
    wrong_key = "d3JvbmcgYnV0IHdlbGwtZm9ybWVkIGJhc2U2NCBrZXkgZm9yIHRoZSB0ZXN0cw=="
    container = azure_emulator.create_container()
    monkeypatch.setenv("WARREN_AZURE", azure_emulator.connection_string.replace(ACCOUNT_KEY, wrong_key))
    sink = AzureBlobSink.from_uri(f"az://{container}/p?connection-string-env=WARREN_AZURE")
    try:
        with pytest.raises(SinkPermissionDenied) as caught:
            run(sink.check())
    finally:
        run(sink.close())
        azure_emulator.delete_container(container)
    assert not caught.value.retryable
    assert "403" in str(caught.value)
    for text in (str(caught.value), repr(caught.value), sink.url, repr(sink)):
        assert wrong_key not in text and wrong_key[:20] not in text


def test_no_error_message_or_url_shows_the_account_key(azure_sink: AzureBlobSink, monkeypatch: pytest.MonkeyPatch):
    async def errors() -> list[SinkError]:
        found: list[SinkError] = []
        for attempt in (azure_sink.get("missing"), azure_sink.put("a/../b", b""), azure_sink.get_range("m", 0, 1)):
            try:
                await attempt
            except SinkError as err:
                found.append(err)
        return found

    caught = run(errors())
    assert [type(err) for err in caught] == [ObjectNotFound, InvalidKey, ObjectNotFound]
    monkeypatch.setenv("BROKEN", f"AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};nonsense")
    for uri in ("az://c0ntainer/p?connection-string-env=BROKEN", f"az://{ACCOUNT}:{ACCOUNT_KEY}@container/p"):
        with pytest.raises(SinkConfigError) as config_error:
            AzureBlobSink.from_uri(uri)
        caught.append(config_error.value)
    for err in caught:
        assert_no_secret(str(err), repr(err), err.sink)
    assert_no_secret(azure_sink.url, repr(azure_sink), azure_sink.endpoint)


# -- URIs and credentials


def test_account_url_with_an_account_key_from_the_environment(azure_emulator: Azurite, monkeypatch: pytest.MonkeyPatch):
    container = azure_emulator.create_container()
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.delenv("AZURE_STORAGE_SAS_TOKEN", raising=False)
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT", raising=False)  # the name comes from the emulator-style URL
    monkeypatch.setenv("AZURE_STORAGE_KEY", ACCOUNT_KEY)
    sink = AzureBlobSink.from_uri(f"az://{container}/keyed?account-url={azure_emulator.endpoint}")
    try:
        run(sink.check())
        run(sink.put("k", b"signed with the key"))
        assert run(sink.get("k")) == b"signed with the key"
    finally:
        run(sink.close())
        azure_emulator.delete_container(container)


def test_account_url_with_a_sas_token_from_the_environment(azure_emulator: Azurite, monkeypatch: pytest.MonkeyPatch):
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    container = azure_emulator.create_container()
    token = generate_container_sas(
        ACCOUNT,
        container,
        account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True, create=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.delenv("AZURE_STORAGE_KEY", raising=False)
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "?" + token)
    sink = AzureBlobSink.from_uri(f"az://{container}?account-url={azure_emulator.endpoint}")
    try:
        run(sink.check())
        run(sink.put("k", b"signed with a SAS"))
        assert run(sink.get("k")) == b"signed with a SAS"
        with pytest.raises(ObjectNotFound) as caught:
            run(sink.get("missing"))
    finally:
        run(sink.close())
        azure_emulator.delete_container(container)
    signature = dict(part.split("=", 1) for part in token.split("&"))["sig"]
    for text in (str(caught.value), sink.url, repr(sink), sink.endpoint):
        assert token not in text and signature not in text


def test_url_is_the_container_and_prefix(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", f"AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY}")
    assert AzureBlobSink.from_uri("az://archive/site-a/prod/").url == "az://archive/site-a/prod"
    assert AzureBlobSink.from_uri("az://archive").url == "az://archive"
    assert AzureBlobSink.from_uri("az://archive").endpoint == f"https://{ACCOUNT}.blob.core.windows.net"


@pytest.mark.parametrize(
    ("uri", "complaint"),
    [
        ("az://Archive/p", "container name"),
        ("az://ab/p", "container name"),
        ("az://a--b/p", "container name"),
        ("az://archive/a/../b", "prefix"),
        ("az://archive/p?sig=abc", "unknown option 'sig'"),
        ("az://archive/p?account-url=https://x.blob.core.windows.net&connection-string-env=X", "not both"),
        ("az://archive/p?account-url=https://x.blob.core.windows.net?sv=1%26sig=abc", "no credentials"),
        ("az://archive/p?connection-string-env=WARREN_UNSET_VARIABLE", "$WARREN_UNSET_VARIABLE"),
        ("az://user:hunter2@archive/p", "takes no credentials"),
    ],
)
def test_unusable_uris_are_config_errors_saying_why(uri: str, complaint: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", f"AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY}")
    monkeypatch.delenv("WARREN_UNSET_VARIABLE", raising=False)
    with pytest.raises(SinkConfigError) as caught:
        AzureBlobSink.from_uri(uri)
    assert complaint in str(caught.value)
    assert "hunter2" not in str(caught.value) and "abc" not in str(caught.value)


def test_without_credentials_the_error_lists_the_ways_to_give_them(monkeypatch: pytest.MonkeyPatch):
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SinkConfigError) as caught:
        AzureBlobSink.from_uri("az://archive/p")
    for way in ("AZURE_STORAGE_CONNECTION_STRING", "connection-string-env", "account-url"):
        assert way in str(caught.value)
