"""The `warren` command line: parses arguments and calls one function per command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bridge import logs
from bridge.errors import EXIT_CHECK_FAILED, EXIT_INTERRUPTED, EXIT_OK, ConfigError, WarrenError, exit_code_for
from protocol.errors import ProtocolError
from protocol.loop import run
from sinks import SinkError

log = logging.getLogger("warren")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="warren", description="Continuous archival and point-in-time replay for RabbitMQ."
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="logfmt", choices=["logfmt", "json"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run the main job on a sample, on a private broker, and print what was verified"
    )
    demo.add_argument("--broker", metavar="URI", help="use this broker instead of starting a private node")
    demo.add_argument("--count", type=int, default=1000, help="sample messages per batch (default: 1000)")
    demo.add_argument("--archive", default="warren-archive", help="archive directory (default: ./warren-archive)")

    ls = commands.add_parser("ls", help="list the sources an archive holds, with counts, sizes and time ranges")
    ls.add_argument("archive", metavar="ARCHIVE", help="archive URI (file:///var/lib/warren, s3://...) or path")
    ls.add_argument("--json", action="store_true", help="one JSON array, for scripts")

    inspect = commands.add_parser("inspect", help="print archived records, filtered, one per line")
    inspect.add_argument("archive", metavar="ARCHIVE|SEGMENT", help="archive URI or path, or one segment file")
    inspect.add_argument("--source", metavar="NAME", help="only this queue or stream")
    inspect.add_argument("--vhost", metavar="VHOST", help="only sources in this vhost")
    inspect.add_argument("--since", metavar="T", help="records at or after T (RFC 3339, or relative: -15m, -2h)")
    inspect.add_argument("--until", metavar="T", help="records at or before T")
    inspect.add_argument("--limit", metavar="N", type=int, help="stop after N matching records")
    inspect.add_argument(
        "--where",
        metavar="PROP[=VALUE]",
        action="append",
        default=[],
        help="property equals VALUE, or is present (message_id=42, headers.x-death); repeatable, all must hold",
    )
    inspect.add_argument("--routing-key", metavar="PATTERN", help="AMQP topic pattern: orders.*.eu, audit.#")
    inspect.add_argument("--grep", metavar="REGEX", help="body matches this regular expression")
    inspect.add_argument("--json", action="store_true", help="JSON lines, for jq")

    archive = commands.add_parser(
        "archive", help="archive queues and streams continuously until SIGTERM/SIGINT (the forward bridge)"
    )
    archive.add_argument("--config", metavar="FILE", help="TOML configuration (see docs/CONFIG.md)")
    archive.add_argument("--broker", metavar="URI", help="amqp://user:pass@host:5672/vhost, without --config")
    archive.add_argument("--management-uri", metavar="URI", help="default: http://host:15672, same credentials")
    archive.add_argument("--stream-uri", metavar="URI", help="default: rabbitmq-stream://host:5552/vhost")
    archive.add_argument("--queue", metavar="NAME", action="append", default=[], help="a queue to archive")
    archive.add_argument("--stream", metavar="NAME", action="append", default=[], help="a stream to archive")
    archive.add_argument("--sink", metavar="URI", action="append", default=[], help="default: ./warren-archive")
    archive.add_argument("--mode", choices=["move", "tap", "snapshot"], default="move", help="for --queue")
    archive.add_argument("--ack-mode", choices=["on-confirm", "on-publish", "no-ack"], default="on-confirm")
    archive.add_argument("--prefetch-count", type=int, default=1000)
    archive.add_argument("--offset", default="first", help="for --stream: first, last, next, N or a time")
    archive.add_argument(
        "--snapshot", action="store_true", help="copy what the queues hold now without consuming it, then exit"
    )

    replay = commands.add_parser(
        "replay", help="republish an archive, or a point in time of it, into a broker (the reverse bridge)"
    )
    replay.add_argument("--archive", metavar="URI", required=True, help="archive URI or path")
    replay.add_argument("--target", metavar="AMQP_URI", required=True, help="the broker to restore into")
    when = replay.add_mutually_exclusive_group()
    when.add_argument("--at", metavar="T", help="every message captured at or before T (RFC 3339, or -15m)")
    when.add_argument("--since", metavar="T", help="window start (with or without --until)")
    replay.add_argument("--until", metavar="T", help="window end")
    replay.add_argument("--source", metavar="NAME", action="append", default=[], help="only this queue or stream")
    replay.add_argument("--definitions", action="store_true", help="first restore the topology saved before T")
    replay.add_argument("--with-users", action="store_true", help="with --definitions: users and permissions too")
    replay.add_argument("--target-management-uri", metavar="URI", help="default: http://target-host:15672")
    replay.add_argument("--target-stream-uri", metavar="URI", help="default: rabbitmq-stream://target-host:5552")
    replay.add_argument(
        "--via-exchange", action="store_true", help="republish to the original exchange and routing key"
    )
    for kind in ("vhost", "queue", "exchange"):
        replay.add_argument(
            f"--map-{kind}", metavar="A=B", action="append", default=[], help=f"replay {kind} A as {kind} B"
        )
    replay.add_argument("--keep-duplicates", action="store_true", help="keep redelivered copies the archiver marked")
    replay.add_argument("--rate", metavar="N", type=float, help="at most N messages per second")
    replay.add_argument("--state", metavar="FILE", help="checkpoint progress here; a rerun continues from it")
    replay.add_argument("--dry-run", action="store_true", help="list what would be replayed; publish nothing")
    replay.add_argument("--follow", action="store_true", help="after catching up, keep replaying new segments")
    replay.add_argument("--skip-corrupt", action="store_true", help="skip corrupt segments, report them at the end")

    sync = commands.add_parser("sync", help="copy what one archive lacks from another (migration, repair)")
    sync.add_argument("source", metavar="SRC_ARCHIVE", help="archive URI or path to copy from")
    sync.add_argument("destination", metavar="DST_ARCHIVE", help="archive URI or path to copy into")

    verify = commands.add_parser("verify", help="check every segment's checksums, footers and sequence continuity")
    verify.add_argument("archive", metavar="ARCHIVE", help="archive URI or path")
    return parser


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bridge.demo import run_demo

    checks = run(run_demo(args.broker, args.count, Path(args.archive)))
    return EXIT_OK if checks.failed == 0 else 1


def _ls(args: argparse.Namespace) -> int:
    from bridge.archive_list import list_archive

    print(run(list_archive(args.archive, as_json=args.json)))
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    from bridge.archive_inspect import RecordFilter, inspect_target

    keep = RecordFilter.build(args.since, args.until, args.where, args.routing_key, args.grep)
    run(inspect_target(args.archive, keep, source=args.source, vhost=args.vhost, limit=args.limit, as_json=args.json))
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from bridge.archive_verify import verify_uri

    sound = run(verify_uri(args.archive))
    return EXIT_OK if sound else EXIT_CHECK_FAILED


def _archive(args: argparse.Namespace) -> int:
    from bridge.archiver.service import run_archiver
    from bridge.config import config_from_args, load_config

    if args.config:
        if args.broker or args.queue or args.stream or args.sink:
            raise ConfigError("give either --config FILE or --broker/--queue/--stream/--sink, not both")
        config = load_config(args.config)
    elif args.broker and (args.queue or args.stream):
        config = config_from_args(
            args.broker,
            args.queue,
            args.stream,
            args.sink,
            management_uri=args.management_uri,
            stream_uri=args.stream_uri,
            mode=args.mode,
            ack_mode=args.ack_mode,
            prefetch_count=args.prefetch_count,
            offset=args.offset,
        )
    else:
        raise ConfigError("give --config FILE, or --broker URI with at least one --queue or --stream")
    run(run_archiver(config, snapshot=args.snapshot))
    return EXIT_OK


def _replay(args: argparse.Namespace) -> int:
    from bridge.replay.service import options_from_args, run_replay

    run(run_replay(options_from_args(args)))
    return EXIT_OK


def _sync(args: argparse.Namespace) -> int:
    from bridge.archive_sync import sync_uris

    return EXIT_OK if run(sync_uris(args.source, args.destination)) else EXIT_CHECK_FAILED


HANDLERS = {
    "sync": _sync,
    "replay": _replay,
    "archive": _archive,
    "demo": _demo,
    "ls": _ls,
    "inspect": _inspect,
    "verify": _verify,
}


TIME_OPTIONS = ("--at", "--since", "--until")


def join_relative_times(argv: Sequence[str]) -> list[str]:
    """`--since -1d` as `--since=-1d`: argparse would take the relative time for an option."""
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        value = args[i + 1] if i + 1 < len(args) else ""
        if args[i] in TIME_OPTIONS and value.startswith("-") and value[1:2].isdigit():
            out.append(f"{args[i]}={value}")
            i += 2
            continue
        out.append(args[i])
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(join_relative_times(sys.argv[1:] if argv is None else argv))
    logs.configure(args.log_level, args.log_format)
    try:
        return HANDLERS[args.command](args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as err:
        if not isinstance(err, (WarrenError, ProtocolError, SinkError)):
            raise
        print(f"warren {args.command}: {logs.scrub(str(err))}", file=sys.stderr)
        return exit_code_for(err)


if __name__ == "__main__":
    sys.exit(main())
