"""The acknowledgement witness: proof of which acknowledgements the broker applied.

AMQP 0-9-1 gives no receipt for a basic.ack, so after a crash the archiver cannot tell from its own
memory whether the acknowledgements it sent last reached the broker; the messages they covered may or
may not come again. To know, the archiver acknowledges in transactions on the consuming channel: each
transaction holds the acknowledgement and one small message, published to warren.ack.<queue> (a classic
queue that keeps only its newest message), naming the archive sequence acknowledged through. The broker
applies the two together or neither, so at the start of a session that message says exactly which
archived records are still unacknowledged: they are the ones the broker delivers again (copies).

The witness message is transient: a broker restart loses it, and then nothing is proven (a broker
that restarts may also deliver again messages whose acknowledgement it had applied).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgpack

from bridge.own_queues import ACK_PREFIX, owned_queue_name
from protocol import Connection
from protocol.aio.channel import Channel
from protocol.errors import ChannelClosedByBroker, ProtocolError

log = logging.getLogger("warren.archiver")

WITNESS_ARGUMENTS: dict[str, Any] = {"x-queue-type": "classic", "x-max-length": 1, "x-overflow": "drop-head"}
FORMAT = 1


class WitnessUnavailable(Exception):
    """The broker refused the witness queue (permissions, or a queue of that name declared otherwise)."""


def witness_queue(source_queue: str) -> str:
    return owned_queue_name(ACK_PREFIX, source_queue)


def encode_witness(acked_through: int) -> bytes:
    return msgpack.packb({"format": FORMAT, "acked_through": acked_through})


def decode_witness(body: bytes) -> int | None:
    """The sequence a witness message names, or None for anything warren did not write."""
    try:
        m = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException):
        return None
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("acked_through"), int):
        return None
    return int(m["acked_through"])


async def read_witness(conn: Connection, queue: str) -> int | None:
    """Declare the witness queue and read (without taking) its message: the archive sequence
    acknowledged through, or None when it holds none (first run, or the broker restarted)."""
    channel = await conn.channel()
    try:
        await channel.queue_declare(queue, durable=True, arguments=WITNESS_ARGUMENTS)
        message = await channel.get(queue)
        if message is None:
            return None
        channel.reject(message.delivery_tag, requeue=True)
        return decode_witness(message.body)
    except ChannelClosedByBroker as err:
        raise WitnessUnavailable(str(err)) from err
    finally:
        with contextlib.suppress(ProtocolError):
            await channel.close()


async def write_baseline(conn: Connection, queue: str) -> None:
    """Before a source's first acknowledgement ever (its archive holds nothing yet): a witness saying
    nothing is acknowledged, confirmed by the broker before consuming starts (so before any transaction
    of the session). A session that then ends before its first transaction commits finds it, and proves
    the copies the broker delivers again, where an empty witness queue would prove nothing."""
    channel = await conn.channel()
    try:
        await channel.confirm_select(window=1)
        await channel.publish("", queue, encode_witness(0))
        await channel.wait_for_confirms()
    except ChannelClosedByBroker as err:
        raise WitnessUnavailable(str(err)) from err
    finally:
        with contextlib.suppress(ProtocolError):
            await channel.close()


class Acknowledger:
    """Acknowledges a consuming channel's deliveries strictly in order, each time through the newest
    tag handed to `through()`; with a witness queue, in a transaction with the witness message, one
    transaction at a time (acknowledgements that come meanwhile join the next one)."""

    def __init__(self, channel: Channel, witness: str | None) -> None:
        self.channel = channel
        self.witness = witness
        self.committed_seq = 0  # the witness says this much (and the broker applied it)
        self._tag = 0
        self._seq = 0
        self._sent_tag = 0
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._settled.set()
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    async def start(self) -> None:
        if self.witness is not None:
            await self.channel.tx_select()
            self._task = asyncio.create_task(self._commit_loop(), name=f"acknowledge via {self.witness}")

    def through(self, delivery_tag: int, seq: int) -> None:
        """Acknowledge every delivery up to `delivery_tag`, whose message is archive record `seq`."""
        if delivery_tag <= self._tag or not self.channel.is_open:
            return
        self._tag, self._seq = delivery_tag, seq
        if self.witness is None:
            self.channel.ack(delivery_tag, multiple=True)
            self._sent_tag = delivery_tag
            return
        self._settled.clear()
        self._wake.set()

    async def _commit_loop(self) -> None:
        assert self.witness is not None
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                tag, seq = self._tag, self._seq
                if tag <= self._sent_tag:
                    continue
                self.channel.ack(tag, multiple=True)
                await self.channel.publish("", self.witness, encode_witness(seq))
                await self.channel.tx_commit()
                self._sent_tag = tag
                self.committed_seq = seq
                if self._tag == tag:
                    self._settled.set()
        except asyncio.CancelledError:
            raise
        except ProtocolError as err:  # the channel or connection ended: the session ends with it
            self.error = err
            self._settled.set()

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until everything handed to `through()` is acknowledged (committed, with a witness)."""
        if self.witness is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout)
        if not self._settled.is_set():
            log.warning("acknowledgements not confirmed before closing", extra={"witness": self.witness})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
