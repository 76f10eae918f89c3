"""A URI with a password on the command line is named for the warning (ps shows it); the password is not."""

from __future__ import annotations

from bridge.logs import passwords_in


def test_options_whose_uri_holds_a_password_are_named():
    argv = [
        "replay",
        "--archive",
        "s3://bucket/warren",
        "--target=amqp://admin:s3cret@host/%2F",
        "--target-management-uri",
        "http://admin:s3cret@host:15672",
    ]
    assert passwords_in(argv) == ["--target", "--target-management-uri"]


def test_uris_without_a_password_and_plain_values_are_not():
    argv = ["archive", "--broker", "amqp://host/%2F", "--queue", "a://b:c", "--sink", "file:///var/lib/warren"]
    assert passwords_in(argv) == []
    assert passwords_in(["archive", "--broker", "amqp://guest@host/%2F", "--queue", "orders"]) == []
