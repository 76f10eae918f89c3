"""Archive format: warren segments against zstd-compressed JSON lines, on speed, size and memory.

    .venv/bin/python bench/archive_format.py [--records N] [--body json|random] [--profile]

Both formats archive the same N messages (256-byte bodies; content_type, delivery_mode 2, a unique
message_id, a timestamp and a small headers table) to files in a temporary directory, then read
them all back:

- warren: `amqp_record_map` + `SegmentBuilder.add` per message, a segment finished and written when
  `builder.size >= 64 MiB` (the writer's default roll); read back with `iter_records`.
- baseline: one JSON object per line (properties as a JSON dict, body base64), lines joined into
  ~1 MiB chunks, each compressed into one zstd frame at the same level (3) and appended to one file;
  read back through a streaming zstd reader, `json.loads` and `b64decode` per line.

Only archiving is timed: the messages are generated in batches outside the clock. The baseline is
given its properties already as a dict, which flatters it: a real consumer would have to decode the
property section first (warren keeps the wire bytes and decodes nothing). Each format runs in its own
fresh process, so its peak RSS is its own. This prints figures; it asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import datetime as dt
import io
import json
import pstats
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere, installed or not

import zstandard  # noqa: E402

from bridge.archive.record import Source, SourceKind, amqp_record_map  # noqa: E402
from bridge.archive.segment import SegmentBuilder, iter_records, segment_name  # noqa: E402
from protocol.core.message import Message, decode_properties, encode_properties  # noqa: E402

BODY_SIZE = 256
BATCH = 10_000
SEGMENT_MAX = 64 * 1024 * 1024
CHUNK = 1 << 20
LEVEL = 3
T0 = 1_700_000_000_000_000_000
SOURCE = Source("/", SourceKind.QUEUE, "orders")
EXCHANGE, ROUTING_KEY = "orders", "order.created.eu"
HEADERS = {"x-origin": "shop-eu-1", "x-schema": "order/v3", "x-attempt": 1}
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima")


# ---- the messages ------------------------------------------------------------------------------


def make_body(rng: random.Random, seq: int, kind: str) -> bytes:
    """256 bytes: a JSON order event with random values (or random bytes, for incompressible data)."""
    if kind == "random":
        return rng.randbytes(BODY_SIZE)
    doc = {
        "order": f"o-{seq:010d}",
        "customer": f"c-{rng.randrange(10**6):06d}",
        "amount": round(rng.uniform(1, 500), 2),
        "currency": rng.choice(["EUR", "USD", "GBP"]),
        "items": [{"sku": f"sku-{rng.randrange(10**5):05d}", "qty": rng.randrange(1, 5)} for _ in range(2)],
        "note": "",
    }
    text = json.dumps(doc, separators=(",", ":"))
    filler = " ".join(rng.choice(WORDS) for _ in range(40))
    doc["note"] = filler[: BODY_SIZE - len(text)]
    body = json.dumps(doc, separators=(",", ":")).encode()
    assert len(body) == BODY_SIZE, len(body)
    return body


class PropertyTemplate:
    """Property sections by splicing message_id (36 chars) and timestamp into bytes encoded once.

    content_type, headers, delivery_mode, message_id, timestamp are encoded in that order (AMQP 0-9-1
    basic class order), so message_id and the 8-byte timestamp are the last 45 bytes.
    """

    def __init__(self) -> None:
        probe = "0" * 36
        self.prefix = encode_properties(self.as_dict(probe, 0))[: -(1 + 36 + 8)]

    @staticmethod
    def as_dict(message_id: str, timestamp: int) -> dict[str, Any]:
        return {
            "content_type": "application/json",
            "headers": HEADERS,
            "delivery_mode": 2,
            "message_id": message_id,
            "timestamp": dt.datetime.fromtimestamp(timestamp, dt.UTC),
        }

    def encode(self, message_id: str, timestamp: int) -> bytes:
        return self.prefix + b"\x24" + message_id.encode() + timestamp.to_bytes(8, "big")


def batches(n: int, body_kind: str) -> Iterator[list[tuple[int, bytes, str, int]]]:
    """(captured_ns, body, message_id, timestamp seconds) per message, BATCH at a time."""
    rng = random.Random(42)
    for start in range(0, n, BATCH):
        batch = []
        for seq in range(start + 1, min(n, start + BATCH) + 1):
            captured = T0 + seq * 20_000  # 50,000 messages a second
            h = f"{rng.getrandbits(128):032x}"
            message_id = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"  # a uuid's shape
            batch.append((captured, make_body(rng, seq, body_kind), message_id, captured // 1_000_000_000))
        yield batch


# ---- warren ------------------------------------------------------------------------------------


def warren_write(
    n: int, body_kind: str, directory: Path, profiler: cProfile.Profile | None = None
) -> tuple[float, int]:
    template = PropertyTemplate()
    sample = template.encode("0" * 36, 1_700_000_000)
    expected = encode_properties(template.as_dict("0" * 36, 1_700_000_000))
    assert sample == expected and decode_properties(sample).delivery_mode == 2
    elapsed = 0.0
    stored = 0
    seq = 0
    builder: SegmentBuilder | None = None

    def roll(builder: SegmentBuilder) -> int:
        data = builder.finish()
        (directory / segment_name(builder.stats.first_seq)).write_bytes(data)
        return len(data)

    for batch in batches(n, body_kind):
        messages = [
            (captured, Message(body, template.encode(mid, ts), exchange=EXCHANGE, routing_key=ROUTING_KEY))
            for captured, body, mid, ts in batch
        ]
        if profiler:
            profiler.enable()
        started = time.perf_counter()
        for captured, message in messages:
            seq += 1
            if builder is None:
                builder = SegmentBuilder(SOURCE, created_ns=captured)
            builder.add(amqp_record_map(seq, captured, message))
            if builder.size >= SEGMENT_MAX:
                stored += roll(builder)
                builder = None
        elapsed += time.perf_counter() - started
        if profiler:
            profiler.disable()
    started = time.perf_counter()
    if builder is not None:
        stored += roll(builder)
    elapsed += time.perf_counter() - started
    return elapsed, stored


def warren_read(n: int, directory: Path) -> float:
    started = time.perf_counter()
    count = body_bytes = 0
    for path in sorted(directory.glob("*.wseg")):
        data = path.read_bytes()
        for record in iter_records(data, path.name):
            count += 1
            body_bytes += len(record.body)
    elapsed = time.perf_counter() - started
    assert count == n and body_bytes == n * BODY_SIZE, (count, body_bytes)
    return elapsed


# ---- baseline: zstd-compressed JSON lines --------------------------------------------------


def jsonl_write(n: int, body_kind: str, directory: Path) -> tuple[float, int]:
    compressor = zstandard.ZstdCompressor(level=LEVEL)
    path = directory / "archive.jsonl.zst"
    elapsed = 0.0
    seq = 0
    with open(path, "wb") as f:
        lines: list[str] = []
        pending = 0
        for batch in batches(n, body_kind):
            messages = [
                (
                    captured,
                    body,
                    {
                        "content_type": "application/json",
                        "headers": HEADERS,
                        "delivery_mode": 2,
                        "message_id": mid,
                        "timestamp": ts,
                    },
                )
                for captured, body, mid, ts in batch
            ]
            started = time.perf_counter()
            for captured, body, properties in messages:
                seq += 1
                line = json.dumps(
                    {
                        "seq": seq,
                        "captured_ns": captured,
                        "exchange": EXCHANGE,
                        "routing_key": ROUTING_KEY,
                        "properties": properties,
                        "body": base64.b64encode(body).decode("ascii"),
                    }
                )
                lines.append(line)
                pending += len(line) + 1
                if pending >= CHUNK:
                    f.write(compressor.compress(("\n".join(lines) + "\n").encode()))
                    lines, pending = [], 0
            elapsed += time.perf_counter() - started
        started = time.perf_counter()
        if lines:
            f.write(compressor.compress(("\n".join(lines) + "\n").encode()))
    elapsed += time.perf_counter() - started
    return elapsed, path.stat().st_size


def jsonl_read(n: int, directory: Path) -> float:
    started = time.perf_counter()
    count = body_bytes = 0
    with open(directory / "archive.jsonl.zst", "rb") as f:
        stream = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
        for line in io.BufferedReader(stream, CHUNK):
            record = json.loads(line)
            count += 1
            body_bytes += len(base64.b64decode(record["body"]))
    elapsed = time.perf_counter() - started
    assert count == n and body_bytes == n * BODY_SIZE, (count, body_bytes)
    return elapsed


# ---- running -----------------------------------------------------------------------------------

FORMATS = {"warren": (warren_write, warren_read), "jsonl+zstd": (jsonl_write, jsonl_read)}


def worker(fmt: str, n: int, body_kind: str) -> dict[str, Any]:
    write, read = FORMATS[fmt]
    with tempfile.TemporaryDirectory(prefix="warren-bench-") as tmp:
        write_s, stored = write(n, body_kind, Path(tmp))
        read_s = read(n, Path(tmp))
    return {
        "format": fmt,
        "write_rps": n / write_s,
        "read_rps": n / read_s,
        "bytes_per_record": stored / n,
        "stored": stored,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_worker(fmt: str, n: int, body_kind: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", fmt, "--records", str(n), "--body", body_kind]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{fmt} worker failed:\n{done.stderr}")
    return json.loads(done.stdout)


def print_table(n: int, body_kind: str, results: dict[str, dict[str, Any]]) -> None:
    ours, base = results["warren"], results["jsonl+zstd"]
    print(f"{n:,} records, {BODY_SIZE}-byte {body_kind} bodies, zstd level {LEVEL}; python {sys.version.split()[0]}")
    print()
    print(
        f"| {'format':<11} | {'write rec/s':>12} | {'read rec/s':>12} | {'bytes/record':>12} | {'peak RSS MiB':>12} |"
    )
    print("| ----------- | -----------: | -----------: | -----------: | -----------: |")
    for r in (ours, base):
        print(
            f"| {r['format']:<11} | {r['write_rps']:>12,.0f} | {r['read_rps']:>12,.0f} | "
            f"{r['bytes_per_record']:>12.1f} | {r['peak_rss_mib']:>12.1f} |"
        )
    print()
    verdicts = [
        ("size", base["bytes_per_record"] / ours["bytes_per_record"], "smaller"),
        ("write speed", ours["write_rps"] / base["write_rps"], "faster"),
        ("read speed", ours["read_rps"] / base["read_rps"], "faster"),
    ]
    for what, ratio, better in verdicts:
        outcome = "beats" if ratio > 1 else "LOSES to"
        print(f"warren {outcome} the baseline on {what}: {ratio:.2f}x {better if ratio > 1 else 'as good'}")


def profile(n: int, body_kind: str) -> None:
    """Where warren's write and read time goes, by function (own time first), generation excluded."""
    with tempfile.TemporaryDirectory(prefix="warren-bench-") as tmp:
        write_profile = cProfile.Profile()
        warren_write(n, body_kind, Path(tmp), write_profile)
        read_profile = cProfile.Profile()
        read_profile.runcall(warren_read, n, Path(tmp))
    for phase, profiler in (("write", write_profile), ("read", read_profile)):
        print(f"---- warren {phase}, {n:,} records ----")
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--body", choices=("json", "random"), default="json")
    parser.add_argument("--profile", action="store_true", help="profile warren's write and read instead")
    parser.add_argument("--worker", choices=sorted(FORMATS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.records < 1:
        parser.error("--records must be at least 1")
    if args.worker:
        print(json.dumps(worker(args.worker, args.records, args.body)))
    elif args.profile:
        profile(args.records, args.body)
    else:
        results = {fmt: run_worker(fmt, args.records, args.body) for fmt in FORMATS}
        print_table(args.records, args.body, results)


if __name__ == "__main__":
    main()
