"""Coverage-guided fuzzing (atheris, libFuzzer) of the two decoders that take bytes from outside: the AMQP
frame handler (what a broker, or anything posing as one, sends) and the segment reader (what an archive
holds, whoever wrote it). Each runs for a fixed budget with libFuzzer's memory and time limits; the only
exceptions allowed out are the typed ones a user would see (FrameError, ArchiveCorrupt), so anything
else, a hang past the timeout or memory past the limit is a finding and exits non-zero.

    python tests/fuzz.py frames --seconds 60
    python tests/fuzz.py segment --seconds 60 [--rss-limit-mb 512] [--timeout 10]
    python tests/fuzz.py records --seconds 60     # a block's records, its checksums made to hold

`make soak` runs both; test_fuzz.py runs each for a few seconds in `make test`. The hypothesis tests in
tests/unit cover the same decoders with generated (not mutated) input.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import struct
import sys
import tempfile
from pathlib import Path

import atheris
import msgpack
import zstandard

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

with atheris.instrument_imports(include=["protocol", "bridge"]):
    from pamqp import commands

    from bridge.archive.record import Source, SourceKind, amqp_record_map
    from bridge.archive.segment import BlockEntry, SegmentBuilder, crc32c, decode_block, verify_segment
    from bridge.errors import ArchiveCorrupt
    from protocol.core.message import Message
    from protocol.errors import FrameError
    from tests.unit.peer import Broker, content_header, opened, raw_frame

SOURCE = Source("/", SourceKind.QUEUE, "fuzz")


def consuming_broker() -> tuple[Broker, int]:
    """A client after the handshake, with a channel open: deliveries on it are decoded, not refused."""
    broker = opened()
    return broker, broker.open_channel()


def fuzz_frames(data: bytes) -> None:
    broker, _ = consuming_broker()
    with contextlib.suppress(FrameError):  # typed, with the reply code the client sent the broker
        broker.say_bytes(data)


def fuzz_segment(data: bytes) -> None:
    with contextlib.suppress(ArchiveCorrupt):  # typed, naming the segment and the offset
        verify_segment(data, "fuzzed.wseg")


def fuzz_records(data: bytes) -> None:
    """The records of a block whose checksums hold (a lying writer, not a flipped bit): the first byte
    is the record count the block claims, the rest what it decompresses to."""
    count, raw = (data[0], data[1:]) if data else (0, b"")
    compressed = zstandard.ZstdCompressor().compress(raw)
    block = struct.pack(">IIII", len(compressed), len(raw), count, crc32c(compressed)) + compressed
    entry = BlockEntry(position=0, length=len(block), records=count, first_seq=1, min_time_ns=0, max_time_ns=0)
    with contextlib.suppress(ArchiveCorrupt):
        decode_block(block, entry, "fuzzed.wseg")


def frames_seeds() -> list[bytes]:
    _, channel = consuming_broker()
    deliver = Broker.encode(commands.Basic.Deliver("ctag", 7, True, "ex", "rk"), channel)
    body = b"hello, fuzzer"
    message = Message.build(body, {"message_id": "m-1", "headers": {"a": 1, "b": [1, "x"]}})
    header = content_header(len(body), message.raw_properties, channel)
    return [
        deliver + header + raw_frame(3, channel, body),
        raw_frame(8, 0, b""),  # heartbeat
        Broker.encode(commands.Connection.Blocked("low on memory")) + Broker.encode(commands.Connection.Unblocked()),
        Broker.encode(commands.Basic.Ack(3, True), channel) + Broker.encode(commands.Basic.Nack(4), channel),
        Broker.encode(commands.Channel.Close(404, "NOT_FOUND", 50, 10), channel),
        Broker.encode(commands.Connection.Close(320, "CONNECTION_FORCED", 0, 0)),
    ]


def segment_seeds() -> list[bytes]:
    seeds = []
    for count, block_bytes in ((1, 4096), (40, 256)):
        builder = SegmentBuilder(SOURCE, created_ns=1_700_000_000_000_000_000, block_bytes=block_bytes)
        for seq in range(1, count + 1):
            sent = datetime.datetime.fromtimestamp(1_700_000_000 + seq, datetime.UTC)
            props = {"message_id": f"m-{seq}", "timestamp": sent, "headers": {"n": seq}}
            builder.add(amqp_record_map(seq, 1_700_000_000_000_000_000 + seq, Message.build(b"x" * seq, props)))
        seeds.append(builder.finish())
    return seeds


def records_seeds() -> list[bytes]:
    props = {"message_id": "m-1", "headers": {"n": 1}}
    maps = [amqp_record_map(seq, 1_700_000_000_000_000_000, Message.build(b"body", props)) for seq in (1, 2)]
    return [bytes([len(maps)]) + b"".join(msgpack.packb(m) for m in maps)]


TARGETS = {
    "frames": (fuzz_frames, frames_seeds),
    "segment": (fuzz_segment, segment_seeds),
    "records": (fuzz_records, records_seeds),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--seconds", type=int, default=60, help="the budget")
    parser.add_argument("--rss-limit-mb", type=int, default=512, help="more than this is a finding")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    args = parser.parse_args()
    target, seeds = TARGETS[args.target]
    with tempfile.TemporaryDirectory(prefix=f"warren-fuzz-{args.target}-") as corpus:
        for n, seed in enumerate(seeds()):
            (Path(corpus) / f"seed-{n}").write_bytes(seed)
        libfuzzer = [
            sys.argv[0],
            f"-max_total_time={args.seconds}",
            f"-rss_limit_mb={args.rss_limit_mb}",
            f"-timeout={args.timeout}",
            "-print_final_stats=1",
            f"-artifact_prefix={corpus}/../warren-fuzz-finding-",
            corpus,
        ]
        atheris.Setup(libfuzzer, target)
        atheris.Fuzz()  # exits the process: 0 when the budget ran out without a finding


if __name__ == "__main__":
    main()
