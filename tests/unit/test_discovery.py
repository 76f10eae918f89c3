"""Which queues a `src-queue-pattern` picks from a management API listing, and how the configuration
refuses a pattern it cannot use."""

from __future__ import annotations

import pytest

from bridge.archiver.discovery import matching
from bridge.config import QueueSourceConfig, StreamSourceConfig, parse_config
from bridge.errors import ConfigError

BROKER = {"uri": "amqp://guest:guest@127.0.0.1:5672/%2F"}


def patterns(*sources: dict):
    return parse_config({"broker": BROKER, "source": list(sources)}, "warren.toml").patterns


def listing(*queues: tuple[str, str], exclusive: tuple[str, ...] = ()) -> list[dict]:
    return [{"name": n, "type": t, "vhost": "/", "exclusive": n in exclusive} for n, t in queues]


def test_a_pattern_picks_the_matching_queues_of_the_types_asked_with_its_settings():
    found = matching(
        patterns({"src-queue-pattern": r"^orders\.", "prefetch-count": 250, "ack-mode": "on-publish"}),
        "/",
        listing(("orders.eu", "classic"), ("orders.us", "quorum"), ("orders.log", "stream"), ("audit", "classic")),
    )
    assert sorted(found) == [("queue", "/", "orders.eu"), ("queue", "/", "orders.us")]
    eu = found[("queue", "/", "orders.eu")]
    assert isinstance(eu, QueueSourceConfig)
    assert (eu.queue, eu.prefetch_count, eu.ack_mode, eu.vhost) == ("orders.eu", 250, "on-publish", "/")


def test_streams_are_picked_when_asked_for_and_archived_as_streams():
    found = matching(
        patterns({"src-queue-pattern": "log", "queue-types": ["stream"], "offset": "last"}),
        "/",
        listing(("orders.log", "stream"), ("orders.log.dlq", "classic")),
    )
    assert list(found) == [("stream", "/", "orders.log")]
    stream = found[("stream", "/", "orders.log")]
    assert isinstance(stream, StreamSourceConfig) and stream.offset.kind == "last"


def test_warrens_own_exclusive_and_server_named_queues_are_never_picked():
    found = matching(
        patterns({"src-queue-pattern": ""}),  # everything
        "/",
        listing(
            ("warren.ack.orders", "classic"),
            ("warren.tap.orders", "classic"),
            ("amq.gen-JzTY20BRgKO-HjmUJj0wLg", "classic"),
            ("reply.to.me", "classic"),
            ("orders", "classic"),
            exclusive=("reply.to.me",),
        ),
    )
    assert list(found) == [("queue", "/", "orders")]


def test_a_pattern_is_searched_like_a_policys_and_matches_any_utf8_name():
    found = matching(
        patterns({"src-queue-pattern": "ü"}), "/", listing(("orders eu/ü.1", "classic"), ("orders.u", "classic"))
    )
    assert list(found) == [("queue", "/", "orders eu/ü.1")]


def test_a_pattern_sees_only_its_own_vhost():
    (pattern,) = patterns({"src-queue-pattern": "orders", "vhost": "eu"})
    assert pattern.queue.vhost == "eu" and pattern.queue.uri.endswith("/eu")
    assert matching([pattern], "/", listing(("orders", "classic"))) == {}
    assert list(matching([pattern], "eu", listing(("orders", "classic")))) == [("queue", "eu", "orders")]


@pytest.mark.parametrize(
    ("table", "key", "says"),
    [
        ({"src-queue-pattern": "orders("}, "source[0].src-queue-pattern", "not a regular expression"),
        ({"src-queue-pattern": "o", "queue-types": ["lazy"]}, "source[0].queue-types", "classic, quorum, stream"),
        ({"src-queue-pattern": "o", "mode": "snapshot"}, "source[0].mode", "snapshot names its queues"),
        ({"src-queue-pattern": "o", "src-queue": "orders"}, "source[0]", "src-queue-pattern"),
        ({"src-queue-pattern": "o", "src-delete-after": 5}, "source[0].src-delete-after", "unknown"),
    ],
)
def test_a_pattern_the_archiver_cannot_use_is_refused_naming_the_key(table, key, says):
    with pytest.raises(ConfigError) as caught:
        patterns(table)
    assert key in str(caught.value) and says in str(caught.value), str(caught.value)
