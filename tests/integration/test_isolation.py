"""One failing source never stops the others: a queue deleted mid-run, a user whose permission is revoked
mid-run, a queue that does not exist yet at start. Each is reported loudly, in one line naming it, and
retried on its own; the healthy source beside them archives everything meanwhile, and a failed source
picks up by itself once the cause is gone. Only when nothing at all can start does the archiver stop.
"""

from __future__ import annotations

import pytest

from bridge.harness.nodes import LocalNode
from tests.integration.archiving import (
    Witness,
    archived_count,
    publish,
    queue_source,
    simple_messages,
    write_config,
)
from tests.polling import wait_until

pytestmark = pytest.mark.slow


def user_uri(node: LocalNode, user: str, password: str) -> str:
    return node.amqp_uri.replace("guest:guest@", f"{user}:{password}@")


def refusals(log: str, queue: str) -> list[str]:
    return [line for line in log.splitlines() if "level=error" in line and queue in line and "refused" in line]


def test_sources_that_fail_mid_run_are_reported_and_retried_while_the_others_go_on(fresh_broker, archivers, tmp_path):
    node = fresh_broker()
    healthy, deleted, revoked, late = "iso.healthy", "iso.deleted", "iso.revoked", "iso.late"
    node.ctl("add_user", "limited", "pw-limited")
    node.ctl("set_permissions", "-p", "/", "limited", ".*", ".*", ".*")
    with Witness(node.amqp_uri) as witness:
        for queue in (healthy, deleted, revoked):
            witness.declare_queue(queue)
    sink = tmp_path / "archive"
    config = write_config(
        tmp_path / "warren.toml",
        node,
        sink,
        [
            {"src-queue": healthy, "reconnect-delay": 0.5},
            {"src-queue": deleted, "reconnect-delay": 0.5},
            {"src-queue": revoked, "src-uri": user_uri(node, "limited", "pw-limited"), "reconnect-delay": 0.5},
            {"src-queue": late, "reconnect-delay": 0.5},  # does not exist yet
        ],
        definitions_interval=0,
    )
    archiver = archivers.start("--config", str(config))
    archiver.wait_for_log("msg=archiving", count=3)
    wait_until(lambda: refusals(archiver.stderr(), late), timeout=30, what=f"{late} reported missing")

    # Mid-run: one queue deleted, one user's permissions taken away and its connection closed.
    with Witness(node.amqp_uri) as witness:
        witness.delete(deleted)
    node.ctl("clear_permissions", "-p", "/", "limited")
    node.ctl("close_all_user_connections", "limited", "permission revoked by the test")
    wait_until(lambda: refusals(archiver.stderr(), deleted), timeout=30, what=f"{deleted} reported gone")
    wait_until(lambda: refusals(archiver.stderr(), revoked), timeout=30, what=f"{revoked} reported refused")

    # Meanwhile the healthy source archives everything published to it.
    sent = simple_messages(3000, healthy)
    publish(node.amqp_uri, sent)
    wait_until(lambda: archived_count(sink, queue_source(healthy)) == len(sent), timeout=60, what="healthy archived")
    assert archiver.running(), archiver.stderr()
    assert "Traceback" not in archiver.stderr()

    # Each failed source picks up by itself once the cause is gone.
    with Witness(node.amqp_uri) as witness:
        witness.declare_queue(deleted)
        witness.declare_queue(late)
    node.ctl("set_permissions", "-p", "/", "limited", ".*", ".*", ".*")
    for queue in (deleted, revoked, late):
        publish(node.amqp_uri, simple_messages(100, queue))
    for queue in (deleted, revoked, late):
        wait_until(
            lambda q=queue: archived_count(sink, queue_source(q)) == 100, timeout=90, what=f"{queue} archived again"
        )
    archiver.terminate()


def test_when_no_source_can_start_the_archiver_exits_naming_each(fresh_broker, archivers, tmp_path):
    node = fresh_broker()
    config = write_config(
        tmp_path / "warren.toml",
        node,
        tmp_path / "archive",
        [{"src-queue": "iso.missing.one"}, {"src-queue": "iso.missing.two"}],
        definitions_interval=0,
    )
    result = archivers.run("--config", str(config))
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert refusals(result.stderr, "iso.missing.one") and refusals(result.stderr, "iso.missing.two")
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("warren archive: ") and "NOT_FOUND" in last
