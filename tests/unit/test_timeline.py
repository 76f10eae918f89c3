"""`warren ls --timeline`: density per source from the footers, quiet spells marked, counts kept."""

from __future__ import annotations

from bridge.archive.ledger import Gap
from bridge.archive.record import Source, SourceKind, amqp_record_map
from bridge.archive.segment import SegmentBuilder, SegmentIndex, read_index
from bridge.archive.timeline import EMPTY, LOST, NOT_ARCHIVED, timeline
from protocol.core.message import Message

MINUTE = 60 * 1_000_000_000
T0 = 1_764_720_000 * 1_000_000_000  # 2025-12-03T00:00:00Z
ORDERS = Source("/", SourceKind.QUEUE, "orders")
AUDIT = Source("/", SourceKind.QUEUE, "audit")


def segment(source: Source, first_seq: int, times: list[int], block_bytes: int = 200) -> SegmentIndex:
    builder = SegmentBuilder(source, created_ns=times[0], block_bytes=block_bytes)
    for seq, t in enumerate(times, first_seq):
        builder.add(amqp_record_map(seq, t, Message.build(b"x" * 20, {})))
    return read_index(builder.finish(), "test.wseg")


def row(text: str, name: str) -> str:
    line = next(line for line in text.splitlines() if f" {name} " in line)
    return line.split("|")[1]


def test_quiet_spells_are_marked_between_a_sources_first_and_last_record_and_counts_add_up():
    # orders: a message a minute for 20 minutes, nothing for 20, then 20 more; audit: the last 20 only.
    orders = [segment(ORDERS, 1, [T0 + i * MINUTE for i in range(20)])]
    orders.append(segment(ORDERS, 21, [T0 + (40 + i) * MINUTE for i in range(20)]))
    audit = [segment(AUDIT, 1, [T0 + (40 + i) * MINUTE for i in range(20)])]
    text = timeline(orders + audit, since_ns=T0, until_ns=T0 + 60 * MINUTE - 1, width=12).render()

    assert row(text, "orders") == "████" + EMPTY * 4 + "████"
    assert row(text, "audit") == " " * 8 + "████"
    assert "40 records" in text.splitlines()[1] and "20 records" in text.splitlines()[0]  # sorted: audit first
    assert "5min a column" in text


def test_a_window_counts_only_what_falls_inside_it():
    orders = [segment(ORDERS, 1, [T0 + i * MINUTE for i in range(60)])]
    text = timeline(orders, since_ns=T0 + 30 * MINUTE, until_ns=T0 + 40 * MINUTE - 1, width=10).render()
    assert " ~10 records" in text  # blocks cut by the window: their share, estimated
    assert EMPTY not in row(text, "orders")


def test_an_empty_window_says_so():
    orders = [segment(ORDERS, 1, [T0])]
    assert "no record" in timeline(orders, since_ns=T0 + MINUTE, until_ns=T0 + 2 * MINUTE, width=10).render()


def test_over_the_whole_archive_every_count_is_exact():
    orders = [segment(ORDERS, 1, [T0 + i * 7 * 1_000_000_000 for i in range(50)], block_bytes=120)]
    text = timeline(orders, since_ns=None, until_ns=None, width=17).render()
    assert "|  50 records" in text and "~" not in text, text


def test_the_gap_ledger_marks_spells_nobody_archived_and_where_stream_offsets_were_lost():
    # orders: 20 minutes, 20 minutes the archiver was down, 20 more; a stream lost offsets at minute 55.
    orders = [segment(ORDERS, 1, [T0 + i * MINUTE for i in range(20)])]
    orders.append(segment(ORDERS, 21, [T0 + (40 + i) * MINUTE for i in range(20)]))
    gaps = {ORDERS: [Gap(T0 + 20 * MINUTE, T0 + 40 * MINUTE - 1, "the archiver was stopped")]}
    text = timeline(orders, since_ns=T0, until_ns=T0 + 60 * MINUTE - 1, width=12, gaps=gaps).render()
    assert row(text, "orders") == "████" + NOT_ARCHIVED * 4 + "████"
    assert "not archived then" in text

    gaps[ORDERS].append(Gap(T0 + 55 * MINUTE, T0 + 55 * MINUTE, "retention", (10, 19)))
    text = timeline(orders, since_ns=T0, until_ns=T0 + 60 * MINUTE - 1, width=12, gaps=gaps).render()
    assert row(text, "orders") == "████" + NOT_ARCHIVED * 4 + "███" + LOST
