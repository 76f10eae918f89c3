"""The `warren` command line: parses arguments and calls one function per command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bridge import logs
from bridge.errors import EXIT_INTERRUPTED, EXIT_OK, exit_code_for
from protocol.errors import ProtocolError
from protocol.loop import run

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
    demo.add_argument("--count", type=int, default=1000, help="sample messages (default: 1000)")
    return parser


def _demo(args: argparse.Namespace) -> int:
    from bridge.demo import run_demo

    checks = run(run_demo(args.broker, args.count))
    return EXIT_OK if checks.failed == 0 else 1


HANDLERS = {"demo": _demo}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    try:
        return HANDLERS[args.command](args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as err:
        from bridge.errors import WarrenError

        if not isinstance(err, (WarrenError, ProtocolError)):
            raise
        print(f"warren {args.command}: {logs.scrub(str(err))}", file=sys.stderr)
        return exit_code_for(err)


if __name__ == "__main__":
    sys.exit(main())
