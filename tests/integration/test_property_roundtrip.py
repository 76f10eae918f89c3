"""Arbitrary property sets and header tables survive a real broker byte for byte."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import Message, connect
from protocol.core.message import Properties, decode_properties, encode_properties
from protocol.loop import run

shortstr = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)
keys = st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) <= 128)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=60),
    st.builds(bytearray, st.binary(max_size=40)),
    st.builds(lambda m, e: decimal.Decimal(m).scaleb(-e), st.integers(-(10**8), 10**8), st.integers(0, 6)),
    st.floats(allow_nan=False, allow_infinity=False, width=32),  # RabbitMQ fails (541) on infinities
    st.integers(min_value=0, max_value=2**32 - 1).map(lambda s: dt.datetime.fromtimestamp(s, dt.UTC)),
)
tables = st.recursive(
    st.dictionaries(keys, scalars, max_size=6),
    lambda inner: st.dictionaries(
        keys, st.one_of(scalars, inner, st.lists(st.one_of(scalars, inner), max_size=4)), max_size=5
    ),
    max_leaves=20,
)
properties = st.builds(
    Properties,
    content_type=st.none() | shortstr,
    content_encoding=st.none() | shortstr,
    headers=st.none() | tables,
    delivery_mode=st.none() | st.sampled_from([1, 2]),
    priority=st.none() | st.integers(0, 9),
    correlation_id=st.none() | shortstr,
    reply_to=st.none() | shortstr,
    expiration=st.none() | st.integers(1000, 10**9).map(str),
    message_id=st.none() | shortstr,
    timestamp=st.none() | st.integers(0, 2**32 - 1).map(lambda s: dt.datetime.fromtimestamp(s, dt.UTC)),
    message_type=st.none() | shortstr,
    user_id=st.none() | st.just("guest"),  # the broker checks user_id against the login
    app_id=st.none() | shortstr,
)


def test_arbitrary_properties_survive_the_broker_byte_identical(broker):
    queue = "warren.test.props"
    sent: list[Message] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(props=properties, body=st.binary(max_size=300))
    def collect(props, body):
        sent.append(Message(body, encode_properties(props)))

    collect()

    async def main():
        conn = await connect(broker.amqp_uri)
        ch = await conn.channel()
        await ch.queue_declare(queue, auto_delete=False)
        await ch.queue_purge(queue)
        await ch.confirm_select()
        for message in sent:
            await ch.publish("", queue, message.body, raw_properties=message.raw_properties)
        await ch.wait_for_confirms()
        got: list[Message] = []
        done = asyncio.get_running_loop().create_future()

        def on_message(m: Message) -> None:
            got.append(m)
            if len(got) == len(sent):
                done.set_result(None)

        await ch.consume(queue, on_message, no_ack=True)
        await asyncio.wait_for(done, 30)
        await ch.queue_delete(queue)
        await conn.close()
        return got

    got = run(main())
    assert len(got) == len(sent)
    for before, after in zip(sent, got, strict=True):
        assert after.raw_properties == before.raw_properties
        assert after.body == before.body
        assert decode_properties(after.raw_properties) == decode_properties(before.raw_properties)
