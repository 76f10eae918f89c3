"""The asyncio side of a channel: RPCs, consumers, publishing with confirms and flow control.

A channel knows its connection only as a `ChannelOwner`: the core it queues frames on, when the
socket will take writes, and how to get what it queued written. The connection's events reach it
through the `_on_*` methods, called by the connection's dispatch.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pamqp import base, commands

from protocol.core import frames
from protocol.core.channel import ConfirmTracker
from protocol.core.connection import ConnectionState
from protocol.core.events import ChannelClosedByPeer, Confirm, GetEmpty, GetOk, MethodReceived, Returned
from protocol.core.message import Message, Properties, encode_properties
from protocol.errors import (
    ChannelClosed,
    ChannelClosedByBroker,
    ConsumerCancelled,
    MessageReturned,
    ProtocolError,
    PublishNacked,
)

log = logging.getLogger("warren.amqp")

_consumer_numbers = itertools.count(1)

OnMessage = Callable[[Message], None]
OnCancel = Callable[[BaseException], None]


@dataclass(frozen=True, slots=True)
class QueueInfo:
    queue: str
    message_count: int
    consumer_count: int


class ChannelOwner(Protocol):
    """What a channel needs of the connection it lives on (`protocol.aio.connection.Connection`)."""

    @property
    def core(self) -> ConnectionState:
        """The sans-IO connection the channel queues its frames on."""
        ...

    @property
    def is_open(self) -> bool: ...

    @property
    def writable(self) -> bool:
        """False while the socket's write buffer is full."""
        ...

    @property
    def blocked(self) -> bool:
        """True while the broker blocks publishing (connection.blocked)."""
        ...

    def schedule_flush(self) -> None:
        """Write what the core queued at the end of this loop turn (or now, if it is a lot)."""
        ...

    def flush(self) -> None:
        """Write what the core queued now."""
        ...

    def ack_later(self, channel: Channel) -> None:
        """Have `channel._write_pending_ack()` called before the next write: acks coalesced per write."""
        ...

    def forget(self, number: int) -> None:
        """The channel closed: events for its number are no longer its."""
        ...


