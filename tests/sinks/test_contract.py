"""The contract every sink backend honours, written once and run against each (see conftest.BACKENDS)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from protocol.loop import run
from sinks import InvalidKey, ObjectExists, ObjectInfo, ObjectNotFound, Sink, SinkError

MiB = 1024 * 1024


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def keys_of(sink: Sink, prefix: str) -> list[str]:
    return [info.key async for info in sink.list(prefix)]


async def put_all(sink: Sink, keys: list[str]) -> None:
    for key in keys:
        await sink.put(key, key.encode())


# -- put and get


@pytest.mark.parametrize("size", [0, 11, 5 * MiB], ids=["empty", "small", "5MiB"])
def test_put_then_get_returns_the_same_bytes(sink: Sink, size: int):
    data = payload(size)

    async def body() -> bytes:
        await sink.put("segments/one", data)
        return await sink.get("segments/one")

    assert run(body()) == data


def test_put_overwrites_an_existing_object(sink: Sink):
    async def body() -> bytes:
        await sink.put("k", b"first version, longer")
        await sink.put("k", b"second")
        return await sink.get("k")

    assert run(body()) == b"second"


def test_put_if_absent_creates_a_new_object(sink: Sink):
    async def body() -> bytes:
        await sink.put("checkpoints/0001", b"state", if_absent=True)
        return await sink.get("checkpoints/0001")

    assert run(body()) == b"state"


def xfail_on_emulator_gap(sink: Sink, gap: str) -> None:
    """An expected failure, shown as such, where the backend's emulator lacks a feature the real service
    has (the backend's fixture lists them in `sink.emulator_gaps`, with reasons)."""
    reason = getattr(sink, "emulator_gaps", {}).get(gap)
    if reason is not None:
        pytest.xfail(f"emulator gap: {reason}")


def test_put_if_absent_on_an_existing_key_raises_and_keeps_the_original(sink: Sink):
    xfail_on_emulator_gap(sink, "conditional_create")

    async def body() -> bytes:
        await sink.put("checkpoints/0001", b"original")
        with pytest.raises(ObjectExists) as caught:
            await sink.put("checkpoints/0001", b"a different object", if_absent=True)
        assert caught.value.key == "checkpoints/0001"
        assert not caught.value.retryable
        return await sink.get("checkpoints/0001")

    assert run(body()) == b"original"


def test_concurrent_conditional_creates_of_one_key_have_exactly_one_winner(sink: Sink):
    xfail_on_emulator_gap(sink, "conditional_create")

    async def body() -> tuple[list[object], bytes]:
        outcomes = await asyncio.gather(
            *(sink.put("race/key", f"writer {n}".encode(), if_absent=True) for n in range(8)),
            return_exceptions=True,
        )
        return outcomes, await sink.get("race/key")

    outcomes, stored = run(body())
    winners = [n for n, outcome in enumerate(outcomes) if outcome is None]
    assert len(winners) == 1
    assert all(isinstance(outcome, ObjectExists) for outcome in outcomes if outcome is not None)
    assert stored == f"writer {winners[0]}".encode()


def test_concurrent_puts_into_one_new_directory_all_land(sink: Sink):
    keys = [f"2024/05/17/seg-{n:03}" for n in range(20)]

    async def body() -> list[bytes]:
        await asyncio.gather(*(sink.put(key, key.encode()) for key in keys))
        return [await sink.get(key) for key in keys]

    assert run(body()) == [key.encode() for key in keys]


def test_get_of_a_missing_key_raises_object_not_found_naming_sink_and_key(sink: Sink):
    with pytest.raises(ObjectNotFound) as caught:
        run(sink.get("no/such/key"))
    assert caught.value.key == "no/such/key"
    assert caught.value.sink == sink.url
    assert "no/such/key" in str(caught.value) and sink.url in str(caught.value)
    assert not caught.value.retryable


def test_a_key_that_is_only_a_directory_of_other_keys_is_not_an_object(sink: Sink):
    async def body() -> None:
        await sink.put("dir/inside", b"x")
        assert await sink.head("dir") is None
        with pytest.raises(ObjectNotFound):
            await sink.get("dir")
        await sink.delete("dir")  # not an object, so nothing to delete
        assert await sink.get("dir/inside") == b"x"

    run(body())


# -- ranges


def test_get_range_reads_the_middle(sink: Sink):
    async def body() -> bytes:
        await sink.put("r", b"0123456789")
        return await sink.get_range("r", 3, 4)

    assert run(body()) == b"3456"


def test_get_range_with_negative_start_reads_the_suffix(sink: Sink):
    data = payload(MiB)

    async def body() -> tuple[bytes, bytes]:
        await sink.put("r", data)
        return await sink.get_range("r", -16, 16), await sink.get_range("r", -16, 4)

    footer, footer_start = run(body())
    assert footer == data[-16:]
    assert footer_start == data[-16:-12]


def test_get_range_suffix_longer_than_the_object_returns_all_of_it(sink: Sink):
    async def body() -> bytes:
        await sink.put("r", b"short")
        return await sink.get_range("r", -100, 100)

    assert run(body()) == b"short"


def test_get_range_past_the_end_returns_fewer_or_no_bytes(sink: Sink):
    async def body() -> tuple[bytes, bytes, bytes]:
        await sink.put("r", b"0123456789")
        return (
            await sink.get_range("r", 8, 100),
            await sink.get_range("r", 10, 5),
            await sink.get_range("r", 50, 5),
        )

    assert run(body()) == (b"89", b"", b"")


def test_get_range_of_a_missing_key_raises_object_not_found(sink: Sink):
    with pytest.raises(ObjectNotFound):
        run(sink.get_range("missing", -8, 8))


# -- head


def test_head_reports_size_and_modification_time(sink: Sink):
    before = time.time_ns()

    async def body() -> ObjectInfo | None:
        await sink.put("h/obj", b"12345")
        return await sink.head("h/obj")

    info = run(body())
    assert info is not None
    assert (info.key, info.size) == ("h/obj", 5)
    # Clocks of remote stores drift and some keep only seconds: a generous window.
    assert abs(info.modified_ns - before) < 3600 * 10**9


def test_head_of_a_missing_key_is_none(sink: Sink):
    assert run(sink.head("missing")) is None


# -- list


def test_list_returns_keys_in_lexicographic_order_across_directories(sink: Sink):
    # "a-b" < "a.b" < "a/b" < "a0": a flat store's order, whatever directories a backend keeps.
    keys = ["b", "a0", "a/c/d", "a/b-c", "a.b", "a/b", "a-b", "ab", "a/c-", "a/c/e/f"]

    async def body() -> tuple[list[str], list[str]]:
        await put_all(sink, keys)
        return await keys_of(sink, ""), await keys_of(sink, "a")

    everything, under_a = run(body())
    assert everything == sorted(keys)
    assert under_a == sorted(key for key in keys if key.startswith("a"))


def test_list_with_a_partial_name_prefix_matches_names_that_start_with_it(sink: Sink):
    keys = ["seg-001", "seg-002", "seg-010", "seg-1", "seg-00x/inner", "other"]

    async def body() -> list[str]:
        await put_all(sink, keys)
        return await keys_of(sink, "seg-00")

    assert run(body()) == ["seg-001", "seg-002", "seg-00x/inner"]


def test_list_descends_into_nested_keys(sink: Sink):
    keys = ["p/2024/01/x", "p/2024/02/y", "p/2024/02/z", "p/2025/01/x", "q/2024/01/x", "p2/x"]

    async def body() -> tuple[list[str], list[str], list[str]]:
        await put_all(sink, keys)
        return await keys_of(sink, "p/"), await keys_of(sink, "p/2024/0"), await keys_of(sink, "p")

    under_p, in_2024, p_anything = run(body())
    assert under_p == ["p/2024/01/x", "p/2024/02/y", "p/2024/02/z", "p/2025/01/x"]
    assert in_2024 == ["p/2024/01/x", "p/2024/02/y", "p/2024/02/z"]
    assert p_anything == [*under_p, "p2/x"]


def test_list_reports_each_objects_size(sink: Sink):
    async def body() -> list[ObjectInfo]:
        await sink.put("s/a", b"")
        await sink.put("s/b", b"xyz")
        return [info async for info in sink.list("s/")]

    assert [(info.key, info.size) for info in run(body())] == [("s/a", 0), ("s/b", 3)]


@pytest.mark.parametrize("prefix", ["", "nothing/", "zzz", "a/b/c/"])
def test_list_with_no_matching_keys_is_empty(sink: Sink, prefix: str):
    async def body() -> list[str]:
        await sink.put("a/x", b"")
        return await keys_of(sink, prefix)

    expected = ["a/x"] if prefix == "" else []
    assert run(body()) == expected


def test_list_of_a_prefix_that_names_an_object_yields_that_object(sink: Sink):
    async def body() -> tuple[list[str], list[str]]:
        await put_all(sink, ["obj", "objx"])
        return await keys_of(sink, "obj"), await keys_of(sink, "obj/")

    assert run(body()) == (["obj", "objx"], [])


# -- delete


def test_delete_removes_the_object(sink: Sink):
    async def body() -> tuple[ObjectInfo | None, list[str]]:
        await sink.put("d/a", b"1")
        await sink.put("d/b", b"2")
        await sink.delete("d/a")
        return await sink.head("d/a"), await keys_of(sink, "d/")

    assert run(body()) == (None, ["d/b"])


def test_delete_of_a_missing_key_is_not_an_error(sink: Sink):
    run(sink.delete("never/written"))


# -- keys


INVALID_KEYS = ["", "/etc/passwd", "a//b", "a/", "./a", "a/./b", "a/../b", "..", "../outside", "a\0b"]


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_unsafe_keys_are_rejected_by_every_operation(sink: Sink, key: str):
    async def attempts() -> list[object]:
        return await asyncio.gather(
            sink.put(key, b"x"),
            sink.put(key, b"x", if_absent=True),
            sink.get(key),
            sink.get_range(key, 0, 1),
            sink.head(key),
            sink.delete(key),
            return_exceptions=True,
        )

    for outcome in run(attempts()):
        assert isinstance(outcome, InvalidKey), outcome
        assert isinstance(outcome, SinkError) and not outcome.retryable


@pytest.mark.parametrize("prefix", ["/", "/a", "a//", "../", "a/../b", "./", "x\0"])
def test_unsafe_list_prefixes_are_rejected(sink: Sink, prefix: str):
    with pytest.raises(InvalidKey):
        run(keys_of(sink, prefix))


# -- start-up check


def test_check_passes_on_a_good_sink_and_leaves_no_objects(sink: Sink):
    async def body() -> list[str]:
        await sink.check()
        await sink.check()
        return await keys_of(sink, "")

    assert run(body()) == []


def test_url_names_the_sink_without_user_info(sink: Sink):
    assert "://" in sink.url
    assert "@" not in sink.url
