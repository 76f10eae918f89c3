"""Definitions fitted to the target's RabbitMQ version, and the management API's refusals as errors a
caller (and the exit code) can act on."""

from __future__ import annotations

import json

import pytest

from bridge.errors import EXIT_AUTH, EXIT_BROKER, EXIT_REFUSED, TargetRefused, exit_code_for
from bridge.replay.topology import fit_to_target
from protocol.management import ManagementError, _reason, parse_version

MIRRORING = {
    "ha-mode": "exactly",
    "ha-params": 2,
    "ha-sync-mode": "automatic",
    "ha-sync-batch-size": 50,
    "ha-promote-on-shutdown": "always",
    "ha-promote-on-failure": "always",
}


def policy(name: str, definition: dict, vhost: str = "/") -> dict:
    return {"vhost": vhost, "name": name, "pattern": "^x", "priority": 0, "definition": definition}


def definitions(*policies: dict) -> dict:
    return {"queues": [{"name": "q", "vhost": "/", "durable": True, "arguments": {}}], "policies": list(policies)}


def test_mirroring_keys_are_dropped_for_4_0_and_the_rest_of_the_policy_is_kept():
    given = definitions(policy("ha-all", {"ha-mode": "all", "ha-sync-mode": "automatic", "max-length": 1000}))
    fitted, report = fit_to_target(given, (4, 0, 5))
    assert fitted["policies"] == [policy("ha-all", {"max-length": 1000})]
    assert report == [
        "policy 'ha-all' in vhost '/': dropped ha-mode, ha-sync-mode (classic mirroring is gone in RabbitMQ 4.0)"
    ]
    assert fitted["queues"] == given["queues"]
    assert given["policies"][0]["definition"]["ha-mode"] == "all", "the archive's definitions were changed"


def test_a_policy_of_mirroring_keys_only_is_dropped_whole():
    fitted, report = fit_to_target(definitions(policy("ha-two", MIRRORING, vhost="eu")), (4, 1, 0))
    assert fitted["policies"] == []
    assert report == [
        "policy 'ha-two' in vhost 'eu': dropped whole, it held only "
        "ha-mode, ha-params, ha-sync-mode, ha-sync-batch-size, ha-promote-on-shutdown, ha-promote-on-failure "
        "(classic mirroring is gone in RabbitMQ 4.0)"
    ]


def test_policies_a_4_0_broker_takes_are_left_alone_and_not_reported():
    # Found on 4.0.5: queue-master-locator and queue-mode are still accepted (and ignored or mapped).
    kept = policy("fine", {"max-length": 5, "queue-master-locator": "min-masters", "queue-mode": "lazy"})
    fitted, report = fit_to_target(definitions(kept, policy("ha", {"ha-mode": "all", "expires": 1})), (4, 0, 5))
    assert fitted["policies"] == [kept, policy("ha", {"expires": 1})]
    assert len(report) == 1


@pytest.mark.parametrize("version", [(3, 10, 8), (3, 13, 7), None])
def test_brokers_that_take_mirroring_keys_or_do_not_say_get_the_definitions_unchanged(version):
    given = definitions(policy("ha-all", MIRRORING))
    assert fit_to_target(given, version) == (given, [])


@pytest.mark.parametrize(
    ("text", "version"),
    [("4.0.5", (4, 0, 5)), ("3.10.8", (3, 10, 8)), ("3.13.0-rc.1", (3, 13, 0)), ("4.1.0+2.g1234", (4, 1, 0))],
)
def test_rabbitmq_versions_parse_by_their_leading_numbers(text, version):
    assert parse_version(text) == version


@pytest.mark.parametrize("text", [None, "", "unknown", 4])
def test_a_missing_or_odd_version_is_none(text):
    assert parse_version(text) is None


def test_the_reason_rabbitmq_4_gives_for_mirroring_keys_reads_as_one_line():
    # The body RabbitMQ 4.0.5 answers POST /api/definitions with, for a policy holding ha-mode and ha-params.
    body = json.dumps(
        {
            "error": "bad_request",
            "reason": '<<"Validation failed\\n\\n[{&lt;&lt;\\"ha-mode\\"&gt;&gt;,&lt;&lt;\\"exactly\\"&gt;&gt;},'
            '{&lt;&lt;\\"ha-params\\"&gt;&gt;,2}] are not recognised policy settings\\n (//ha-two)">>',
        }
    )
    assert _reason(body) == (
        'bad_request: Validation failed [{"ha-mode","exactly"},{"ha-params",2}] '
        "are not recognised policy settings (//ha-two)"
    )


def test_a_plain_reason_is_kept_as_it_is():
    body = json.dumps({"error": "bad_request", "reason": "precondition_failed: invalid arg 'x-message-ttl'"})
    assert _reason(body) == "bad_request: precondition_failed: invalid arg 'x-message-ttl'"
    assert _reason("<html>\n  Bad Gateway\n</html>") == "<html> Bad Gateway </html>"


def refusal(status: int | None) -> ManagementError:
    return ManagementError("...", url="http://127.0.0.1:15672/api/definitions", status=status, reason="why")


@pytest.mark.parametrize(
    ("status", "code"),
    [
        *[(None, EXIT_BROKER), (500, EXIT_BROKER), (503, EXIT_BROKER), (401, EXIT_AUTH), (403, EXIT_AUTH)],
        *[(400, EXIT_REFUSED), (404, EXIT_REFUSED), (405, EXIT_REFUSED), (422, EXIT_REFUSED)],
    ],
)
def test_management_errors_map_to_unreachable_credentials_or_refused(status, code):
    assert exit_code_for(refusal(status)) == code


def test_a_refusal_keeps_the_status_and_the_apis_reason():
    err = refusal(400)
    assert (err.status, err.reason, err.refused, err.credentials_refused) == (400, "why", True, False)
    assert not refusal(None).refused and refusal(401).credentials_refused


def test_target_refused_has_its_own_exit_code():
    assert EXIT_REFUSED == 7
    assert exit_code_for(TargetRefused("the target broker refused the definitions: 400 ...")) == 7
