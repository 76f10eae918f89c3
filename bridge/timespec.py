"""Times on the command line: RFC 3339 (`2026-11-23T03:00:00Z`), a date, `now`, or relative (`-15m`)."""

from __future__ import annotations

import datetime as dt
import re
import time

from bridge.errors import ConfigError

_RELATIVE = re.compile(r"^-\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)$")
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, *, now_ns: int | None = None, what: str = "time") -> int:
    """UTC nanoseconds since the epoch. A time without an offset is refused rather than guessed."""
    now = time.time_ns() if now_ns is None else now_ns
    value = text.strip()
    if value == "now":
        return now
    if m := _RELATIVE.match(value):
        return now - int(float(m[1]) * _UNIT_SECONDS[m[2]] * 1_000_000_000)
    if len(value) > 10 and value[10] == "t":  # RFC 3339 allows lower-case 't' and 'z'
        value = value[:10] + "T" + value[11:]
    if value.endswith("z"):
        value = value[:-1] + "Z"
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"{what} {text!r} is neither RFC 3339 (2026-11-23T03:00:00Z) nor relative (-15m, -2h, -1d)"
        ) from None
    if parsed.tzinfo is None:
        if len(value) == 10:  # a bare date means midnight UTC
            parsed = parsed.replace(tzinfo=dt.UTC)
        else:
            raise ConfigError(f"{what} {text!r} has no UTC offset: add Z or +HH:MM")
    return (parsed - EPOCH) // dt.timedelta(microseconds=1) * 1000  # exact: no float on the way


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)$")


def parse_duration(text: str, *, what: str = "duration") -> int:
    """Nanoseconds of `90d`, `12h`, `30m`, `2w`."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ConfigError(f"{what} {text!r}: expected a number and a unit (s, m, h, d, w), such as 90d")
    return int(float(m[1]) * _UNIT_SECONDS[m[2]] * 1_000_000_000)


def format_duration(ns: int) -> str:
    """`21.5s`, `20m00s`, `3h05m`: how long a spell lasted, for a person to read."""
    seconds = ns / 1e9
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_span(first_ns: int | None, last_ns: int | None) -> str:
    """`first .. last` in RFC 3339, or `-` when there is nothing between them."""
    if first_ns is None or last_ns is None:
        return "-"
    return f"{format_time(first_ns)} .. {format_time(last_ns)}"


def format_time(ns: int) -> str:
    """RFC 3339 in UTC with microseconds, as `ls --json` promises."""
    t = dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC).replace(microsecond=(ns // 1000) % 1_000_000)
    return t.isoformat().replace("+00:00", "Z")
