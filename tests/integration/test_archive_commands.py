"""`warren ls`, `warren inspect` and `warren verify` run as an operator runs them, in subprocesses, on an archive
written by the segment writer: what they print, what they find, and how they fail. No broker is needed."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.archive.layout import SegmentKey
from bridge.archive.reader import list_segments
from bridge.archive.record import Source, SourceKind
from bridge.archiver.writer import RollPolicy, SegmentWriter
from protocol.core.message import Message
from protocol.loop import run
from sinks import LocalSink

REPO = Path(__file__).resolve().parents[2]
S = 1_000_000_000
T0 = int(dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC).timestamp()) * S

ORDERS = Source("/", SourceKind.QUEUE, "orders/eu")
PAYMENTS = Source("prod", SourceKind.QUEUE, "zahlungen ü ✓")
EVENTS = Source("prod", SourceKind.STREAM, "events/日本")

BINARY_BODY = bytes(range(256))
DEATH = [{"count": 1, "queue": "orders/eu", "reason": "rejected"}]


def order(n: int) -> Message:
    """Order n: captured at 10:00 + n minutes; every 3rd has a three-word routing key, every 10th was dead-lettered."""
    headers: dict = {"tenant": "acme"} if n % 5 == 0 else {}
    if n % 10 == 0:
        headers["x-death"] = DEATH
    props = {"message_id": f"order-{n}", "content_type": "application/json"}
    if headers:
        props["headers"] = headers
    body = BINARY_BODY if n == 7 else json.dumps({"order": n, "note": "naïve"}, ensure_ascii=False).encode()
    key = "orders.eu.created" if n % 3 == 0 else ("orders.created" if n % 2 else "orders.paid")
    return Message.build(body, props, exchange="shop", routing_key=key)


def event_body(k: int) -> bytes:
    return b"\x00Sw\xa1\x0b" + bytes([0xFF, k])  # AMQP 1.0 bytes, not UTF-8


class Clock:
    def __init__(self) -> None:
        self.now_ns = T0

    def __call__(self) -> int:
        return self.now_ns


async def write_archive(root: Path) -> None:
    sink = LocalSink(root)
    await sink.check()
    clock = Clock()
    policy = RollPolicy(max_age=3600)

    orders = SegmentWriter(sink, ORDERS, policy=policy, clock=clock, retry_base=0.01, retry_max=0.01)
    await orders.start()
    for n in range(1, 31):
        clock.now_ns = T0 + n * 60 * S
        orders.append_message(order(n))
        if n % 10 == 0:
            await orders.flush()  # three segments: 1-10, 11-20, 21-30
    await orders.close()

    payments = SegmentWriter(sink, PAYMENTS, policy=policy, clock=clock, retry_base=0.01, retry_max=0.01)
    await payments.start()
    for n in range(1, 6):
        clock.now_ns = T0 + 2 * 3600 * S + n * S  # 12:00:0n
        payments.append_message(Message.build(f"zahlung {n} €".encode(), {"message_id": f"pay-{n}"}))
    await payments.close()

    events = SegmentWriter(sink, EVENTS, policy=policy, clock=clock, retry_base=0.01, retry_max=0.01)
    await events.start()
    for k in range(1, 7):
        clock.now_ns = T0 + 3 * 3600 * S + k * S + S // 2
        events.append_stream(event_body(k), 1000 + k, (T0 + 3 * 3600 * S + k * S) // 1_000_000)
        if k == 3:
            await events.flush()
    await events.close()


@dataclass(frozen=True)
class Archive:
    root: Path
    segments: dict[Source, list[SegmentKey]]

    def path(self, seg: SegmentKey) -> Path:
        return self.root / seg.key

    def copy(self, to: Path) -> Archive:
        shutil.copytree(self.root, to)
        return Archive(to, self.segments)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    root = tmp_path_factory.mktemp("archive") / "warren"
    run(write_archive(root))
    segments: dict[Source, list[SegmentKey]] = {}
    for seg in run(list_segments(LocalSink(root))):
        segments.setdefault(seg.source, []).append(seg)
    assert {s: len(v) for s, v in segments.items()} == {ORDERS: 3, PAYMENTS: 1, EVENTS: 2}
    return Archive(root, segments)


@pytest.fixture
def damaged(archive: Archive, tmp_path: Path) -> Archive:
    """A copy of the archive that the test may damage."""
    return archive.copy(tmp_path / "copy")


def warren(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
    )


def ok(*args: str | Path) -> str:
    result = warren(*args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def lines(*args: str | Path) -> list[str]:
    return ok(*args).splitlines()


def json_lines(*args: str | Path) -> list[dict]:
    return [json.loads(line) for line in lines(*args, "--json")]


def flip_bit(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def assert_one_clear_error_line(result: subprocess.CompletedProcess[str], command: str, *mentions: str) -> None:
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"warren {command}: ")
    for text in mentions:
        assert text in line


# ---- ls ------------------------------------------------------------------------------------------


def test_ls_json_is_one_array_with_counts_sizes_and_times_per_source(archive):
    listed = json.loads(ok("ls", "--json", archive.root))
    assert isinstance(listed, list)
    by_name = {entry["source"]: entry for entry in listed}
    assert set(by_name) == {ORDERS.name, PAYMENTS.name, EVENTS.name}
    for entry in listed:
        assert set(entry) == {
            "source", "vhost", "kind", "records", "copies", "possible_copies", "segments", "bytes", "first", "last",
            "gaps", "lost_offsets",
        }  # fmt: skip
        assert (entry["gaps"], entry["lost_offsets"]) == ([], 0)  # written without an archiver: no ledger
        assert (entry["copies"], entry["possible_copies"]) == (0, 0)  # nothing was delivered twice
    for source, records, first, last in [
        (ORDERS, 30, "2024-05-01T10:01:00Z", "2024-05-01T10:30:00Z"),
        (PAYMENTS, 5, "2024-05-01T12:00:01Z", "2024-05-01T12:00:05Z"),
        (EVENTS, 6, "2024-05-01T13:00:01.500000Z", "2024-05-01T13:00:06.500000Z"),
    ]:
        entry = by_name[source.name]
        assert (entry["vhost"], entry["kind"]) == (source.vhost, str(source.kind))
        assert entry["records"] == records
        assert entry["segments"] == len(archive.segments[source])
        assert entry["bytes"] == sum(archive.path(seg).stat().st_size for seg in archive.segments[source])
        assert (entry["first"], entry["last"]) == (first, last)


def test_ls_table_mentions_every_source(archive):
    table = ok("ls", archive.root)
    for source in (ORDERS, PAYMENTS, EVENTS):
        assert source.name in table
    assert len(table.strip().splitlines()) == 4  # a header and one row per source


def test_ls_accepts_a_file_uri(archive):
    listed = json.loads(ok("ls", "--json", archive.root.as_uri()))
    assert sum(entry["records"] for entry in listed) == 41


@pytest.mark.parametrize("command", ["ls", "inspect", "verify"])
def test_a_path_that_does_not_exist_fails_with_one_clear_line(tmp_path, command):
    missing = tmp_path / "no-such-archive"
    result = warren(command, missing)
    assert result.returncode != 0
    assert result.stdout == ""
    assert_one_clear_error_line(result, command, str(missing), "missing")


def test_ls_of_an_archive_with_a_corrupt_footer_exits_5_naming_the_segment(damaged):
    seg = damaged.segments[EVENTS][0]
    path = damaged.path(seg)
    flip_bit(path, path.stat().st_size - 20)  # in the footer, which ls reads
    result = warren("ls", damaged.root)
    assert result.returncode == 5
    assert_one_clear_error_line(result, "ls", seg.key)


# ---- inspect -------------------------------------------------------------------------------------


def test_inspect_limit_prints_that_many_lines(archive):
    assert len(lines("inspect", archive.root, "--source", ORDERS.name, "--limit", "4")) == 4
    assert len(lines("inspect", archive.root, "--source", ORDERS.name)) == 30
    assert len(lines("inspect", archive.root)) == 41


def test_inspect_json_lines_show_utf8_bodies_as_text_and_others_as_base64(archive):
    records = json_lines("inspect", archive.root, "--source", ORDERS.name)
    assert [r["seq"] for r in records] == list(range(1, 31))
    eighth = records[7]
    assert eighth["body_encoding"] == "utf-8"
    assert json.loads(eighth["body"]) == {"order": 8, "note": "naïve"}
    assert eighth["properties"]["message_id"] == "order-8"
    assert (eighth["exchange"], eighth["routing_key"]) == ("shop", "orders.paid")
    assert eighth["captured"] == "2024-05-01T10:08:00Z"
    seventh = records[6]
    assert seventh["body_encoding"] == "base64"
    assert base64.b64decode(seventh["body"]) == BINARY_BODY

    events = json_lines("inspect", archive.root, "--source", EVENTS.name)
    assert [(e["offset"], e["body_encoding"]) for e in events] == [(1000 + k, "base64") for k in range(1, 7)]
    assert [base64.b64decode(e["body"]) for e in events] == [event_body(k) for k in range(1, 7)]
    assert events[0]["chunk_time"] == "2024-05-01T13:00:01Z"

    payments = json_lines("inspect", archive.root, "--source", PAYMENTS.name)
    assert [(p["source"], p["vhost"], p["body"]) for p in payments] == [
        (PAYMENTS.name, "prod", f"zahlung {n} €") for n in range(1, 6)
    ]


def test_inspect_where_a_property_equals_a_value(archive):
    (record,) = json_lines("inspect", archive.root, "--where", "message_id=order-7")
    assert record["seq"] == 7
    assert record["source"] == ORDERS.name
    assert json_lines("inspect", archive.root, "--where", "message_id=order-99") == []


def test_inspect_where_a_header_is_present(archive):
    records = json_lines("inspect", archive.root, "--where", "headers.x-death")
    assert [r["seq"] for r in records] == [10, 20, 30]
    assert records[0]["properties"]["headers"]["x-death"] == DEATH
    tenants = json_lines("inspect", archive.root, "--where", "headers.tenant=acme")
    assert [r["seq"] for r in tenants] == [5, 10, 15, 20, 25, 30]


def test_inspect_by_routing_key_topic_pattern(archive):
    one_word = json_lines("inspect", archive.root, "--routing-key", "orders.*")
    assert [r["seq"] for r in one_word] == [n for n in range(1, 31) if n % 3]
    assert len(json_lines("inspect", archive.root, "--routing-key", "orders.#")) == 30
    assert [r["seq"] for r in json_lines("inspect", archive.root, "--routing-key", "*.eu.*")] == list(range(3, 31, 3))


def test_inspect_grep_matches_the_body(archive):
    records = json_lines("inspect", archive.root, "--grep", r'"order": 1\d,')
    assert [r["seq"] for r in records] == list(range(10, 20))
    (payment,) = json_lines("inspect", archive.root, "--grep", "zahlung 3")
    assert payment["source"] == PAYMENTS.name


def test_inspect_since_and_until_select_a_time_window(archive):
    window = ["--since", "2024-05-01T10:10:00Z", "--until", "2024-05-01T10:19:00Z"]
    assert [r["seq"] for r in json_lines("inspect", archive.root, *window)] == list(range(10, 20))
    # an offset names the same instant; stream records are selected by their chunk time
    late = json_lines("inspect", archive.root, "--since", "2024-05-01T14:00:03+01:00")
    assert [(r["source"], r["seq"]) for r in late] == [(EVENTS.name, k) for k in range(3, 7)]
    early = json_lines("inspect", archive.root, "--until", "2024-05-01T10:02:30Z")
    assert [r["seq"] for r in early] == [1, 2]


def test_inspect_filters_combine(archive):
    records = json_lines(
        "inspect", archive.root, "--source", ORDERS.name, "--routing-key", "orders.*", "--since", "2024-05-01T10:20:00Z"
    )
    assert [r["seq"] for r in records] == [n for n in range(20, 31) if n % 3]


def test_inspect_a_single_segment_file(archive):
    second = archive.segments[ORDERS][1]
    records = json_lines("inspect", archive.path(second))
    assert [r["seq"] for r in records] == list(range(11, 21))
    assert {r["source"] for r in records} == {ORDERS.name}
    assert len(lines("inspect", archive.path(second), "--limit", "3")) == 3


def test_inspect_with_a_bad_time_is_a_usage_error(archive):
    result = warren("inspect", archive.root, "--since", "yesterday")
    assert result.returncode == 2
    assert_one_clear_error_line(result, "inspect", "yesterday")


# ---- verify --------------------------------------------------------------------------------------


def test_verify_says_a_good_archive_is_sound(archive):
    out = ok("verify", archive.root)
    assert "sound" in out.splitlines()[-1]
    assert "FAIL" not in out


def test_verify_of_an_empty_archive_fails_without_calling_it_sound(tmp_path):
    (tmp_path / "empty").mkdir()
    result = warren("verify", tmp_path / "empty")
    assert result.returncode != 0
    assert "sound" not in result.stdout


def test_verify_finds_a_flipped_bit(damaged):
    seg = damaged.segments[ORDERS][1]
    path = damaged.path(seg)
    flip_bit(path, path.stat().st_size // 2)
    result = warren("verify", damaged.root)
    assert result.returncode != 0
    assert seg.key in result.stdout
    assert "Traceback" not in result.stderr


def test_verify_finds_a_truncated_segment(damaged):
    seg = damaged.segments[PAYMENTS][0]
    path = damaged.path(seg)
    path.write_bytes(path.read_bytes()[:-40])
    result = warren("verify", damaged.root)
    assert result.returncode != 0
    assert seg.key in result.stdout
    assert "Traceback" not in result.stderr


def test_verify_finds_a_missing_segment_in_the_middle_of_a_source(damaged):
    _, middle, last = damaged.segments[ORDERS]
    damaged.path(middle).unlink()
    result = warren("verify", damaged.root)
    assert result.returncode != 0
    assert "11..20" in result.stdout
    assert last.key in result.stdout


def test_verify_finds_a_deleted_last_segment_behind_the_checkpoint(damaged):
    last = damaged.segments[ORDERS][-1]
    damaged.path(last).unlink()
    result = warren("verify", damaged.root)
    assert result.returncode != 0
    assert "30" in result.stdout
    assert "1..20" in result.stdout  # what is left
    assert "checkpoint" in result.stdout


# ---- damaged archives in inspect -----------------------------------------------------------------


def test_inspect_of_a_corrupt_segment_exits_5_with_one_line_naming_it(damaged):
    seg = damaged.segments[ORDERS][1]
    path = damaged.path(seg)
    flip_bit(path, path.stat().st_size // 2)
    result = warren("inspect", damaged.root, "--source", ORDERS.name)
    assert result.returncode == 5
    assert_one_clear_error_line(result, "inspect", seg.key)

    result = warren("inspect", path)
    assert result.returncode == 5
    assert_one_clear_error_line(result, "inspect", str(path))
