"""Several awaits at once, but not too many: on object storage each is a round trip, and an hour of an
archive can hold thousands of segments."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def at_most(limit: int, calls: list[Coroutine[Any, Any, T]]) -> list[T]:
    """The calls' results in order, `limit` of them running at once; the first failure is raised."""
    slots = asyncio.Semaphore(limit)

    async def one(call: Coroutine[Any, Any, T]) -> T:
        async with slots:
            return await call

    return list(await asyncio.gather(*(one(call) for call in calls)))
