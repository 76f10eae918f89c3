"""Restoring topology: the definitions saved closest before T, remapped, loaded into the target.

Users and permissions are restored only on request (`--with-users`); without them the target's own
user is granted access to the vhosts the definitions create, so the replay can publish there.
warren's own queues (taps, acknowledgement witnesses) are left out, and so are global parameters such as
the cluster name.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.archive.definitions import decode_definitions, saved_definitions
from bridge.errors import TargetRefused, WarrenError
from bridge.own_queues import is_own_queue
from protocol.management import ManagementClient, ManagementError
from sinks import Sink

log = logging.getLogger("warren.replay")

USER_KEYS = ("users", "permissions", "topic_permissions")


@dataclass(frozen=True)
class PolicyRemoval:
    """Policy keys brokers from `since` on refuse (the whole import fails on one), and why they went."""

    since: tuple[int, ...]
    keys: tuple[str, ...]
    why: str


POLICY_REMOVALS = (
    PolicyRemoval(
        (4, 0),
        (
            "ha-mode",
            "ha-params",
            "ha-sync-mode",
            "ha-sync-batch-size",
            "ha-promote-on-shutdown",
            "ha-promote-on-failure",
        ),
        "classic mirroring is gone in RabbitMQ 4.0",
    ),
)


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
    best = next((s for s in reversed(await saved_definitions(sink)) if at_ns is None or s[0] <= at_ns), None)
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
    d["queues"] = [q for q in d.get("queues", []) if not is_own_queue(q["name"])]
    d["bindings"] = [
        b
        for b in d.get("bindings", [])
        if not (b.get("destination_type") == "queue" and is_own_queue(b["destination"]))
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


def without_passwordless_overwrites(
    definitions: dict[str, Any], existing: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[str]]:
    """Users the archive kept without a password hash (keep-password-hashes, docs/CONFIG.md) are created
    on the target without a password; one the target already has keeps its own (loading it would take
    away its password, perhaps the very one this replay logs in with). One report line each way."""
    blank = [u for u in definitions.get("users", []) if not u.get("password_hash")]
    if not blank:
        return definitions, []
    there = {u.get("name") for u in existing}
    kept = sorted(u["name"] for u in blank if u["name"] in there)
    created = sorted(u["name"] for u in blank if u["name"] not in there)
    report = []
    if kept:
        report.append(
            f"users {', '.join(map(repr, kept))}: already on the target, left as they are (the archive holds "
            "no password for them)"
        )
    if created:
        report.append(
            f"users {', '.join(map(repr, created))}: created without a password (the archive keeps none unless "
            "keep-password-hashes = true); give them one with rabbitmqctl change_password"
        )
    d = dict(definitions)
    d["users"] = [u for u in definitions.get("users", []) if u.get("password_hash") or u["name"] not in there]
    return d, report


def fit_to_target(definitions: dict[str, Any], version: tuple[int, ...] | None) -> tuple[dict[str, Any], list[str]]:
    """The definitions without what a broker of `version` refuses, and one line per policy changed.

    A policy left with no keys is dropped whole (the broker refuses an empty one too). An unknown
    version changes nothing: the broker then judges, and a refusal says what it refused.
    """
    removals = [r for r in POLICY_REMOVALS if version is not None and version >= r.since]
    if not removals:
        return definitions, []
    d = copy.deepcopy(definitions)
    report: list[str] = []
    kept = []
    for policy in d.get("policies", []):
        definition = policy.get("definition", {})
        where = f"policy {policy.get('name')!r} in vhost {policy.get('vhost')!r}"
        dropped: list[str] = []
        whys: list[str] = []
        for removal in removals:
            here = [key for key in definition if key in removal.keys]
            if here:
                dropped += here
                whys.append(removal.why)
                for key in here:
                    del definition[key]
        if not dropped:
            kept.append(policy)
            continue
        why = "; ".join(whys)
        if definition:
            kept.append(policy)
            report.append(f"{where}: dropped {', '.join(dropped)} ({why})")
        else:
            report.append(f"{where}: dropped whole, it held only {', '.join(dropped)} ({why})")
    if "policies" in d:
        d["policies"] = kept
    return d, report


async def restore(management_uri: str, definitions: dict[str, Any], *, with_users: bool) -> list[str]:
    """Load the definitions into the target, first fitted to its RabbitMQ version; returns the report
    of what had to change (`fit_to_target`), for the replay's summary.

    The target's refusal (a 4xx with its reason) is a `TargetRefused`; unreachable and credentials
    refused stay the management API's own errors.
    """
    version: tuple[int, ...] | None = None
    asked = "its version"
    async with ManagementClient(management_uri) as management:
        try:
            version = await management.server_version()
            fitted, report = fit_to_target(definitions, version)
            if with_users:
                asked = "its users"
                fitted, kept_users = without_passwordless_overwrites(fitted, await management.users())
                report += kept_users
            asked = "the definitions"
            await management.load_definitions(fitted)
            if not with_users:
                user = management.endpoint.username
                for vhost in fitted.get("vhosts", []):
                    asked = f"access to vhost {vhost['name']!r} for user {user!r}"
                    await management.grant_all(vhost["name"], user)
        except ManagementError as err:
            if not err.refused:
                raise
            rabbitmq = f"RabbitMQ {'.'.join(map(str, version))}" if version else "its management API"
            raise TargetRefused(
                f"the target broker ({rabbitmq}) refused {asked}: {err.status} {err.reason} ({err.url})"
            ) from err
    for line in report:
        log.warning("definitions changed for the target", extra={"change": line})
    log.info(
        "definitions restored",
        extra={
            "queues": len(fitted.get("queues", [])),
            "exchanges": len(fitted.get("exchanges", [])),
            "bindings": len(fitted.get("bindings", [])),
            "policies": len(fitted.get("policies", [])),
        },
    )
    return report
