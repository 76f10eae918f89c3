"""The `warren` command line: builds the parser from the commands' modules (bridge/commands/) and
dispatches to the one asked for; it turns every failure into one line and an exit code."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import os
import sys
from collections.abc import Sequence

from bridge import logs
from bridge.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    WarrenError,
    exit_code_for,
)
from protocol.errors import ProtocolError
from sinks import SinkError

log = logging.getLogger("warren")


# name -> (module, one line of help). A command's module is imported only when it runs (or for --help),
# so that `warren ls` does not pay for the cloud SDKs of `warren archive`.
COMMANDS = {
    "archive": (
        "bridge.commands.archive",
        "archive queues and streams continuously until SIGTERM/SIGINT (the forward bridge)",
    ),
    "replay": (
        "bridge.commands.replay",
        "republish an archive, or a point in time of it, into a broker (the reverse bridge)",
    ),
    "check": (
        "bridge.commands.check",
        "validate a configuration and reach its broker, management API, sources and sinks, one line each",
    ),
    "ls": ("bridge.commands.ls", "list the sources an archive holds, with counts, sizes and time ranges"),
    "inspect": ("bridge.commands.inspect", "print archived records, filtered, one per line"),
    "verify": ("bridge.commands.verify", "check every segment's checksums, footers and sequence continuity"),
    "sync": ("bridge.commands.sync", "copy what one archive lacks from another (migration, repair)"),
    "compact": ("bridge.commands.compact", "merge the small segments of every sealed hour into a few large ones"),
    "prune": ("bridge.commands.prune", "remove the sealed hours older than a retention (a dry run unless --apply)"),
    "serve": ("bridge.commands.serve", "show the archive's timeline as a web page, with a time picker for replay --at"),
    "drill": ("bridge.commands.drill", "restore a recent window into a throwaway broker and check it, as a drill"),
    "demo": (
        "bridge.commands.demo",
        "run the main job on a sample, on a private broker, and print what was verified",
    ),
}


EXIT_CODES = """

exit codes (README.md, "Exit codes"):
  0 ok    1 what was checked does not hold    2 bad command line or configuration
  3 broker unreachable, or it closed on us    4 archive storage unreachable or refusing
  5 archive damaged    6 credentials or certificate refused    7 the target refused what was asked
  70 a bug in warren    130 interrupted    141 the output's reader went away (| head)"""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `command`, that command's arguments only (the others' just by name)."""
    parser = argparse.ArgumentParser(
        prog="warren", description="Continuous archival and point-in-time replay for RabbitMQ."
    )
    parser.add_argument("--version", action="version", version=f"warren {version()}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="logfmt", choices=["logfmt", "json"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub = commands.add_parser(
            name, help=help_text, description=help_text, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        if command is None or command == name:
            importlib.import_module(module).add_arguments(sub)
            sub.epilog = (sub.epilog or "") + EXIT_CODES  # each command's examples, then what it may exit with
    return parser


def version() -> str:
    """warren's version, from the installed package's metadata."""
    try:
        return importlib.metadata.version("warren")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed as a package)"


def _command_in(argv: Sequence[str]) -> str | None:
    return next((arg for arg in argv if arg in COMMANDS), None)


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
    given = join_relative_times(sys.argv[1:] if argv is None else argv)
    args = build_parser(_command_in(given)).parse_args(given)
    logs.configure(args.log_level, args.log_format)
    logs.warn_of_passwords_in(given)
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).from_args(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Whoever read our output left (`| head`): stop quietly, with the shell's code for SIGPIPE, as
        # other tools do; stdout goes to /dev/null so that flushing it at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (WarrenError, ProtocolError, SinkError) as err:
        print(f"warren {args.command}: {logs.scrub(str(err))}", file=sys.stderr)
        return exit_code_for(err)
    except Exception as err:  # a bug: one line for the user, the traceback only when asked for
        log.debug("internal error", exc_info=True)
        print(
            f"warren {args.command}: internal error (a bug in warren, please report it): "
            f"{type(err).__name__}: {logs.scrub(str(err))}"
            + ("" if args.log_level == "debug" else "; --log-level debug shows where"),
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