class Channel:
    """One AMQP channel. Obtain with `Connection.channel()`."""

    def __init__(self, owner: ChannelOwner, number: int) -> None:
        self._conn = owner
        self._core = owner.core
        self.number = number
        self._loop = asyncio.get_running_loop()
        self._rpc_lock = asyncio.Lock()
        self._rpc_waiter: tuple[tuple[type, ...], asyncio.Future[Any]] | None = None
        self._consumers: dict[str, tuple[OnMessage, OnCancel | None]] = {}
        self._ack_upto = 0
        self._tracker: ConfirmTracker | None = None
        self._window = 0
        self._gate: asyncio.Future[None] | None = None
        self._flow_active = True
        self._returned: list[Returned] = []
        self.on_confirm: Callable[[Confirm], None] | None = None
        self.on_return: Callable[[Returned], None] | None = None
        self.error: BaseException | None = None
        self._closed = False

    # ---- lifecycle ------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return not self._closed and self._conn.is_open

    async def _open(self) -> None:
        await self._wait_reply(commands.Channel.OpenOk)

    async def close(self) -> None:
        if self._closed:
            return
        if self._conn.is_open and self.number in self._core.channels:
            self._write_pending_ack()  # acks must reach the broker before the close does
            self._core.close_channel(self.number)
            self._conn.flush()
            fut = self._expect(commands.Channel.CloseOk)
            with contextlib.suppress(TimeoutError, ProtocolError):
                await asyncio.wait_for(fut, 5)
        self._mark_closed(ChannelClosed(f"channel {self.number} closed"))
        self._conn.forget(self.number)

    # ---- topology -------------------------------------------------------------------------

    async def exchange_declare(
        self,
        exchange: str,
        exchange_type: str = "direct",
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        await self._rpc(
            frames.method(
                commands.Exchange.Declare,
                exchange=exchange,
                exchange_type=exchange_type,
                passive=passive,
                durable=durable,
                auto_delete=auto_delete,
                internal=internal,
                arguments=arguments,
            ),
            commands.Exchange.DeclareOk,
        )

    async def exchange_delete(self, exchange: str, *, if_unused: bool = False) -> None:
        await self._rpc(
            frames.method(commands.Exchange.Delete, exchange=exchange, if_unused=if_unused), commands.Exchange.DeleteOk
        )

    async def queue_declare(
        self,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> QueueInfo:
        """Declare (or, passive, look up) a queue; `arguments` carries x-queue-type and friends."""
        ok = await self._rpc(
            frames.method(
                commands.Queue.Declare,
                queue=queue,
                passive=passive,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=arguments,
            ),
            commands.Queue.DeclareOk,
        )
        return QueueInfo(ok.queue, ok.message_count, ok.consumer_count)

    async def queue_bind(
        self, queue: str, exchange: str, routing_key: str = "", arguments: dict[str, Any] | None = None
    ) -> None:
        await self._rpc(
            frames.method(
                commands.Queue.Bind, queue=queue, exchange=exchange, routing_key=routing_key, arguments=arguments
            ),
            commands.Queue.BindOk,
        )

    async def queue_unbind(
        self, queue: str, exchange: str, routing_key: str = "", arguments: dict[str, Any] | None = None
    ) -> None:
        await self._rpc(
            frames.method(
                commands.Queue.Unbind, queue=queue, exchange=exchange, routing_key=routing_key, arguments=arguments
            ),
            commands.Queue.UnbindOk,
        )

    async def queue_purge(self, queue: str) -> int:
        ok = await self._rpc(frames.method(commands.Queue.Purge, queue=queue), commands.Queue.PurgeOk)
        return ok.message_count

    async def queue_delete(self, queue: str, *, if_unused: bool = False, if_empty: bool = False) -> int:
        ok = await self._rpc(
            frames.method(commands.Queue.Delete, queue=queue, if_unused=if_unused, if_empty=if_empty),
            commands.Queue.DeleteOk,
        )
        return ok.message_count

    async def qos(self, prefetch_count: int, *, global_: bool = False) -> None:
        await self._rpc(commands.Basic.Qos(prefetch_count=prefetch_count, global_=global_), commands.Basic.QosOk)

    # ---- consuming ------------------------------------------------------------------------

    async def consume(
        self,
        queue: str,
        on_message: OnMessage,
        *,
        no_ack: bool = False,
        exclusive: bool = False,
        arguments: dict[str, Any] | None = None,
        consumer_tag: str = "",
        on_cancel: OnCancel | None = None,
    ) -> str:
        """Start a consumer; `on_message` is called for each delivery, in order, on the event loop.

        `on_cancel` is called with the reason when the consumer ends without our asking (the broker
        cancelled it, the channel or the connection closed). If `on_message` raises, the channel is
        closed so that the broker requeues every unacknowledged message.
        """
        tag = consumer_tag or f"warren.{self.number}.{next(_consumer_numbers)}"
        # registered before basic.consume goes out: deliveries can follow consume-ok in the same read
        self._consumers[tag] = (on_message, on_cancel)
        try:
            await self._rpc(
                frames.method(
                    commands.Basic.Consume,
                    queue=queue,
                    consumer_tag=tag,
                    no_ack=no_ack,
                    exclusive=exclusive,
                    arguments=arguments,
                ),
                commands.Basic.ConsumeOk,
            )
        except BaseException:
            self._consumers.pop(tag, None)
            raise
        return tag

    async def cancel(self, consumer_tag: str) -> None:
        if consumer_tag not in self._consumers:
            return
        await self._rpc(frames.method(commands.Basic.Cancel, consumer_tag=consumer_tag), commands.Basic.CancelOk)
        self._consumers.pop(consumer_tag, None)

    def ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        """Acknowledge; with multiple=True, calls made in the same loop turn go out as one frame."""
        self._check_open()
        if multiple:
            if delivery_tag > self._ack_upto:
                self._ack_upto = delivery_tag
                self._conn.ack_later(self)
            return
        self._write_pending_ack()
        self._core.ack(self.number, delivery_tag, multiple=False)
        self._conn.schedule_flush()

    def nack(self, delivery_tag: int, *, multiple: bool = False, requeue: bool = True) -> None:
        self._send(commands.Basic.Nack(delivery_tag=delivery_tag, multiple=multiple, requeue=requeue))

    def reject(self, delivery_tag: int, *, requeue: bool = True) -> None:
        self._send(commands.Basic.Reject(delivery_tag=delivery_tag, requeue=requeue))

    async def get(self, queue: str, *, no_ack: bool = False) -> Message | None:
        """basic.get: one message, or None when the queue is empty."""
        reply = await self._rpc(frames.method(commands.Basic.Get, queue=queue, no_ack=no_ack), GetOk, GetEmpty)
        return reply.message if isinstance(reply, GetOk) else None

    def _write_pending_ack(self) -> None:
        if self._ack_upto and not self._closed:
            self._core.ack(self.number, self._ack_upto, multiple=True)
        self._ack_upto = 0

    # ---- transactions ---------------------------------------------------------------------

    async def tx_select(self) -> None:
        """Put the channel in transaction mode: publishes and acks take effect together at `tx_commit`."""
        await self._rpc(commands.Tx.Select(), commands.Tx.SelectOk)

    async def tx_commit(self) -> None:
        """Apply every publish and ack since the last commit; the broker applies all of them or none."""
        await self._rpc(commands.Tx.Commit(), commands.Tx.CommitOk)

    # ---- publishing -----------------------------------------------------------------------

    async def confirm_select(self, window: int = 1000) -> None:
        """Enable publisher confirms; `publish` then waits while `window` messages are unconfirmed."""
        await self._rpc(commands.Confirm.Select(), commands.Confirm.SelectOk)
        self._tracker = ConfirmTracker()
        self._window = window

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        properties: Properties | dict[str, Any] | None = None,
        raw_properties: bytes | None = None,
        mandatory: bool = False,
    ) -> int:
        """Publish one message; returns its confirm sequence number (0 without confirms).

        Waits while the broker has blocked the connection, the channel's flow is off, the socket's
        write buffer is full, or the confirm window is full. `raw_properties` (a content header's
        property section, as `Message.raw_properties`) goes out byte for byte.
        """
        if not self._can_publish():
            await self._wait_publishable()
        raw = raw_properties if raw_properties is not None else encode_properties(properties)
        seq = self._core.publish(self.number, exchange, routing_key, body, raw, mandatory=mandatory)
        if self._tracker is not None:
            self._tracker.published = seq
        self._conn.schedule_flush()
        return seq

    def publish_message(
        self, message: Message, *, exchange: str | None = None, routing_key: str | None = None, mandatory: bool = False
    ) -> Any:
        """Republish a received message exactly (same properties bytes and body)."""
        return self.publish(
            message.exchange if exchange is None else exchange,
            message.routing_key if routing_key is None else routing_key,
            message.body,
            raw_properties=message.raw_properties,
            mandatory=mandatory,
        )

    @property
    def unconfirmed(self) -> int:
        return self._tracker.outstanding if self._tracker else 0

    @property
    def published_seq(self) -> int:
        """The confirm sequence number of the latest publish (0 without confirms)."""
        return self._tracker.published if self._tracker else 0

    @property
    def confirmed_through(self) -> int:
        """Every sequence number up to this one has been acked or nacked by the broker."""
        return self._tracker.low if self._tracker else 0

    async def wait_for_confirms(self) -> None:
        """Wait until every publish is confirmed; raises PublishNacked or MessageReturned if any was refused."""
        tracker = self._tracker
        if tracker is None:
            raise ProtocolError("wait_for_confirms() needs confirm_select() first")
        while tracker.outstanding:
            self._check_open()
            await self._wait_gate()
        self._raise_refusals()

    def _raise_refusals(self) -> None:
        if self._tracker is not None and self._tracker.nacked:
            nacked, self._tracker.nacked = self._tracker.nacked, []
            raise PublishNacked(nacked, self.number)
        if self._returned:
            first = self._returned[0]
            self._returned = []
            raise MessageReturned(first.reply_code, first.reply_text, first.message.exchange, first.message.routing_key)

    def _can_publish(self) -> bool:
        conn = self._conn
        return (
            not self._closed
            and conn.writable
            and not conn.blocked
            and self._flow_active
            and (self._tracker is None or self._tracker.outstanding < self._window)
        )

    async def _wait_publishable(self) -> None:
        while not self._can_publish():
            self._check_open()
            await self._wait_gate()

    async def _wait_gate(self) -> None:
        if self._gate is None or self._gate.done():
            self._gate = self._loop.create_future()
        await self._gate

    def _gate_changed(self) -> None:
        gate = self._gate
        if gate is not None and not gate.done():
            gate.set_result(None)

    # ---- events from the connection -------------------------------------------------------

    def _deliver(self, message: Message) -> None:
        entry = self._consumers.get(message.consumer_tag)
        if entry is None:
            return  # a delivery racing our own basic.cancel: the broker requeues it when unacked
        try:
            entry[0](message)
        except Exception as err:
            log.exception(
                "consumer %s failed on delivery %d; closing channel %d so the broker requeues",
                message.consumer_tag,
                message.delivery_tag,
                self.number,
            )
            self._core.close_channel(self.number, 200, "consumer callback failed")
            self._mark_closed(err)

    def _on_confirm(self, event: Confirm) -> None:
        tracker = self._tracker
        if tracker is not None:
            tracker.settle(event.delivery_tag, event.multiple, event.ack)
        if self.on_confirm is not None:
            self.on_confirm(event)
        self._gate_changed()

    def _on_reply(self, reply: MethodReceived | GetOk | GetEmpty) -> None:
        """An answer to our RPC: the method itself, or a basic.get's outcome."""
        answer = reply.method if isinstance(reply, MethodReceived) else reply
        waiter = self._rpc_waiter
        if waiter is not None and isinstance(answer, waiter[0]) and not waiter[1].done():
            self._rpc_waiter = None
            waiter[1].set_result(answer)
        else:
            log.debug("unexpected %s on channel %d", getattr(answer, "name", answer), self.number)

    def _on_returned(self, event: Returned) -> None:
        if self.on_return is not None:
            self.on_return(event)
        else:
            self._returned.append(event)

    def _on_consumer_cancelled(self, consumer_tag: str) -> None:
        entry = self._consumers.pop(consumer_tag, None)
        log.warning("broker cancelled consumer %s on channel %d", consumer_tag, self.number)
        if entry is not None and entry[1] is not None:
            entry[1](ConsumerCancelled(consumer_tag, self.number))

    def _on_flow(self, active: bool) -> None:
        self._flow_active = active
        self._gate_changed()

    def _on_closed_by_broker(self, event: ChannelClosedByPeer) -> None:
        err = ChannelClosedByBroker(event.reply_code, event.reply_text, event.class_id, event.method_id, self.number)
        log.warning("%s", err)
        self._mark_closed(err)

    def _on_connection_ended(self, error: BaseException) -> None:
        self._mark_closed(error)

    def _mark_closed(self, error: BaseException) -> None:
        if self._closed:
            return
        self._closed = True
        self.error = error
        waiter, self._rpc_waiter = self._rpc_waiter, None
        if waiter is not None and not waiter[1].done():
            waiter[1].set_exception(error)
        if self._gate is not None and not self._gate.done():
            self._gate.set_result(None)
        consumers, self._consumers = self._consumers, {}
        for _, on_cancel in consumers.values():
            if on_cancel is not None:
                on_cancel(error)

    # ---- plumbing -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise self.error or ChannelClosed(f"channel {self.number} is closed")

    def _send(self, method: base.Frame) -> None:
        self._check_open()
        self._write_pending_ack()
        self._core.send_method(self.number, method)
        self._conn.schedule_flush()

    def _expect(self, *reply_types: type) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._rpc_waiter = (reply_types, fut)
        return fut

    async def _wait_reply(self, *reply_types: type) -> Any:
        async with self._rpc_lock:
            return await self._expect(*reply_types)

    async def _rpc(self, method: base.Frame, *reply_types: type) -> Any:
        async with self._rpc_lock:
            self._check_open()
            fut = self._expect(*reply_types)
            try:
                self._send(method)
            except BaseException:
                self._rpc_waiter = None  # nothing went out (e.g. a name too long to encode): no reply comes
                raise
            return await fut
