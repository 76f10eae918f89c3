"""`warren prune` / `retention`: whole sealed hours older than the cut go, oldest first, with a mark that
keeps recovery, verify and later writes right; a dry run removes nothing; the newest definitions from
before the cut stay."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.archive import layout
from bridge.archive.reader import list_segments, read_records
from bridge.archiver.retention import prune
from bridge.archiver.writer import SegmentWriter
from bridge.commands.verify import verify_archive
from bridge.errors import ConfigError
from protocol.loop import run
from sinks.local import LocalSink
from tests.unit.test_archive_writer import BIG, FAST_RETRIES, HOUR_NS, QUEUE, FakeClock, msg, open_sink

START = (1_714_557_600 // 3600) * 3600 * 1_000_000_000  # 2024-05-01T10:00:00Z
HOURS_WITH_RECORDS = [0, 1, 2, 5]  # hours after START; three records each
NOW = START + 6 * HOUR_NS


async def archive(sink: LocalSink, clock: FakeClock, hours: list[int], first: int = 1) -> int:
    writer = SegmentWriter(sink, QUEUE, policy=BIG, clock=clock, **FAST_RETRIES)
    await writer.start()
    n = first
    for hour in hours:
        for minute in (5, 25, 45):
            clock.now_ns = START + hour * HOUR_NS + minute * 60 * 1_000_000_000
            writer.append_message(msg(n))
            n += 1
        writer.roll()
    await writer.close()
    return n


def seqs(sink: LocalSink) -> list[int]:
    async def go() -> list[int]:
        return [r.seq for seg in await list_segments(sink, "", QUEUE) async for r in read_records(sink, seg)]

    return run(go())


@pytest.fixture
def archived(tmp_path: Path) -> LocalSink:
    sink = run(open_sink(tmp_path / "archive"))
    for hour in (0, 4):  # topology saved at 10:00 and at 14:00
        run(sink.put(layout.definitions_key("", START + hour * HOUR_NS), b"{}"))
    run(archive(sink, FakeClock(START), HOURS_WITH_RECORDS))
    return sink


def test_a_dry_run_says_what_would_go_and_removes_nothing(archived: LocalSink):
    report = run(prune(archived, 3 * HOUR_NS, now_ns=NOW, dry_run=True))
    [source] = report.sources
    assert (source.hours, source.records, source.through_seq) == (3, 9, 9)  # 10h, 11h and 12h end by 13h
    assert report.definitions == 0  # the 10:00 definitions are the newest before the cut: kept
    assert "would remove 3 sealed hours" in "\n".join(report.lines())
    assert seqs(archived) == list(range(1, 13))


def test_prune_removes_whole_hours_before_the_cut_and_verify_still_finds_the_archive_sound(archived: LocalSink):
    report = run(prune(archived, 3 * HOUR_NS, now_ns=NOW, dry_run=False))
    assert report.sources[0].segments == 3
    assert seqs(archived) == [10, 11, 12]
    problems = [p for r in run(verify_archive(archived, out=lambda _: None)) for p in r.problems]
    assert problems == []
    assert run(prune(archived, 3 * HOUR_NS, now_ns=NOW, dry_run=False)).sources == []  # idempotent


def test_after_a_prune_the_writer_numbers_on_and_recovery_keeps_what_is_left(archived: LocalSink):
    run(prune(archived, 3 * HOUR_NS, now_ns=NOW, dry_run=False))
    run(archived.delete(layout.checkpoint_key("", QUEUE)))  # a checkpoint lost, or never written
    run(archive(archived, FakeClock(NOW), [6], first=13))
    assert seqs(archived) == [10, 11, 12, 13, 14, 15]
    assert [p for r in run(verify_archive(archived, out=lambda _: None)) for p in r.problems] == []


def test_everything_older_goes_and_the_newest_definitions_before_the_cut_stay(archived: LocalSink):
    report = run(prune(archived, 2 * HOUR_NS, now_ns=START + 8 * HOUR_NS, dry_run=False))
    assert report.sources[0].hours == 4 and report.sources[0].first_kept_ns is None
    assert seqs(archived) == []
    saved = run(_keys(archived, layout.DEFINITIONS))
    assert saved == [layout.definitions_key("", START + 4 * HOUR_NS)]
    assert [p for r in run(verify_archive(archived, out=lambda _: None)) for p in r.problems] == []


def test_a_retention_shorter_than_two_hours_is_refused(archived: LocalSink):
    with pytest.raises(ConfigError, match="2h"):
        run(prune(archived, HOUR_NS, now_ns=NOW))


async def _keys(sink: LocalSink, prefix: str) -> list[str]:
    return sorted([info.key async for info in sink.list(prefix + "/")])


def test_the_command_is_a_dry_run_unless_told_to_apply(archived: LocalSink, capsys: pytest.CaptureFixture[str]):
    from bridge.cli import main

    assert main(["prune", str(archived.root), "--older-than", "90d"]) == 0
    out = capsys.readouterr().out
    assert "would remove 4 sealed hours, 4 segments, 12 records" in out and "--apply" in out
    assert len(seqs(archived)) == 12
    assert main(["prune", str(archived.root), "--older-than", "90d", "--apply"]) == 0
    assert "removed 4 sealed hours" in capsys.readouterr().out
    assert seqs(archived) == []
    assert main(["prune", str(archived.root), "--older-than", "1h"]) == 2  # too young: refused, exit 2
