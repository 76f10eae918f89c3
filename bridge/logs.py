"""Structured logs on stderr (logfmt by default, JSON lines on request), with credentials scrubbed."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import urllib.parse
from collections.abc import Sequence

# user:password@ in any URI-looking text; the password part is replaced before a record is written
_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@\s/]*)@")
_RESERVED = set(vars(logging.makeLogRecord({})))


def passwords_in(argv: Sequence[str]) -> list[str]:
    """The options of `argv` whose URI carries a password (for the warning; never the password)."""
    found = []
    for i, arg in enumerate(argv):
        option, _, inline = arg.partition("=")
        value = inline if arg.startswith("--") and inline else arg
        if "://" not in value:
            continue
        try:
            password = urllib.parse.urlsplit(value).password
        except ValueError:
            continue
        if password:
            found.append(option if value is inline else (argv[i - 1] if i > 0 else "an argument"))
    return found


def warn_of_passwords_in(argv: Sequence[str]) -> None:
    """One warning naming the command-line options that carry a password, which `ps` shows everyone."""
    if exposed := passwords_in(argv):
        logging.getLogger("warren").warning(
            "a password on the command line is visible to every user of this host (ps, /proc, systemctl "
            "status); give the URI in the environment ($WARREN_BROKER, $WARREN_REPLAY_TARGET) or in the "
            "configuration file with ${VAR}",
            extra={"options": ",".join(exposed)},
        )


def scrub(text: str) -> str:
    """Mask the password of every URI in `text`."""
    return _CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields: dict[str, object] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": scrub(record.getMessage()),
    }
    for key, value in vars(record).items():
        if key not in _RESERVED and not key.startswith("_"):
            fields[key] = scrub(value) if isinstance(value, str) else value
    if record.exc_info and record.exc_info[1] is not None:
        fields["error"] = scrub(f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}")
    return fields


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = []
        for key, value in _fields(record).items():
            text = str(value)
            if not text or any(c in text for c in ' ="'):
                text = json.dumps(text, ensure_ascii=False)
            parts.append(f"{key}={text}")
        return " ".join(parts)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), ensure_ascii=False, default=str)


NOISY_LIBRARIES = ("azure", "botocore", "aiobotocore", "google", "urllib3", "rstream")


def configure(level: str = "info", fmt: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The cloud SDKs log every HTTP request at INFO; warren reports what matters about them itself.
    for noisy in NOISY_LIBRARIES:
        logging.getLogger(noisy).setLevel(logging.DEBUG if level.lower() == "debug" else logging.WARNING)
