"""How many records a segment holds while the broker waits for acknowledgements (SegmentSizer)."""

from __future__ import annotations

from pathlib import Path

from bridge.archiver.writer import SegmentSizer
from sinks.local import LocalSink
from sinks.mirror import MirroredSink
from sinks.s3 import S3Sink


def settled(sizer: SegmentSizer, rate: float, latency: float) -> int:
    for _ in range(50):  # smoothed: let it settle
        sizer.observe(sizer.records, sizer.records / rate, latency)
    return sizer.records


def test_quick_commits_make_segments_of_half_what_the_window_holds_beyond_the_commits():
    assert settled(SegmentSizer(1000), rate=50_000, latency=0.001) == 475  # (1000 - 50) / 2
    assert settled(SegmentSizer(1000, S3Sink.min_segment_share), rate=50_000, latency=0.001) == 475


def test_slow_commits_shrink_local_segments_to_an_eighth_of_the_window():
    assert settled(SegmentSizer(1000, LocalSink.min_segment_share), rate=50_000, latency=0.05) == 125


def test_object_storage_keeps_segments_large_whatever_the_latency():
    # Each object costs a request: under 20-50 ms a PUT, segments stay at 40% of the window.
    assert settled(SegmentSizer(2000, S3Sink.min_segment_share), rate=30_000, latency=0.05) == 800
    assert SegmentSizer(2000, S3Sink.min_segment_share).records == 800  # from the start


def test_a_mirror_sizes_for_its_most_expensive_member(tmp_path: Path):
    s3 = S3Sink("s3://bucket/archive?endpoint-url=http://127.0.0.1:9")
    mirror = MirroredSink([LocalSink(tmp_path / "a"), s3])
    assert mirror.min_segment_share == S3Sink.min_segment_share
    assert MirroredSink([LocalSink(tmp_path / "a"), LocalSink(tmp_path / "b")]).min_segment_share == 1 / 8
