"""Users in the saved definitions, as an operator restoring a broker sees them: the archive keeps users,
tags and permissions but no password hash unless `keep-password-hashes = true`; `replay --definitions
--with-users` then creates the users without a password and says so, never takes away the password of
a user the target already has (the one the replay logs in with, say), and with the hashes kept the users
log in on the target with their old passwords."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pika
import pika.exceptions
import pytest

from bridge.archive.definitions import decode_definitions
from tests.integration import test_replay
from tests.integration.archiving import (
    Archivers,
    Witness,
    definitions_objects,
    publish,
    simple_messages,
    write_config,
)
from tests.integration.replaying import Management, output, replay
from tests.integration.test_replay import target_args

target = test_replay.target  # the replay tests' target node: one of that module's own, per version


def saved_users(sink: Path) -> dict[str, dict[str, Any]]:
    [saved] = definitions_objects(sink)
    return {u["name"]: u for u in decode_definitions(saved.read_bytes())["users"]}


def logs_in(node_port: int, user: str, password: str) -> bool:
    try:
        pika.BlockingConnection(
            pika.ConnectionParameters("127.0.0.1", node_port, credentials=pika.PlainCredentials(user, password))
        ).close()
    except pika.exceptions.ProbableAuthenticationError:
        return False
    return True


@pytest.fixture
def app_user(broker) -> tuple[str, str]:
    """A user of the source broker with a password and permissions on '/', removed afterwards."""
    name, password = f"app-{secrets.token_hex(3)}", "app-s3cret"
    api = Management(broker)
    api.request("PUT", f"/users/{quote(name)}", {"password": password, "tags": "monitoring"})
    api.request("PUT", f"/permissions/%2F/{quote(name)}", {"configure": "", "write": "^orders", "read": ".*"})
    yield name, password
    api.request("DELETE", f"/users/{quote(name)}")


def archive_once(broker, tmp_path: Path, **archive: Any) -> Path:
    """A snapshot run of a queue holding one message; it saves the broker's definitions once."""
    queue, sink = f"users.{secrets.token_hex(3)}", tmp_path / "archive"
    with Witness(broker.amqp_uri) as witness:
        witness.declare_queue(queue)
    publish(broker.amqp_uri, simple_messages(1, queue))
    config = write_config(tmp_path / "warren.toml", broker, sink, [{"src-queue": queue}], **archive)
    with Archivers(tmp_path) as archivers:
        result = archivers.run("--config", str(config), "--snapshot")
    assert result.returncode == 0, result.stderr
    with Witness(broker.amqp_uri) as witness:
        witness.delete(queue)
    return sink


def test_saved_definitions_keep_users_and_permissions_but_no_password_hash(broker, app_user, tmp_path):
    name, _ = app_user
    users = saved_users(archive_once(broker, tmp_path))
    assert users[name]["tags"] in ("monitoring", ["monitoring"])
    assert all(user["password_hash"] == "" for user in users.values()), users


def test_with_users_creates_them_without_a_password_and_leaves_the_targets_own_alone(
    broker, target, app_user, tmp_path
):
    name, password = app_user
    sink = archive_once(broker, tmp_path)
    result = replay("--archive", str(sink), *target_args(target), "--definitions", "--with-users")
    assert result.returncode == 0, output(result)
    assert f"{name!r}" in result.stdout and "created without a password" in result.stdout, result.stdout
    assert "'guest'" in result.stdout and "left as they are" in result.stdout, result.stdout
    assert logs_in(target.ports.amqp, "guest", "guest")  # the replay's own user kept its password
    api = Management(target)
    assert api.request("GET", f"/users/{quote(name)}")["name"] == name
    assert not logs_in(target.ports.amqp, name, password)
    api.request("DELETE", f"/users/{quote(name)}")


def test_with_password_hashes_kept_restored_users_log_in_with_their_old_passwords(broker, target, app_user, tmp_path):
    name, password = app_user
    sink = archive_once(broker, tmp_path, keep_password_hashes=True)
    assert saved_users(sink)[name]["password_hash"]
    result = replay("--archive", str(sink), *target_args(target), "--definitions", "--with-users")
    assert result.returncode == 0, output(result)
    assert "without a password" not in result.stdout, result.stdout
    assert logs_in(target.ports.amqp, name, password)
    Management(target).request("DELETE", f"/users/{quote(name)}")
