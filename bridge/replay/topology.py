"""Restoring topology: the definitions saved closest before T, remapped, loaded into the target.

Users and permissions are restored only on request (`--with-users`); without them the target's own
user is granted access to the vhosts the definitions create, so the replay can publish there.
warren's own tap queues are left out, and so are global parameters such as the cluster name.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.archive import layout
from bridge.archiver.definitions import decode_definitions
from bridge.archiver.tap import TAP_PREFIX
from bridge.errors import WarrenError
from protocol.management import ManagementClient
from sinks import Sink

log = logging.getLogger("warren.replay")

USER_KEYS = ("users", "permissions", "topic_permissions")


class NoDefinitions(WarrenError):
    """The archive holds no definitions saved at or before the requested time."""


@dataclass(frozen=True)
class Remap:
    vhosts: Mapping[str, str] = field(default_factory=dict)
    queues: Mapping[str, str] = field(default_factory=dict)
    exchanges: Mapping[str, str] = field(default_factory=dict)

    def vhost(self, name: str) -> str:
        return self.vhosts.get(name, name)

    def queue(self, name: str) -> str:
        return self.queues.get(name, name)

    def exchange(self, name: str) -> str:
        return self.exchanges.get(name, name)


async def definitions_at(sink: Sink, at_ns: int | None) -> tuple[str, dict[str, Any]]:
    """The key and content of the definitions saved closest at or before `at_ns` (the latest if None)."""
    best: tuple[int, str] | None = None
    async for info in sink.list(layout.DEFINITIONS + "/"):
        leaf = info.key.rsplit("/", 1)[-1]
        stem = leaf.removesuffix(layout.DEFINITIONS_SUFFIX)
        if not stem.isdigit():
            continue
        saved = int(stem)
        if (at_ns is None or saved <= at_ns) and (best is None or saved > best[0]):
            best = (saved, info.key)
    if best is None:
        when = "" if at_ns is None else " at or before the requested time"
        raise NoDefinitions(f"{sink.url}: the archive holds no definitions saved{when}")
    return best[1], decode_definitions(await sink.get(best[1]))


def prepare(definitions: dict[str, Any], remap: Remap, *, with_users: bool) -> dict[str, Any]:
    d = copy.deepcopy(definitions)
    d.pop("global_parameters", None)
    if not with_users:
        for key in USER_KEYS:
            d.pop(key, None)
    d["queues"] = [q for q in d.get("queues", []) if not q["name"].startswith(TAP_PREFIX)]
    d["bindings"] = [
        b
        for b in d.get("bindings", [])
        if not (b.get("destination_type") == "queue" and b["destination"].startswith(TAP_PREFIX))
    ]
    for v in d.get("vhosts", []):
        v["name"] = remap.vhost(v["name"])
    for key in ("queues", "exchanges", "bindings", "policies", "parameters", *USER_KEYS):
        for item in d.get(key, []):
            if "vhost" in item:
                item["vhost"] = remap.vhost(item["vhost"])
    for q in d.get("queues", []):
        q["name"] = remap.queue(q["name"])
    for x in d.get("exchanges", []):
        x["name"] = remap.exchange(x["name"])
    for b in d.get("bindings", []):
        b["source"] = remap.exchange(b["source"])
        rename = remap.queue if b.get("destination_type") == "queue" else remap.exchange
        b["destination"] = rename(b["destination"])
    return d


async def restore(management_uri: str, definitions: dict[str, Any], *, with_users: bool) -> None:
    async with ManagementClient(management_uri) as management:
        await management.load_definitions(definitions)
        if not with_users:
            user = management.endpoint.username
            for vhost in definitions.get("vhosts", []):
                await management.grant_all(vhost["name"], user)
    log.info(
        "definitions restored",
        extra={
            "queues": len(definitions.get("queues", [])),
            "exchanges": len(definitions.get("exchanges", [])),
            "bindings": len(definitions.get("bindings", [])),
        },
    )
