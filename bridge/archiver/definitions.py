"""Topology in the archive: the broker's definitions, saved at start and whenever they change."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from typing import Any

from bridge.archive import layout
from bridge.archive.definitions import encode_definitions
from protocol.management import ManagementClient, ManagementError
from sinks import Sink, SinkError

log = logging.getLogger("warren.archiver")


def without_password_hashes(definitions: dict[str, Any]) -> dict[str, Any]:
    """The definitions with every user's password hash blanked: a salted hash is still a credential, and
    an archive is read by more people than the broker's administrators. Users, tags and permissions
    stay (a restore with --with-users recreates them, without a password)."""
    users = definitions.get("users")
    if not users:
        return definitions
    return {**definitions, "users": [{**user, "password_hash": ""} for user in users]}


def _digest(definitions: dict[str, Any]) -> bytes:
    # The broker's own version field changes with nothing else; it is not topology.
    significant = {k: v for k, v in definitions.items() if k not in ("rabbit_version", "rabbitmq_version")}
    return hashlib.sha256(json.dumps(significant, sort_keys=True).encode()).digest()


class DefinitionsRecorder:
    def __init__(
        self,
        management_uri: str,
        sink: Sink,
        interval: float,
        stopping: asyncio.Event,
        *,
        keep_password_hashes: bool = False,
    ) -> None:
        self.management_uri = management_uri
        self.keep_password_hashes = keep_password_hashes
        self.sink = sink
        self.interval = interval
        self.stopping = stopping
        self.saved = 0
        self._last: bytes | None = None

    async def run(self) -> None:
        async with ManagementClient(self.management_uri) as management:
            while not self.stopping.is_set():
                await self.poll_once(management)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), self.interval)

    async def save_once(self) -> bool:
        """Save the definitions now (a snapshot's topology); True if saved."""
        async with ManagementClient(self.management_uri) as management:
            return await self.poll_once(management)

    async def poll_once(self, management: ManagementClient) -> bool:
        """Save the definitions if they differ from the last saved; True if saved."""
        try:
            definitions = await management.definitions()
        except ManagementError as err:
            log.warning("cannot read the broker's definitions", extra={"reason": str(err)})
            return False
        if not self.keep_password_hashes:
            definitions = without_password_hashes(definitions)
        digest = _digest(definitions)
        if digest == self._last:
            return False
        key = layout.definitions_key("", time.time_ns())
        try:
            await self.sink.put(key, encode_definitions(definitions))
        except SinkError as err:
            log.warning("cannot save the broker's definitions", extra={"reason": str(err)})
            return False
        self._last = digest
        self.saved += 1
        log.info("definitions saved", extra={"key": key})
        return True
