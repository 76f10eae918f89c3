"""Names too long for a path segment once escaped: the writer archives them under a hashed directory with a
`_source` object, and everything that lists an archive (ls, inspect, verify, sync, replay's planning,
checkpoints) gives the true vhost and name, from `_source` or, failing that, from a segment header."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.archive import layout
from bridge.archive.checkpoint import read_checkpoint
from bridge.archive.reader import TimeRange, list_segments, read_records
from bridge.archive.record import Source, SourceKind
from bridge.archive.source_object import encode_source_object
from bridge.archiver.writer import RollPolicy, SegmentWriter
from bridge.commands.inspect import archive_records
from bridge.commands.ls import summarize
from bridge.commands.sync import sync_archives
from bridge.commands.verify import verify_archive
from bridge.errors import ArchiveCorrupt
from bridge.replay.selection import plan_sources
from protocol.core.message import Message
from protocol.loop import run
from sinks import LocalSink


def exactly_255(pieces: list[str]) -> str:
    name, i = "", 0
    while len((name + pieces[i % len(pieces)]).encode()) <= 255:
        name += pieces[i % len(pieces)]
        i += 1
    return name + "x" * (255 - len(name.encode()))


LONG_VHOST = exactly_255(["tenant a/", "b "])
LONG_NAME = exactly_255(["orders eu/", "ü", ".1 ", "注文 "])
LONG = Source(LONG_VHOST, SourceKind.QUEUE, LONG_NAME)
# the same head of the escaped name, another name: must never be taken for LONG
NEIGHBOUR = Source(LONG_VHOST, SourceKind.QUEUE, LONG_NAME[:-1] + "y")
SHORT = Source("warren/test", SourceKind.QUEUE, "orders eu/ü.1")
POLICY = RollPolicy(max_records=2, max_age=3600)


def messages(n: int, tag: str) -> list[Message]:
    return [Message.build(f"{tag} {i}".encode(), {"message_id": f"{tag}-{i}"}, routing_key="r") for i in range(n)]


async def archive(sink: LocalSink, source: Source, count: int) -> None:
    writer = SegmentWriter(sink, source, policy=POLICY)
    await writer.start()
    for message in messages(count, source.name[:8]):
        writer.append_message(message)
    await writer.close()


def archived(root: Path, *sources: tuple[Source, int]) -> LocalSink:
    sink = LocalSink(root)

    async def main() -> None:
        await sink.check()
        for source, count in sources:
            await archive(sink, source, count)

    run(main())
    return sink


def listed(sink: LocalSink) -> dict[Source, int]:
    async def main() -> dict[Source, int]:
        counts: dict[Source, int] = {}
        for seg in await list_segments(sink):
            counts[seg.source] = counts.get(seg.source, 0) + 1
        return counts

    return run(main())


def test_a_255_byte_vhost_and_name_are_archived_under_one_directory_with_their_source_object(tmp_path):
    sink = archived(tmp_path, (LONG, 5))
    directory = layout.source_prefix("", LONG)
    assert all(len(part.encode()) <= 255 for part in directory.split("/"))
    assert (tmp_path / directory / "_source").read_bytes() == encode_source_object(LONG)
    assert listed(sink) == {LONG: 3}  # five records, two per segment


def test_a_short_name_gets_no_source_object(tmp_path):
    archived(tmp_path, (SHORT, 1))
    assert not (tmp_path / layout.source_prefix("", SHORT) / "_source").exists()


def test_the_true_names_come_back_from_the_segment_headers_when_the_source_object_is_missing(tmp_path):
    sink = archived(tmp_path, (LONG, 3), (SHORT, 1))
    (tmp_path / layout.source_object_key("", LONG)).unlink()
    assert listed(sink) == {LONG: 2, SHORT: 1}


@pytest.mark.parametrize("damage", ["garbage", "another source"])
def test_a_damaged_or_foreign_source_object_is_not_believed(tmp_path, damage):
    sink = archived(tmp_path, (LONG, 3))
    obj = tmp_path / layout.source_object_key("", LONG)
    obj.write_bytes(b"\xc1 not msgpack" if damage == "garbage" else encode_source_object(NEIGHBOUR))
    assert listed(sink) == {LONG: 2}


def test_a_restarted_writer_rewrites_a_damaged_source_object_and_refuses_a_foreign_one(tmp_path):
    sink = archived(tmp_path, (LONG, 1))
    obj = tmp_path / layout.source_object_key("", LONG)
    obj.write_bytes(b"\xc1")
    run(archive(sink, LONG, 1))
    assert obj.read_bytes() == encode_source_object(LONG)
    obj.write_bytes(encode_source_object(NEIGHBOUR))
    with pytest.raises(ArchiveCorrupt, match="another source"):
        run(archive(sink, LONG, 1))


def test_sources_sharing_a_readable_head_are_kept_apart(tmp_path):
    sink = archived(tmp_path, (LONG, 2), (NEIGHBOUR, 4))
    assert layout.source_prefix("", LONG) != layout.source_prefix("", NEIGHBOUR)
    assert listed(sink) == {LONG: 1, NEIGHBOUR: 2}


def test_a_writer_resumes_the_sequence_of_a_long_named_source(tmp_path):
    sink = archived(tmp_path, (LONG, 3))
    run(archive(sink, LONG, 2))

    async def main() -> tuple[list[int], int | None]:
        seqs = [r.seq for seg in await list_segments(sink, "", LONG) async for r in read_records(sink, seg)]
        checkpoint = await read_checkpoint(sink, "", LONG)
        return seqs, checkpoint.last_seq if checkpoint else None

    assert run(main()) == ([1, 2, 3, 4, 5], 5)


def test_ls_verify_inspect_and_replay_planning_name_the_true_source(tmp_path):
    sink = archived(tmp_path, (LONG, 3), (NEIGHBOUR, 1), (SHORT, 2))

    async def main() -> tuple:
        summaries = {s.source: s.records for s in await summarize(sink)}
        lines: list[str] = []
        reports = await verify_archive(sink, lines.append)
        inspected = [r.body async for _, r in archive_records(sink, LONG_NAME, LONG_VHOST, TimeRange())]
        by_vhost = {s async for s, _ in archive_records(sink, None, LONG_VHOST, TimeRange())}
        plans = await plan_sources(sink, [LONG_NAME, SHORT.name], TimeRange())
        return summaries, reports, lines, inspected, by_vhost, {p.source: len(p.segments) for p in plans}

    summaries, reports, lines, inspected, by_vhost, plans = run(main())
    assert summaries == {LONG: 3, NEIGHBOUR: 1, SHORT: 2}
    assert {r.source for r in reports} == {LONG, NEIGHBOUR, SHORT} and not any(r.problems for r in reports), lines
    assert inspected == [f"{LONG_NAME[:8]} {i}".encode() for i in range(3)]
    assert by_vhost == {LONG, NEIGHBOUR}
    assert plans == {LONG: 2, SHORT: 1}


def test_sync_copies_a_long_named_source_so_that_the_copy_names_it_too(tmp_path):
    src = archived(tmp_path / "a", (LONG, 3))
    dst = LocalSink(tmp_path / "b")

    async def main() -> None:
        await dst.check()
        await sync_archives(src, dst, lambda _line: None)

    run(main())
    assert listed(dst) == {LONG: 2}
    assert (tmp_path / "b" / layout.source_object_key("", LONG)).exists()


@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_verify_reports_a_missing_or_damaged_source_object_while_ls_still_names_the_source(tmp_path, damage):
    sink = archived(tmp_path, (LONG, 3), (SHORT, 1))
    obj = tmp_path / layout.source_object_key("", LONG)
    if damage == "missing":
        obj.unlink()
    else:
        obj.write_bytes(b"\xc1")

    async def main() -> dict[Source, list[str]]:
        return {r.source: r.problems for r in await verify_archive(sink, lambda _line: None)}

    problems = run(main())
    assert problems[SHORT] == []
    assert len(problems[LONG]) == 1 and "_source" in problems[LONG][0]
    assert listed(sink) == {LONG: 2, SHORT: 1}
