"""`warren replay`: republish an archive, or a point in time or window of it, into a broker (the reverse
bridge); its arguments checked and turned into `ReplayOptions`."""

from __future__ import annotations

import argparse
import os

from bridge.archive.clocks import BY_HELP, CLOCKS, Clock
from bridge.errors import EXIT_OK, ConfigError
from bridge.replay import topology
from bridge.replay.dead_letters import parse_reasons
from bridge.replay.pacing import parse_pace
from bridge.replay.service import ReplayOptions
from bridge.timespec import parse_time
from protocol.loop import run
from protocol.stream import FilterValueSource

ARCHIVE_VARIABLE = "WARREN_REPLAY_ARCHIVE"
TARGET_VARIABLE = "WARREN_REPLAY_TARGET"


EXAMPLES = (
    "examples:\n"
    "  warren replay --archive file:///var/lib/warren --target amqp://guest:guest@new-host:5672/%2F \\\n"
    "                --at 2026-11-23T03:00:00Z --definitions --state replay.state\n"
    "  warren replay --archive s3://bucket/warren --target amqp://...@broker-b/%2F --follow --since -10m\n"
    "  warren replay --archive file:///var/lib/warren --target amqp://... --source orders --dry-run\n"
    "  warren replay --archive file:///var/lib/warren --target amqp://... --since -1h --until -30m --pace original\n"
    "  warren replay --archive file:///var/lib/warren --target amqp://... --source orders.dlq --to-origin \\\n"
    "                --death-reason rejected --strip-death"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    # Also from the environment, so that a service (systemd/warren-replay@.service) keeps the target's
    # password off the command line, where ps and systemctl status show it.
    parser.add_argument(
        "--archive",
        metavar="URI",
        default=os.environ.get(ARCHIVE_VARIABLE),
        help=f"archive URI or path; default: ${ARCHIVE_VARIABLE}",
    )
    parser.add_argument(
        "--target",
        metavar="AMQP_URI",
        default=os.environ.get(TARGET_VARIABLE),
        help=f"the broker to restore into; default: ${TARGET_VARIABLE}",
    )
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--at", metavar="T", help="every message captured at or before T (RFC 3339, or -15m)")
    when.add_argument("--since", metavar="T", help="window start (with or without --until)")
    parser.add_argument("--until", metavar="T", help="window end")
    parser.add_argument("--by", choices=CLOCKS, help=BY_HELP)
    parser.add_argument("--source", metavar="NAME", action="append", default=[], help="only this queue or stream")
    parser.add_argument("--definitions", action="store_true", help="first restore the topology saved before T")
    parser.add_argument("--with-users", action="store_true", help="with --definitions: users and permissions too")
    parser.add_argument("--target-management-uri", metavar="URI", help="default: http://target-host:15672")
    parser.add_argument("--target-stream-uri", metavar="URI", help="default: rabbitmq-stream://target-host:5552")
    parser.add_argument(
        "--via-exchange", action="store_true", help="republish to the original exchange and routing key"
    )
    for kind in ("vhost", "queue", "exchange"):
        parser.add_argument(
            f"--map-{kind}", metavar="A=B", action="append", default=[], help=f"replay {kind} A as {kind} B"
        )
    parser.add_argument(
        "--to-origin",
        action="store_true",
        help="undo dead-lettering: send each record of a dead-letter queue back to the queue it first died in "
        "(its x-first-death-queue / x-death), through the default exchange",
    )
    parser.add_argument(
        "--death-reason",
        metavar="REASON",
        action="append",
        default=[],
        help="with --to-origin: only messages that died for this (rejected, expired, maxlen, delivery_limit)",
    )
    parser.add_argument(
        "--strip-death",
        action="store_true",
        help="with --to-origin: without x-death and the x-first/last-death headers",
    )
    parser.add_argument(
        "--keep-duplicates",
        action="store_true",
        help="also replay the copies the archiver proved duplicates (redelivered after a crash)",
    )
    parser.add_argument(
        "--keep-delivery-count",
        action="store_true",
        help="keep the source broker's x-delivery-count header (quorum queues' redelivery count; removed by default)",
    )
    parser.add_argument(
        "--stream-filter-from",
        metavar="SECTION.KEY",
        help="for streams whose publishers gave filter values over the stream protocol: where each message holds "
        "its value (application-properties.KEY, properties.subject, ...); the x-stream-filter-value annotation "
        "RabbitMQ keeps for AMQP publishers is always used where present",
    )
    parser.add_argument("--rate", metavar="N", type=float, help="at most N messages per second")
    parser.add_argument(
        "--pace",
        metavar="original|Nx",
        help="keep the original gaps between messages (load reproduction), or N times faster (2x) or slower "
        "(0.5x); after a stall (the target blocked, slow confirms) the schedule moves on rather than bursting",
    )
    parser.add_argument("--state", metavar="FILE", help="checkpoint progress here; a rerun continues from it")
    parser.add_argument("--dry-run", action="store_true", help="list what would be replayed; publish nothing")
    parser.add_argument("--follow", action="store_true", help="after catching up, keep replaying new segments")
    parser.add_argument("--skip-corrupt", action="store_true", help="skip corrupt segments, report them at the end")
    parser.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on /metrics, and /healthz and /readyz, while replaying (e.g. "
        "127.0.0.1:9420; a bare port listens on loopback)",
    )


def _metrics_listen(value: str | None) -> str | None:
    from bridge.metrics.listen import parse_listen

    if value:
        parse_listen(value)  # a bad address is a configuration error before anything starts
    return value or None


def from_args(args: argparse.Namespace) -> int:
    from bridge.replay.service import run_replay

    run(run_replay(options_from_args(args)))
    return EXIT_OK


def parse_mapping(pairs: list[str], flag: str) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise ConfigError(f"{flag} {pair!r}: expected OLD=NEW")
        mapping[old] = new
    return mapping


def _filter_source(text: str | None) -> FilterValueSource | None:
    try:
        return FilterValueSource.parse(text) if text else None
    except ValueError as err:
        raise ConfigError(str(err), key="--stream-filter-from") from None


def options_from_args(args: argparse.Namespace) -> ReplayOptions:
    """The command line's `replay` arguments, checked, as options."""
    if not args.archive or not args.target:
        missing = "--archive" if not args.archive else "--target"
        variable = ARCHIVE_VARIABLE if not args.archive else TARGET_VARIABLE
        raise ConfigError(f"give {missing} (or set {variable} in the environment)")
    if (args.death_reason or args.strip_death) and not args.to_origin:
        raise ConfigError("--death-reason and --strip-death go with --to-origin")
    if args.to_origin and args.via_exchange:
        raise ConfigError(
            "--to-origin sends each message to the queue it died in; --via-exchange to where it was first sent"
        )
    until = args.at or args.until
    if args.follow and until:
        raise ConfigError("--follow replays what the archiver commits next: it takes --since, not --at or --until")
    return ReplayOptions(
        archive=args.archive,
        target=args.target,
        since_ns=parse_time(args.since, what="--since") if args.since else None,
        by=Clock(args.by) if args.by else None,
        until_ns=parse_time(until, what="--at" if args.at else "--until") if until else None,
        sources=tuple(args.source),
        definitions=args.definitions,
        with_users=args.with_users,
        target_management_uri=args.target_management_uri,
        target_stream_uri=args.target_stream_uri,
        via_exchange=args.via_exchange,
        remap=topology.Remap(
            parse_mapping(args.map_vhost, "--map-vhost"),
            parse_mapping(args.map_queue, "--map-queue"),
            parse_mapping(args.map_exchange, "--map-exchange"),
        ),
        keep_duplicates=args.keep_duplicates,
        keep_delivery_count=args.keep_delivery_count,
        stream_filter_from=_filter_source(args.stream_filter_from),
        rate=args.rate,
        pace=parse_pace(args.pace) if args.pace else None,
        to_origin=args.to_origin,
        death_reasons=parse_reasons(args.death_reason),
        strip_death=args.strip_death,
        state=args.state,
        dry_run=args.dry_run,
        follow=args.follow,
        skip_corrupt=args.skip_corrupt,
        metrics_listen=_metrics_listen(args.metrics_listen),
    )
