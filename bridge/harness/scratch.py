"""A broker to restore into and throw away (`warren demo`, `warren drill`): the one given, or a private
node on free loopback ports in a temporary directory, removed afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("warren")


@dataclass
class Broker:
    amqp_uri: str
    management_uri: str


@contextlib.asynccontextmanager
async def private_broker(label: str, given: Broker | None, *, announce: bool = True) -> AsyncIterator[Broker]:
    """The given broker, or a private node started here and removed afterwards."""
    if given is not None:
        yield given
        return
    from bridge.harness.nodes import LocalNode, require_rabbitmq

    require_rabbitmq()
    root = Path(tempfile.mkdtemp(prefix=f"warren-{label}-"))
    node = LocalNode(root)
    if announce:
        print(f"starting private RabbitMQ node {label} in {root} ...", flush=True)
    await asyncio.to_thread(node.start)
    try:
        yield Broker(node.amqp_uri, node.management_uri)
    finally:
        await asyncio.to_thread(node.destroy)
