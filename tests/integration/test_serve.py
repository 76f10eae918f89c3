"""`warren serve`: the archive's timeline as a web page, looked at in headless Chromium (Debian's).

The archive is written with warren's own format code (segments at known times, gap-ledger notes), the
page is served by the CLI as an operator starts it, and Chromium loads it as a browser would: its DOM
must carry the replay command for the point chosen, and its screenshot must show the records, the
spell nobody archived, the lost stream offsets and the cursor, each in its colour.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from bridge.archive import layout
from bridge.archive.ledger import Event, LedgerEntry, write_entry
from bridge.archive.record import Source, SourceKind, amqp_record_map, stream_record_map
from bridge.archive.segment import SegmentBuilder
from bridge.harness.nodes import free_port
from protocol.core.message import Message
from protocol.loop import run
from sinks.local import LocalSink
from tests.integration.archiving import REPO
from tests.polling import wait_until

CHROMIUM = shutil.which("chromium")
MINUTE = 60 * 1_000_000_000
T0 = 1_764_720_000 * 1_000_000_000  # 2025-12-03T00:00:00Z
ORDERS = Source("/", SourceKind.QUEUE, "orders")
EVENTS = Source("/", SourceKind.STREAM, "events")
BARS, NOT_ARCHIVED, LOST, CURSOR = (47, 111, 176), (242, 196, 196), (192, 57, 43), (230, 126, 34)


def write_archive(root: Path) -> None:
    """orders: a record a minute for 20 minutes, the archiver stopped for 20, 20 more; events: a stream
    whose retention removed offsets 30..39 while the archiver was away."""

    root.mkdir()

    async def main() -> None:
        async with LocalSink(root) as sink:
            for first, minutes in ((1, range(20)), (21, range(40, 60))):
                builder = SegmentBuilder(ORDERS, created_ns=T0 + minutes[0] * MINUTE)
                for seq, minute in enumerate(minutes, first):
                    builder.add(amqp_record_map(seq, T0 + minute * MINUTE, Message.build(b"order", {})))
                await sink.put(layout.segment_key("", ORDERS, first, T0 + minutes[0] * MINUTE), builder.finish())
            builder = SegmentBuilder(EVENTS, created_ns=T0)
            for seq, offset in enumerate([*range(30), *range(40, 50)], 1):
                at = T0 + (offset + 5) * MINUTE
                builder.add(stream_record_map(seq, at, b"\x00Su\xa0\x05event", offset, at // 1_000_000))
            await sink.put(layout.segment_key("", EVENTS, 1, T0 + 5 * MINUTE), builder.finish())
            notes = [
                (ORDERS, LedgerEntry(T0, Event.STARTED, "a")),
                (ORDERS, LedgerEntry(T0 + 20 * MINUTE, Event.STOPPED, "a")),
                (ORDERS, LedgerEntry(T0 + 40 * MINUTE, Event.STARTED, "b")),
                (EVENTS, LedgerEntry(T0 + 45 * MINUTE, Event.SKIPPED, "b", None, 30, 39)),
            ]
            for source, entry in notes:
                await write_entry(sink, "", source, entry)

    run(main())


@pytest.fixture
def served(tmp_path):
    """`warren serve` on a sample archive: (base URL, archive URI)."""
    archive = tmp_path / "archive"
    write_archive(archive)
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "serve", str(archive), "--listen", f"127.0.0.1:{port}"],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    try:
        wait_until(lambda: "serving" in log.read_text() or proc.poll() is not None, timeout=30, what="serving")
        assert proc.poll() is None, log.read_text()
        yield f"http://127.0.0.1:{port}", str(archive)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, log.read_text()


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        pytest.fail("Debian's chromium is not installed: run `make setup`")
    flags = [
        "--headless",
        "--no-sandbox",  # as root, in CI
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--virtual-time-budget=10000",  # the page's fetch and drawing done before the DOM or picture is taken
        f"--user-data-dir={tmp / 'chromium-profile'}",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, cwd=tmp)


def test_the_timeline_api_gives_counts_gaps_and_lost_offsets_and_refuses_bad_times(served):
    base, archive = served
    status, body = get_json(f"{base}/api/timeline?width=60")
    assert status == 200
    assert body["archive"] == archive and body["width"] == 60
    rows = {s["name"]: s for s in body["sources"]}
    assert rows["orders"]["records"] == 40 and rows["events"]["records"] == 40
    (stopped,) = rows["orders"]["gaps"]
    assert (stopped["start_ms"], stopped["end_ms"]) == ((T0 + 20 * MINUTE) / 1e6, (T0 + 40 * MINUTE) / 1e6)
    assert "the archiver was stopped" in stopped["line"]
    (lost,) = rows["events"]["gaps"]
    assert lost["lost"] == 10 and "offsets 30..39" in lost["line"]
    status, body = get_json(f"{base}/api/timeline?since=yesterday-ish")
    assert status == 400 and "since" in body["error"]


def test_the_page_in_chromium_prints_the_replay_command_for_the_point_chosen(served, tmp_path):
    base, archive = served
    shown = chromium("--dump-dom", f"{base}/?at=2025-12-03T00:30:00Z", tmp=tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    expected = f"warren replay --archive {archive} --target amqp://localhost:5672/%2F --at 2025-12-03T00:30:00.000Z"
    assert expected in shown.stdout, shown.stdout[-3000:]
    assert "the archiver was stopped" in shown.stdout  # the gap list under the chart


def test_the_pages_screenshot_shows_records_the_gap_the_lost_offsets_and_the_cursor(served, tmp_path):
    base, _ = served
    picture = tmp_path / "timeline.png"
    taken = chromium(
        f"--screenshot={picture}", "--window-size=1400,700", f"{base}/?at=2025-12-03T00:30:00Z", tmp=tmp_path
    )
    assert taken.returncode == 0 and picture.exists(), taken.stderr[-2000:]
    image = Image.open(picture).convert("RGB")
    colours = {colour for _, colour in image.getcolors(maxcolors=1 << 20) or []}
    counts = dict((colour, n) for n, colour in image.getcolors(maxcolors=1 << 20) or [])
    for name, colour in (("records", BARS), ("not archived", NOT_ARCHIVED), ("lost offsets", LOST), ("cursor", CURSOR)):
        assert colour in colours, f"no {name} drawn ({colour}); the picture is at {picture}"
    assert counts[BARS] > 2000, "the bars are barely drawn"
    # The gap is a third of the orders row: it must be wide, not a sliver.
    assert counts[NOT_ARCHIVED] > 5000
