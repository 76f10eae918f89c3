"""`warren archive`: archive queues and streams continuously until SIGTERM/SIGINT (the forward bridge),
from a TOML configuration or, for the simple case, from the command line."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

from bridge.errors import EXIT_OK, ConfigError
from protocol.loop import run

BROKER_VARIABLE = "WARREN_BROKER"

EXAMPLES = (
    "examples:\n"
    "  warren archive --config /etc/warren/orders.toml --metrics-listen 127.0.0.1:9419\n"
    "  warren archive --broker amqp://guest:guest@localhost:5672/%2F --queue orders --stream events \\\n"
    "                 --sink s3://archive-bucket/warren?region=eu-west-1\n"
    "  warren archive --config /etc/warren/orders.toml --snapshot     # what the queues hold now, then exit"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("--config", metavar="FILE", help="TOML configuration (see docs/CONFIG.md)")
    # Also from the environment: a password on the command line is visible in ps.
    parser.add_argument(
        "--broker",
        metavar="URI",
        help=f"amqp://user:pass@host:5672/vhost, without --config; default: ${BROKER_VARIABLE}",
    )
    parser.add_argument("--management-uri", metavar="URI", help="default: http://host:15672, same credentials")
    parser.add_argument("--stream-uri", metavar="URI", help="default: rabbitmq-stream://host:5552/vhost")
    parser.add_argument("--queue", metavar="NAME", action="append", default=[], help="a queue to archive")
    parser.add_argument("--stream", metavar="NAME", action="append", default=[], help="a stream to archive")
    parser.add_argument("--sink", metavar="URI", action="append", default=[], help="default: ./warren-archive")
    parser.add_argument("--mode", choices=["move", "tap", "snapshot"], default="move", help="for --queue")
    parser.add_argument("--ack-mode", choices=["on-confirm", "on-publish", "no-ack"], default="on-confirm")
    parser.add_argument("--prefetch-count", type=int, default=1000)
    parser.add_argument("--offset", default="first", help="for --stream: first, last, next, N or a time")
    parser.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on /metrics, and /healthz and /readyz (e.g. 127.0.0.1:9419; a bare port "
        "listens on loopback); overrides metrics-listen in the configuration",
    )
    parser.add_argument(
        "--snapshot", action="store_true", help="copy what the queues hold now without consuming it, then exit"
    )


def from_args(args: argparse.Namespace) -> int:
    from bridge.archiver.service import run_archiver
    from bridge.config import config_from_args, load_config
    from bridge.metrics.listen import parse_listen

    if args.config:
        if args.broker or args.queue or args.stream or args.sink:
            raise ConfigError("give either --config FILE or --broker/--queue/--stream/--sink, not both")
        config = load_config(args.config)
    elif (broker := args.broker or os.environ.get(BROKER_VARIABLE)) and (args.queue or args.stream):
        config = config_from_args(
            broker,
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
    if args.metrics_listen:
        parse_listen(args.metrics_listen)  # a bad address is a configuration error before anything starts
        config = replace(config, archive=replace(config.archive, metrics_listen=args.metrics_listen))
    run(run_archiver(config, snapshot=args.snapshot))
    return EXIT_OK
