"""Heartbeats on a fake clock: ours go out when we have been quiet, theirs going missing is a dead peer."""

from __future__ import annotations

import pytest
from pamqp import commands

from protocol.core import frames
from protocol.core.connection import HEARTBEAT_SILENCE_FACTOR, State
from protocol.errors import ConnectionLost, HeartbeatTimeout
from tests.unit.peer import Broker, FakeClock, opened

HEARTBEAT = 10


def connected(heartbeat: int = HEARTBEAT) -> Broker:
    broker = opened(server_heartbeat=heartbeat)
    assert broker.conn.heartbeat == heartbeat
    assert broker.heard_bytes() == b""
    return broker


def test_no_heartbeat_while_we_have_been_talking():
    broker = connected()
    broker.clock.advance(HEARTBEAT / 2 - 0.1)
    broker.conn.tick()
    assert broker.heard_bytes() == b""


def test_heartbeat_sent_after_half_an_interval_of_our_silence():
    broker = connected()
    broker.clock.advance(HEARTBEAT / 2)
    broker.say_bytes(frames.HEARTBEAT_FRAME)  # the broker is alive
    broker.conn.tick()
    assert broker.heard_bytes() == frames.HEARTBEAT_FRAME
    # and the interval restarts from that write
    broker.clock.advance(HEARTBEAT / 4)
    broker.conn.tick()
    assert broker.heard_bytes() == b""


def test_any_write_counts_as_our_heartbeat():
    broker = connected()
    broker.clock.advance(HEARTBEAT / 2 - 1)
    number = broker.open_channel()  # a write at t = 4
    broker.clock.advance(2)  # t = 6: 6 s since the handshake, but only 2 s since we last wrote
    broker.conn.tick()
    assert broker.heard_bytes() == b""
    broker.clock.advance(3)
    broker.conn.tick()
    assert broker.heard_bytes() == frames.HEARTBEAT_FRAME
    assert number == 1


def test_no_extra_heartbeat_when_output_is_already_queued():
    broker = connected()
    broker.conn.ack(1, 5)  # queued, not yet written
    broker.clock.advance(HEARTBEAT)
    broker.conn.tick()
    data = broker.heard_bytes()
    assert frames.HEARTBEAT_FRAME not in data


def test_broker_silence_beyond_the_limit_is_heartbeat_timeout():
    broker = connected()
    limit = HEARTBEAT * HEARTBEAT_SILENCE_FACTOR
    assert 1.5 * HEARTBEAT <= limit <= 2 * HEARTBEAT
    broker.clock.advance(limit)
    broker.conn.tick()  # exactly at the limit: still alive
    assert broker.conn.state is State.OPEN
    broker.clock.advance(0.5)
    with pytest.raises(HeartbeatTimeout) as info:
        broker.conn.tick()
    err = info.value
    assert isinstance(err, ConnectionLost)
    assert err.heartbeat == HEARTBEAT
    assert err.silent_for == pytest.approx(limit + 0.5)
    assert f"{HEARTBEAT}s heartbeat" in str(err)
    assert broker.conn.state is State.CLOSED


def test_dead_peer_detected_within_two_intervals_when_ticking_every_quarter():
    broker = connected()
    died_at = broker.clock.now
    with pytest.raises(HeartbeatTimeout):
        for _ in range(100):
            broker.clock.advance(HEARTBEAT / 4)
            broker.conn.tick()
            broker.heard_bytes()  # the transport writes our heartbeats
    assert broker.clock.now - died_at <= 2 * HEARTBEAT


@pytest.mark.parametrize(
    "frame",
    [
        frames.HEARTBEAT_FRAME,
        commands.Connection.Blocked("x"),
    ],
    ids=["heartbeat", "method"],
)
def test_receiving_any_frame_resets_the_silence(frame):
    broker = connected()
    for _ in range(10):
        broker.clock.advance(HEARTBEAT)
        broker.say(frame)
        broker.conn.tick()
        broker.heard_bytes()
    assert broker.conn.state is State.OPEN
    broker.clock.advance(HEARTBEAT * 2)
    with pytest.raises(HeartbeatTimeout):
        broker.conn.tick()


def test_a_partial_frame_also_proves_the_broker_alive():
    broker = connected()
    broker.clock.advance(HEARTBEAT)
    assert broker.say_bytes(frames.HEARTBEAT_FRAME[:3]) == []
    broker.clock.advance(HEARTBEAT)
    broker.conn.tick()
    assert broker.conn.state is State.OPEN


def test_deliveries_keep_the_connection_alive():
    broker = connected()
    number = broker.open_channel()
    for tag in range(1, 20):
        broker.clock.advance(HEARTBEAT - 1)
        (message,) = broker.say_bytes(broker.deliver_bytes(number, [b"m"], delivery_tag=tag))
        broker.conn.tick()
        broker.heard_bytes()
    assert message.delivery_tag == 19


def test_heartbeats_off_never_time_out_and_never_send():
    broker = connected(heartbeat=0)
    broker.clock.advance(24 * 3600)
    broker.conn.tick()
    assert broker.heard_bytes() == b""
    assert broker.conn.state is State.OPEN


def test_no_heartbeat_duty_before_the_connection_is_open():
    clock = FakeClock()
    broker = Broker(clock=clock)
    broker.start()
    clock.advance(3600)
    broker.conn.tick()
    assert broker.heard_bytes() == b""
    assert broker.conn.state is State.AWAIT_TUNE


def test_heartbeat_duty_continues_while_closing():
    broker = connected()
    broker.conn.close()
    broker.heard_bytes()
    broker.clock.advance(HEARTBEAT * 2)
    with pytest.raises(HeartbeatTimeout):
        broker.conn.tick()
