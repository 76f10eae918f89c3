"""Where a dead-lettered message first died, from the headers RabbitMQ 3.x and 4.x give AMQP 0-9-1 consumers."""

from __future__ import annotations

import pytest

from bridge.errors import ConfigError
from bridge.replay.dead_letters import Death, first_death, parse_reasons


def test_the_first_death_headers_name_the_origin():
    headers = {"x-first-death-queue": "orders", "x-first-death-reason": "rejected", "x-death": [{"queue": "other"}]}
    assert first_death(headers) == Death("orders", "rejected")


def test_without_them_the_oldest_x_death_entry_does():
    deaths = [{"queue": b"retry", "reason": b"expired"}, {"queue": b"orders", "reason": b"rejected"}]
    assert first_death({"x-death": deaths}) == Death("orders", "rejected")


@pytest.mark.parametrize("headers", [None, {}, {"x-death": []}, {"x-death": "garbage"}, {"x-first-death-queue": ""}])
def test_a_message_never_dead_lettered_has_no_origin(headers):
    assert first_death(headers) is None


def test_unknown_reasons_are_refused_by_name():
    assert parse_reasons(["rejected", "delivery_limit"]) == ("rejected", "delivery_limit")
    with pytest.raises(ConfigError, match="expected one of rejected, expired, maxlen, delivery_limit"):
        parse_reasons(["timeout"])
