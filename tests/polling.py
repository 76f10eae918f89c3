"""Waiting in tests: poll with a deadline, never sleep a guessed time. One helper for code that blocks
(`wait_until`) and one for coroutines (`eventually`); both name what they waited for when it never came."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], *, timeout: float, what: str, every: float = 0.05) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` (and the last value) if it never does."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value!r})")
        time.sleep(every)
        value = check()
    return value


async def eventually(check: Callable[[], object], what: str, *, timeout: float = 5.0, every: float = 0.005) -> None:
    """`wait_until` for a test running on the event loop: the loop keeps running while it waits."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(every)


async def stays(check: Callable[[], object], what: str, *, duration: float, every: float = 0.005) -> None:
    """`check` holds for `duration` seconds: for absences, which no deadline poll can show."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if not check():
            raise AssertionError(f"no longer true: {what}")
        await asyncio.sleep(every)
