"""warren's own errors and the exit codes the CLI maps every typed error to.

`protocol` and `sinks` cannot import `bridge`, so each has its own root (`ProtocolError`, `SinkError`);
`exit_code_for` knows all of them, and a traceback only ever means a bug.
"""

from __future__ import annotations

from protocol.errors import (
    AuthenticationError,
    BrokerError,
    CertificateRejected,
    ProtocolError,
    ShortStringTooLong,
)
from sinks.errors import SinkError

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # the command ran, and what it checked does not hold (verify, demo)
EXIT_USAGE = 2  # bad command line or configuration
EXIT_BROKER = 3  # broker unreachable, refused us, or closed on us
EXIT_SINK = 4  # archive storage unreachable or refusing
EXIT_CORRUPT = 5  # archive content is damaged
EXIT_AUTH = 6  # credentials refused
EXIT_REFUSED = 7  # the target broker refused what was asked of it (its management API said why)
EXIT_INTERNAL = 70  # a bug in warren (sysexits' EX_SOFTWARE): reported in one line, never as a traceback
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # the reader of our output went away (128 + SIGPIPE, as the shell reports it)


class WarrenError(Exception):
    """Root of the errors raised by the bridge (the product)."""

    exit_code = EXIT_CHECK_FAILED


class ConfigError(WarrenError):
    """A configuration value is missing or wrong: says which file, which key, what was expected."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None) -> None:
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.source = source
        self.key = key


class CheckFailed(WarrenError):
    """Something a command verified does not hold."""

    exit_code = EXIT_CHECK_FAILED


class TargetRefused(WarrenError):
    """The target broker understood a request and refused it (the management API's 4xx and reason):
    not unreachable, not credentials; retrying the same request will not help."""

    exit_code = EXIT_REFUSED


def exit_code_for(error: BaseException) -> int:
    if isinstance(error, WarrenError):
        return error.exit_code
    from protocol.management import ManagementError  # here: aiohttp is for the commands that need it

    if isinstance(error, ManagementError) and error.credentials_refused:
        return EXIT_AUTH
    if isinstance(error, ManagementError) and error.refused:  # the API understood, and said why not
        return EXIT_REFUSED
    if isinstance(error, (AuthenticationError, CertificateRejected)):
        return EXIT_AUTH
    if isinstance(error, ShortStringTooLong):  # a name no broker can take: what was asked is wrong
        return EXIT_USAGE
    if isinstance(error, (BrokerError, ProtocolError)):
        return EXIT_BROKER
    if isinstance(error, SinkError):
        return EXIT_SINK
    return EXIT_CHECK_FAILED


class ArchiveCorrupt(WarrenError):
    """An archived object is damaged: names the object, where in it, and what is wrong."""

    exit_code = EXIT_CORRUPT

    def __init__(self, what: str, *, segment: str, offset: int | None = None) -> None:
        at = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{segment}{at}: {what}")
        self.segment = segment
        self.offset = offset
        self.what = what
