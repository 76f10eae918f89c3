"""AMQP throughput: warren's client against aio-pika, pika and a bare asyncio floor.

    .venv/bin/python bench/amqp_throughput.py [--broker AMQP_URI] [--messages N] [--size BYTES]

Without --broker a private RabbitMQ node is started in a temporary directory (free loopback ports)
and removed at the end; the system broker is never used unless you pass its URI.

Every measurement gets a fresh durable classic queue. Consumer runs find it already filled (by our
publisher with confirms, outside the timing) and drain it with prefetch 1000, acking with
multiple=True every 100 messages and at the last one. Publisher runs publish persistent messages with
confirms, at most 1000 unconfirmed (pika's BlockingConnection confirms one message at a time, so it
gets fewer messages). Each client runs in its own fresh process, so its peak RSS is its own and no run
inherits another's heap. Our client, aio-pika and the bare floor run on uvloop.

aio-pika and pika consume both ways each is idiomatically used (aio-pika: queue iterator and callback;
pika: BlockingConnection and SelectConnection); the targets are checked against the faster of each.
The bare floor does the handshake with pamqp, then only walks frame boundaries, counts basic.deliver
frames and sends a multiple-ack every 100: no message objects, the ceiling for a Python consumer.

Rounds (--repeat, default 3) go round-robin over every client and each client's best round counts, as
the broker shares the host. This prints figures; it asserts nothing about timing. --profile then runs
our consumer and publisher once more under cProfile and prints their hotspots.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    ACK_EVERY,
    CONFIRM_WINDOW,
    SETTLE_SECONDS,
    USAGE_HEADER,
    Broker,
    Result,
    Span,
    consume_aio_pika,
    consume_aio_pika_callback,
    consume_bare,
    consume_pika_blocking,
    consume_pika_select,
    fastest,
    log,
    private_node,
    report_worker,
    rotate,
    spawn_worker,
    usage_columns,
)

PREFETCH = 1000
PIKA_PUBLISH_MESSAGES = 20000
WORKER_TIMEOUT = 1800


# aio-pika and pika each run both ways they are idiomatically used; the faster one sets the target
CONSUMERS = ("ours", "aio-pika", "aio-pika-callback", "pika", "pika-select", "bare")
PUBLISHERS = ("ours", "aio-pika", "pika")


def make_body(size: int) -> bytes:
    return random.Random(0).randbytes(size)


# ---- our consumer (the baselines are in common.py; each runs in a worker process and returns its Span) ----


async def consume_ours(uri: str, queue: str, n: int, prefetch: int) -> Span:
    from protocol import connect

    conn = await connect(uri)
    ch = await conn.channel()
    await ch.qos(prefetch)
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    count = 0
    nbytes = 0

    def on_message(message: Any) -> None:
        nonlocal count, nbytes
        count += 1
        nbytes += len(message.body)
        if count % ACK_EVERY == 0 or count == n:
            ch.ack(message.delivery_tag, multiple=True)
            if count == n:
                done.set_result(None)

    span = Span().start()
    await ch.consume(queue, on_message)
    await done
    span.stop(count)
    await conn.close()
    return span


# ---- publishers ------------------------------------------------------------------------------------


async def publish_ours(uri: str, queue: str, n: int, body: bytes) -> Span:
    from protocol import Properties, connect

    conn = await connect(uri)
    ch = await conn.channel()
    await ch.confirm_select(window=CONFIRM_WINDOW)
    props = Properties(delivery_mode=2)
    span = Span().start()
    for _ in range(n):
        await ch.publish("", queue, body, properties=props)
    await ch.wait_for_confirms()
    span.stop(n)
    await conn.close()
    return span


async def publish_aio_pika(uri: str, queue: str, n: int, body: bytes) -> Span:
    import aio_pika

    conn = await aio_pika.connect(uri)
    ch = await conn.channel(publisher_confirms=True)
    exchange = ch.default_exchange
    persistent = aio_pika.DeliveryMode.PERSISTENT
    span = Span().start()
    for start in range(0, n, CONFIRM_WINDOW):
        batch = min(CONFIRM_WINDOW, n - start)
        await asyncio.gather(
            *(
                exchange.publish(aio_pika.Message(body, delivery_mode=persistent), routing_key=queue)
                for _ in range(batch)
            )
        )
    span.stop(n)
    await conn.close()
    return span


def publish_pika(uri: str, queue: str, n: int, body: bytes) -> Span:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(uri))
    ch = conn.channel()
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2)
    span = Span().start()
    for _ in range(n):
        ch.basic_publish("", queue, body, properties=props)  # returns once confirmed; raises if nacked
    span.stop(n)
    conn.close()
    return span


# ---- worker process ---------------------------------------------------------------------------------

ASYNC_WORKERS = {
    "consume:ours": consume_ours,
    "consume:aio-pika": consume_aio_pika,
    "consume:aio-pika-callback": consume_aio_pika_callback,
    "consume:bare": consume_bare,
}
SYNC_WORKERS = {
    "consume:pika": consume_pika_blocking,
    "consume:pika-select": consume_pika_select,
}


def run_worker(args: argparse.Namespace) -> None:
    from protocol.loop import run  # uvloop, for our client and, for fairness, aio-pika and bare too

    role, _, client = args.worker.partition(":")
    body = make_body(args.size)
    n = args.messages

    def call() -> Span:
        if role == "publish":
            if client == "pika":
                return publish_pika(args.broker, args.queue, n, body)
            fn = publish_ours if client == "ours" else publish_aio_pika
            return run(fn(args.broker, args.queue, n, body))
        if args.worker in SYNC_WORKERS:
            return SYNC_WORKERS[args.worker](args.broker, args.queue, n, PREFETCH)
        return run(ASYNC_WORKERS[args.worker](args.broker, args.queue, n, PREFETCH))

    report_worker(call, args.cprofile)


# ---- orchestration ------------------------------------------------------------------------------------


def spawn(args: argparse.Namespace, worker: str, queue: str, n: int, cprofile: str | None = None) -> dict[str, Any]:
    argv = ["--worker", worker, "--broker", args.broker, "--queue", queue, "--messages", str(n)]
    argv += ["--size", str(args.size)]
    if cprofile:
        argv += ["--cprofile", cprofile]
    return spawn_worker(str(Path(__file__).resolve()), argv, worker, WORKER_TIMEOUT)


def measure_consumer(args: argparse.Namespace, broker: Broker, client: str, body: bytes) -> Result:
    n = args.messages
    queue = broker.fresh(f"consume.{client}")
    try:
        fill_s = broker.fill(queue, n, [body])
        time.sleep(SETTLE_SECONDS)
        log(f"  filled {queue} with {n} messages in {fill_s:.1f}s; {client} consumes")
        r = spawn(args, f"consume:{client}", queue, n)
        left = broker.depth(queue)
        if left:
            log(f"  WARNING: {left} messages left in {queue} after the {client} consumer run")
    finally:
        broker.delete(queue)
    return Result.from_worker(client, PREFETCH, r, role="consumer")


def measure_publisher(args: argparse.Namespace, broker: Broker, client: str) -> Result:
    n = min(args.messages, args.pika_publish_messages) if client == "pika" else args.messages
    queue = broker.fresh(f"publish.{client}")
    try:
        log(f"  {client} publishes {n} messages with confirms")
        r = spawn(args, f"publish:{client}", queue, n)
        depth = broker.depth(queue)
        if depth != n:
            log(f"  WARNING: {queue} holds {depth} messages after the {client} publisher run, expected {n}")
    finally:
        broker.delete(queue)
    return Result.from_worker(client, CONFIRM_WINDOW, r, role="publisher")


def best(results: list[Result]) -> Result:
    return max(results, key=lambda r: r.rate)


def print_table(consumers: dict[str, Result], publishers: dict[str, Result], args: argparse.Namespace) -> None:
    header = (
        f"{'client':<18} {'role':<10} {'messages':>9} {'seconds':>8} {'msgs/s':>9} {'ours/this':>10} " + USAGE_HEADER
    )
    print(header)
    print("-" * len(header))
    for group in (consumers, publishers):
        ours = group.get("ours")
        for r in group.values():
            ratio = f"{ours.rate / r.rate:.2f}x" if ours else "-"
            print(
                f"{r.client:<18} {r.role:<10} {r.messages:>9} {r.seconds:>8.2f} {r.rate:>9.0f} {ratio:>10} "
                + usage_columns(r)
            )
    print(
        "ours/this: our msgs/s divided by this client's. client CPU: the client process's CPU time over the run's\n"
        "wall time (the broker runs on the same host and takes most of the rest). CPU us/msg: the client's CPU time\n"
        "per message, what the client costs whatever the broker's pace. peak RSS: the worker process's VmHWM."
    )
    if "pika" in publishers:
        print(
            f"pika publisher: BlockingConnection confirms one message at a time, so it ran "
            f"{publishers['pika'].messages} messages, not {args.messages}."
        )


def print_targets(consumers: dict[str, Result], publishers: dict[str, Result]) -> None:
    rate_lines: list[str] = []
    cpu_lines: list[str] = []

    def check(group: dict[str, Result], role: str, family: str, want: float, label: str) -> None:
        ours, them = group.get("ours"), fastest(list(group.values()), family)
        if ours is None or them is None:
            return
        got = ours.rate / them.rate
        rate_lines.append(
            f"  our {role} {label.format(them.client)}: {got:.2f}x "
            f"({ours.rate:.0f} vs {them.rate:.0f} msgs/s)  {'met' if got >= want else 'MISSED'}"
        )
        runs = [r for r in group.values() if r.client == family or r.client.startswith(family + "-")]
        leanest = min(runs, key=lambda r: r.cpu_us)
        got = leanest.cpu_us / ours.cpu_us
        cpu_lines.append(
            f"  our {role} {label.format(leanest.client)}: {got:.2f}x "
            f"({ours.cpu_us:.1f} vs {leanest.cpu_us:.1f} us/msg)  {'met' if got >= want else 'MISSED'}"
        )

    check(consumers, "consumer", "aio-pika", 3.0, ">= 3x {}")
    check(consumers, "consumer", "pika", 1.2, ">= 1.2x {}")
    check(consumers, "consumer", "bare", 0.9, ">= 90% of {}")
    check(publishers, "publisher", "aio-pika", 3.0, ">= 3x {}")
    if rate_lines:
        print("\ntargets, in msgs/s (against the fastest way of each other client):")
        print("\n".join(rate_lines))
        print(
            "the same targets in client CPU per message (what the ratio would be if the broker kept up with every "
            "client;\nagainst the leanest way of each other client):"
        )
        print("\n".join(cpu_lines))


def print_memory(consumers: dict[str, Result], args: argparse.Namespace) -> None:
    ours = consumers.get("ours")
    if ours is None:
        return
    backlog_mb = args.messages * args.size / 2**20
    print(
        f"\nour consumer memory: RSS {ours.rss_before_kb / 1024:.1f}MB before consuming, peak "
        f"{ours.peak_rss_kb / 1024:.1f}MB (+{(ours.peak_rss_kb - ours.rss_before_kb) / 1024:.1f}MB) "
        f"while draining a backlog of {args.messages} messages ({backlog_mb:.0f}MB of bodies), prefetch {PREFETCH}"
    )


def profile_ours(args: argparse.Namespace, broker: Broker, body: bytes) -> None:
    import pstats

    with tempfile.TemporaryDirectory() as tmp:
        for role in ("consume", "publish"):
            queue = broker.fresh(f"profile.{role}")
            path = os.path.join(tmp, f"{role}.prof")
            try:
                if role == "consume":
                    broker.fill(queue, args.messages, [body])
                spawn(args, f"{role}:ours", queue, args.messages, cprofile=path)
            finally:
                broker.delete(queue)
            print(
                f"\ncProfile of our {role.replace('consume', 'consumer').replace('publish', 'publisher')} "
                f"({args.messages} messages), top 25 by own time:"
            )
            stats = pstats.Stats(path, stream=sys.stdout)
            stats.sort_stats("tottime").print_stats(25)


def run_all(args: argparse.Namespace) -> None:
    broker = Broker(args.broker)
    body = make_body(args.size)
    import aio_pika
    import pika
    import uvloop

    only = set(args.only.split(",")) if args.only else None
    consumers = [c for c in CONSUMERS if only is None or f"consume:{c}" in only or c in only]
    publishers = [c for c in PUBLISHERS if only is None or f"publish:{c}" in only or c in only]
    print(
        f"warren amqp_throughput: {args.messages} persistent messages of {args.size} bytes, durable classic queues, "
        f"prefetch {PREFETCH}, multiple-ack every {ACK_EVERY}, confirm window {CONFIRM_WINDOW}, "
        f"best of {args.repeat}"
    )
    print(
        f"RabbitMQ {broker.version()}, Python {platform.python_version()}, uvloop {uvloop.__version__}, "
        f"aio-pika {aio_pika.__version__}, pika {pika.__version__}, {os.cpu_count()} CPUs (broker on the same host), "
        f"load average {os.getloadavg()[0]:.2f} at start\n"
    )
    sys.stdout.flush()
    consumer_runs: dict[str, list[Result]] = {}
    publisher_runs: dict[str, list[Result]] = {}
    for i in range(args.repeat):
        # round-robin, each round starting one client further on, so drift in the broker's state and the
        # position in a round hit every client alike
        log(f"round {i + 1} of {args.repeat}")
        for client in rotate(consumers, i):
            r = measure_consumer(args, broker, client, body)
            log(f"  -> {r.client} consumer: {r.rate:.0f} msgs/s, client CPU {100 * r.cpu / r.seconds:.0f}%")
            consumer_runs.setdefault(client, []).append(r)
        for client in rotate(publishers, i):
            r = measure_publisher(args, broker, client)
            log(f"  -> {r.client} publisher: {r.rate:.0f} msgs/s, client CPU {100 * r.cpu / r.seconds:.0f}%")
            publisher_runs.setdefault(client, []).append(r)
    best_consumers = {c: best(consumer_runs[c]) for c in consumers}  # table in the fixed order
    best_publishers = {c: best(publisher_runs[c]) for c in publishers}
    print_table(best_consumers, best_publishers, args)
    print_targets(best_consumers, best_publishers)
    print_memory(best_consumers, args)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if args.profile:
        profile_ours(args, broker, body)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--broker", help="AMQP URI of the broker to use (default: start a private node)")
    p.add_argument("--messages", type=int, default=200_000, help="messages per run (default 200000)")
    p.add_argument("--size", type=int, default=256, help="body size in bytes (default 256)")
    p.add_argument(
        "--pika-publish-messages",
        type=int,
        default=PIKA_PUBLISH_MESSAGES,
        help=f"messages for pika's one-at-a-time confirmed publisher (default {PIKA_PUBLISH_MESSAGES})",
    )
    p.add_argument("--repeat", type=int, default=3, help="rounds over every client; each client's best counts")
    p.add_argument("--only", help="comma-separated subset, e.g. ours,bare or consume:ours,publish:aio-pika")
    p.add_argument("--profile", action="store_true", help="then cProfile our consumer and publisher once each")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--queue", help=argparse.SUPPRESS)
    p.add_argument("--cprofile", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        run_worker(args)
        return
    if args.broker:
        run_all(args)
        return

    with tempfile.TemporaryDirectory(prefix="warren-bench-") as tmp, private_node(Path(tmp)) as node:
        args.broker = node.amqp_uri
        run_all(args)


if __name__ == "__main__":
    main()
