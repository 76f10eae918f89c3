"""warren's own queues: a tap's name stays within RabbitMQ's 255 bytes whatever the source queue's name,
and a restore leaves out every queue warren declared for itself, and their bindings."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.archiver.tap import tap_queue_name
from bridge.own_queues import ACK_PREFIX, TAP_PREFIX, is_own_queue, owned_queue_name
from bridge.replay import topology

LONG = ("orders eu/ü.1 " * 20).encode()[:255].decode("utf-8", "ignore")
names = st.text(min_size=1, max_size=255).map(lambda s: s.encode()[:255].decode("utf-8", "ignore")).filter(bool)


def test_a_short_queue_is_tapped_into_warren_tap_and_its_name():
    assert tap_queue_name("orders eu/ü.1") == "warren.tap.orders eu/ü.1"


@given(a=names, b=names)
def test_a_tap_name_fits_255_bytes_is_warrens_own_and_never_shared(a, b):
    for name in (a, b):
        tap = tap_queue_name(name)
        assert len(tap.encode()) <= 255
        assert tap.startswith(TAP_PREFIX) and is_own_queue(tap)
    if a != b:
        assert tap_queue_name(a) != tap_queue_name(b)


def test_a_255_byte_queue_gets_a_tap_name_with_a_readable_head():
    tap = tap_queue_name(LONG)
    assert len(tap.encode()) <= 255
    assert tap.startswith(TAP_PREFIX + LONG[:100])


def test_a_restore_leaves_out_warrens_own_queues_and_their_bindings_and_keeps_the_rest():
    own = [tap_queue_name("orders"), tap_queue_name(LONG), owned_queue_name(ACK_PREFIX, LONG)]
    kept = ["orders", LONG, "warren.tapestry", "warren"]
    definitions = {
        "queues": [{"name": q, "vhost": "warren/test"} for q in own + kept],
        "bindings": [
            {"source": "x", "destination": q, "destination_type": "queue", "vhost": "warren/test"} for q in own + kept
        ]
        + [{"source": "x", "destination": "warren.tap.e2e", "destination_type": "exchange", "vhost": "warren/test"}],
    }
    prepared = topology.prepare(definitions, topology.Remap(), with_users=False)
    assert [q["name"] for q in prepared["queues"]] == kept
    assert [b["destination"] for b in prepared["bindings"]] == [*kept, "warren.tap.e2e"]  # an exchange is not ours
