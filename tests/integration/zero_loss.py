"""The zero-loss checker, and the fault scenarios it judges (issue 14): a producer publishes with
confirms while a fault is injected again and again (the archiver killed -9, the broker killed, the
network between warren and the broker cut or stalled, the broker's memory alarm, the local sink's disk
full, a `replay --follow` killed -9); afterwards the archive is replayed into a fresh broker (through
its memory alarm, in one scenario), and what came back is compared with what the broker confirmed to
the producer, message by message: lost, duplicated, reordered. `make test` runs each scenario with a few injections
(test_zero_loss.py); `make soak` (tests/soak.py) runs them long, on both RabbitMQ versions, and prints
the table.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pika
import pika.exceptions

from bridge.archive import layout
from bridge.archive.reader import list_segments, read_index
from bridge.harness.nodes import LocalNode, RabbitMQInstall
from bridge.harness.proxy import FaultProxy
from protocol.loop import run
from sinks import open_sink
from sinks.deadlines import Deadlines
from tests.integration.archiving import (
    ArchiverProcess,
    Archivers,
    Witness,
    assert_verifies,
    queue_source,
    read_archive,
)
from tests.integration.replaying import Replayers, ReplayProcess, SummaryLine, read_state, replay, summary
from tests.polling import wait_until
from tests.sinks.emulators_s3 import MotoServer, sink_uri

QUEUE = "zero-loss.orders"
QUEUE_STATE_KEY = layout.source_prefix("", queue_source(QUEUE))  # the replay state file's key of QUEUE
HEARTBEAT = 2  # seconds, for the archiver's broker connection where the network stalls
SMALL_DISK = "64m"  # the tmpfs a disk-full scenario's local sink lives on
# A fraction of the host's memory so small that the node's own use is past it: the alarm goes off at once.
ALARM_WATERMARK, NORMAL_WATERMARK = "0.000001", "0.4"


@dataclass
class Tally:
    """One row of the table."""

    fault: str
    injections: int = 0
    published: int = 0
    confirmed: int = 0
    archived: int = 0  # confirmed messages the archive holds (copies marked as such not counted twice)
    replayed: int = 0  # messages the fresh broker received from the replay
    lost: int = 0  # confirmed, and not replayed
    duplicated: int = 0  # replayed more than once
    flagged: int = 0  # archived records marked possible copies: kept, and counted by replay as such
    # In doubt when a replay was killed (marked published, not yet confirmed by the target, per its state
    # file): the rerun publishes them again, so the target may hold them twice (at least once, by design).
    in_doubt: int = 0
    reordered: int = 0  # replayed before a message confirmed earlier in the same batch, once each

    HEADER = (
        "fault",
        "injections",
        "published",
        "confirmed",
        "archived",
        "replayed",
        "lost",
        "duplicated",
        "flagged",
        "in_doubt",
    )

    @property
    def holds(self) -> bool:
        """Nothing confirmed lost, and nothing doubled that neither the archive flagged nor a killed
        replay had in doubt."""
        return self.lost == 0 and self.archived == self.confirmed and self.duplicated <= self.flagged + self.in_doubt

    def row(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.HEADER)


def tally(
    fault: str,
    injections: int,
    producer: Producer,
    archived_ids: list[str],
    flagged: int,
    replayed_ids: list[str],
    in_doubt: int = 0,
) -> Tally:
    confirmed = set(producer.confirmed)
    seen: dict[str, int] = {}
    for message_id in replayed_ids:
        seen[message_id] = seen.get(message_id, 0) + 1
    order = {m: i for i, m in enumerate(producer.confirmed)}
    positions = [order[m] for m in replayed_ids if m in order]
    return Tally(
        fault,
        injections,
        published=producer.published,
        confirmed=len(confirmed),
        archived=len(confirmed & set(archived_ids)),
        replayed=len(replayed_ids),
        lost=len(confirmed - set(seen)),
        duplicated=sum(n - 1 for n in seen.values()),
        flagged=flagged,
        in_doubt=in_doubt,
        reordered=sum(1 for a, b in itertools.pairwise(positions) if b < a),
    )


class Producer(threading.Thread):
    """Publishes uniquely identified persistent messages with confirms, in small batches, until told
    to stop; records which the broker confirmed. A batch the broker never confirmed (it died, the
    connection dropped) is not counted: the producer would retry it, and a retry is not warren's doing."""

    def __init__(self, uri: str, *, batch: int = 50, pause: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.uri, self.batch, self.pause = uri, batch, pause
        self.published = 0
        self.confirmed: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            try:
                connection = pika.BlockingConnection(pika.URLParameters(self.uri))
            except pika.exceptions.AMQPError:
                time.sleep(0.2)
                continue
            try:
                channel = connection.channel()
                channel.confirm_delivery()
                while not self.stopping.is_set():
                    ids = [f"zl-{n + i:08d}" for i in range(self.batch)]
                    n += self.batch
                    for message_id in ids:
                        properties = pika.BasicProperties(message_id=message_id, delivery_mode=2)
                        channel.basic_publish("", QUEUE, message_id.encode(), properties, mandatory=True)
                        self.published += 1
                    self.confirmed += ids  # BlockingChannel publishes wait for each confirm: all of them are
                    time.sleep(self.pause)
            except (pika.exceptions.AMQPError, OSError):
                time.sleep(0.2)
            finally:
                if connection.is_open:
                    with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                        connection.close()

    def stop(self) -> None:
        self.stopping.set()
        if self.ident is not None:  # started
            self.join(60)


@dataclass
class Scenario:
    """A fault and how to inject it once while archiving; `via_proxy` puts a FaultProxy between the
    archiver and the broker."""

    name: str
    inject: Callable[[Run], None] | None
    via_proxy: bool = False
    cluster: bool = False  # the source is a quorum queue on a cluster of three nodes (run.cluster)
    small_disk: bool = False  # the local sink on a tmpfs of its own (SMALL_DISK; needs root)
    sink_proxy: bool = False  # the archive on S3 (moto) behind a FaultProxy (run.sink_proxy)
    follow: bool = False  # `warren replay --follow --state` into the target while archiving (run.follower)
    # Injected during the final replay instead (run.injections times), given the target and the replay.
    during_replay: Callable[[Run, LocalNode, ReplayProcess], None] | None = None


@dataclass
class Run:
    node: LocalNode
    archivers: Archivers
    sink: str
    rng: random.Random
    args: list[str]
    proxy: FaultProxy | None = None
    cluster: list[LocalNode] = field(default_factory=list)
    sink_proxy: FaultProxy | None = None
    archiver: ArchiverProcess | None = None
    follow_args: list[str] = field(default_factory=list)
    replayers: Replayers | None = None
    follower: ReplayProcess | None = None
    state: Path | None = None
    in_doubt: int = 0
    injected: int = 0  # faults injected during the replay (as many as it lasted for, at most `injections`)

    def start_archiver(self) -> None:
        self.archiver = self.archivers.start(*self.args)
        self.archiver.wait_for_log("msg=archiving", timeout=60)

    def start_follower(self) -> None:
        assert self.replayers is not None
        self.follower = self.replayers.start(*self.follow_args)


def kill_archiver(run: Run) -> None:
    time.sleep(run.rng.uniform(0.2, 1.5))
    assert run.archiver is not None and run.archiver.running(), "the archiver exited by itself"
    run.archiver.kill()
    run.start_archiver()


def kill_broker(run: Run) -> None:
    time.sleep(run.rng.uniform(0.5, 2.0))
    run.node.kill()
    time.sleep(run.rng.uniform(0, 1))
    run.node.start()


def cut_network(run: Run) -> None:
    time.sleep(run.rng.uniform(0.2, 1.5))
    assert run.proxy is not None
    run.proxy.cut(reset=run.rng.random() < 0.5)


def stall_network(run: Run) -> None:
    """Longer than two heartbeats: the archiver must notice, drop the connection and come back."""
    time.sleep(run.rng.uniform(0.2, 1.0))
    assert run.proxy is not None
    run.proxy.pause()
    time.sleep(HEARTBEAT * 3)
    run.proxy.resume()


def cut_sink_network(run: Run) -> None:
    """Between the archiver and S3: the connections cut (FIN or RST), or, one time in five, every
    request stalled past the sink's deadline; uploads fail, are retried, and nothing is acknowledged
    until a segment is durable."""
    time.sleep(run.rng.uniform(0.2, 1.5))
    assert run.sink_proxy is not None
    if run.rng.random() < 0.2:
        run.sink_proxy.pause()
        time.sleep(Deadlines().stall + 3)
        run.sink_proxy.resume()
    else:
        run.sink_proxy.cut(reset=run.rng.random() < 0.5)


def memory_alarm(node: LocalNode, on: bool) -> None:
    """Set or clear the node's memory alarm, and wait until the node says it is (or is not) in effect."""
    node.ctl("set_vm_memory_high_watermark", ALARM_WATERMARK if on else NORMAL_WATERMARK)
    wait_until(
        lambda: ("memory" in node.ctl("eval", "rabbit_alarm:get_alarms().")) == on,
        timeout=30,
        what=f"the memory alarm of {node.name} {'raised' if on else 'cleared'}",
        every=0.2,
    )


def source_memory_alarm(run: Run) -> None:
    """The source broker's memory alarm: it blocks the producer (connection.blocked) for a few seconds,
    while the archiver goes on consuming and acknowledging (which is how an alarm clears)."""
    time.sleep(run.rng.uniform(0.2, 1.0))
    memory_alarm(run.node, True)
    time.sleep(run.rng.uniform(1.0, 3.0))
    memory_alarm(run.node, False)


def fill_disk(run: Run) -> None:
    """The local sink's file system full for a few seconds (a ballast file takes what is left), then
    room again: nothing is acknowledged meanwhile, and archiving resumes by itself."""
    time.sleep(run.rng.uniform(0.2, 1.0))
    ballast = Path(run.sink).parent / "ballast"
    with ballast.open("wb", buffering=0) as f:  # unbuffered: nothing left over to fail at close
        chunk = b"\0" * (1024 * 1024)  # tmpfs stores zeros as they are
        with contextlib.suppress(OSError):
            while True:
                f.write(chunk)
    time.sleep(run.rng.uniform(1.0, 3.0))
    ballast.unlink()


def kill_follower(run: Run) -> None:
    """kill -9 a `replay --follow --state` once its state shows progress, and start it again; what its
    state file held in doubt then is counted (in_doubt)."""
    assert run.follower is not None and run.state is not None
    time.sleep(run.rng.uniform(0.2, 1.5))
    state = run.state
    wait_until(
        lambda: read_state(state).get(QUEUE_STATE_KEY, {}).get("confirmed_seq", 0) > 0,
        timeout=60,
        what="the follower's state file showing progress",
        every=0.05,
    )
    assert run.follower.running(), f"the follower exited by itself:\n{run.follower.describe()}"
    run.follower.kill()
    at_kill = read_state(state).get(QUEUE_STATE_KEY, {})
    run.in_doubt += at_kill.get("published_seq", 0) - at_kill.get("confirmed_seq", 0)
    run.start_follower()


def block_target(run: Run, target: LocalNode, replaying: ReplayProcess) -> None:
    """The target's memory alarm (connection.blocked) for a moment while the replay publishes: it must
    wait, then carry on, neither giving up nor losing what it had published."""
    memory_alarm(target, True)
    time.sleep(run.rng.uniform(0.5, 2.0))
    assert replaying.running() or replaying.proc.returncode == 0, replaying.describe()
    memory_alarm(target, False)
    time.sleep(run.rng.uniform(0.05, 0.3))


def delay_network(run: Run) -> None:
    """Every byte between archiver and broker held 50 to 500 ms for a few seconds, both ways: a slow
    link; acknowledgements and deliveries arrive late, in order."""
    time.sleep(run.rng.uniform(0.2, 1.0))
    assert run.proxy is not None
    run.proxy.delay = run.rng.uniform(0.05, 0.5)
    time.sleep(run.rng.uniform(1.0, 3.0))
    run.proxy.delay = 0.0


def kill_quorum_leader(run: Run) -> None:
    """kill -9 the node that leads the quorum queue (the archiver's own node, or another), then restart it."""
    time.sleep(run.rng.uniform(0.5, 2.0))
    live = next(n for n in run.cluster if n.is_running())
    out = live.ctl("list_queues", "-q", "--no-table-headers", "name", "leader")
    leader = next(line.rsplit("\t", 1)[1] for line in out.splitlines() if line.startswith(QUEUE + "\t"))
    node = next(n for n in run.cluster if n.name == leader)
    node.kill()
    time.sleep(run.rng.uniform(0.5, 2.0))
    node.start()


SCENARIOS = {
    "archiver kill -9": Scenario("archiver kill -9", kill_archiver),
    "broker kill -9 and restart": Scenario("broker kill -9 and restart", kill_broker),
    "network cut (FIN or RST)": Scenario("network cut (FIN or RST)", cut_network, via_proxy=True),
    "network stall past heartbeats": Scenario("network stall past heartbeats", stall_network, via_proxy=True),
    "network delayed (50-500 ms)": Scenario("network delayed (50-500 ms)", delay_network, via_proxy=True),
    "quorum queue leader kill -9": Scenario("quorum queue leader kill -9", kill_quorum_leader, cluster=True),
    "source memory alarm": Scenario("source memory alarm", source_memory_alarm),
    "local sink disk full": Scenario("local sink disk full", fill_disk, small_disk=True),
    "replay --follow kill -9": Scenario("replay --follow kill -9", kill_follower, follow=True),
    "sink network cut or stalled (S3)": Scenario("sink network cut or stalled (S3)", cut_sink_network, sink_proxy=True),
    "replay target blocked (memory alarm)": Scenario(
        "replay target blocked (memory alarm)", None, during_replay=block_target
    ),
}


@contextlib.contextmanager
def small_disk(root: Path) -> Iterator[Path]:
    """A tmpfs of SMALL_DISK at `root`, unmounted afterwards."""
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs", str(root)], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", "--lazy", str(root)], check=True)


def start_cluster(root: Path, install: RabbitMQInstall) -> list[LocalNode]:
    """Three nodes clustered, for a quorum queue with a leader and two followers."""
    cookie = secrets.token_hex(16)
    nodes = [LocalNode(root / f"cluster{i}", install=install, cookie=cookie) for i in range(3)]
    for node in nodes:
        node.start()
    for node in nodes[1:]:
        node.join(nodes[0])
    return nodes


def run_scenario(
    scenario: Scenario,
    node: LocalNode,
    target: LocalNode,
    workdir: Path,
    *,
    injections: int,
    seed: int,
    sink: str | None = None,
    cluster: list[LocalNode] | None = None,
    s3: MotoServer | None = None,
) -> Tally:
    """Archive through `injections` faults while producing, replay into `target`, and count. The
    archive goes to `sink` (any sink URI; a local directory in `workdir` by default, on a tmpfs of its
    own for a disk-full scenario, in a bucket of `s3` behind a proxy for a sink-network one). With
    `cluster`, `node` is one of its nodes and the source a quorum queue."""
    with contextlib.ExitStack() as stack:
        sink_proxy = direct = None
        if scenario.small_disk:
            sink = str(stack.enter_context(small_disk(workdir / "disk")) / "archive")
        if scenario.sink_proxy:
            assert s3 is not None, "a sink-network scenario needs an S3 emulator"
            bucket = s3.create_bucket()
            sink_proxy = stack.enter_context(FaultProxy(("127.0.0.1", s3.port)))
            sink = sink_uri(sink_proxy.endpoint, bucket)
            direct = sink_uri(s3.endpoint, bucket)  # for reading the archive back, after the faults
        return _run_scenario(scenario, node, target, workdir, injections, seed, sink, cluster, sink_proxy, direct)


def _run_scenario(
    scenario: Scenario,
    node: LocalNode,
    target: LocalNode,
    workdir: Path,
    injections: int,
    seed: int,
    sink: str | None,
    cluster: list[LocalNode] | None,
    sink_proxy: FaultProxy | None = None,
    read_back: str | None = None,
) -> Tally:
    rng = random.Random(seed)
    sink = sink or str(workdir / "archive")
    read_back = read_back or sink
    with Witness(node.amqp_uri) as witness:
        witness.declare_queue(QUEUE, arguments={"x-queue-type": "quorum"} if cluster else None)
    with Witness(target.amqp_uri) as witness:
        witness.declare_queue(QUEUE)
    proxy = FaultProxy(("127.0.0.1", node.ports.amqp)) if scenario.via_proxy else None
    broker = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F?heartbeat={HEARTBEAT}" if proxy else node.amqp_uri
    args = ["--broker", broker, "--management-uri", node.management_uri, "--stream-uri", node.stream_uri]
    args += ["--queue", QUEUE, "--sink", sink, "--prefetch-count", "500"]
    replay_args = ["--archive", read_back, "--target", target.amqp_uri, "--source", QUEUE]
    producer = Producer(node.amqp_uri)
    try:
        with Archivers(workdir) as archivers, Replayers(workdir) as replayers:
            run = Run(node, archivers, sink, rng, args, proxy, cluster or [], sink_proxy, replayers=replayers)
            run.start_archiver()
            if scenario.follow:
                run.state = workdir / "follow.state"
                run.follow_args = [*replay_args, "--follow", "--state", str(run.state)]
                run.start_follower()
            producer.start()
            for _ in range(injections if scenario.inject else 0):
                assert scenario.inject is not None
                scenario.inject(run)
            if scenario.inject is None:
                time.sleep(injections)  # something to archive, and to replay
            producer.stop()
            # Drained, and the archive holds at least as many records as were confirmed: a queue's depth
            # alone can read 0 while a restarted cluster member catches up. What never comes is counted
            # below, as lost.
            with Witness(node.amqp_uri) as witness, contextlib.suppress(AssertionError):
                wait_until(
                    lambda: witness.depth(QUEUE) == 0 and records_in(read_back) >= len(producer.confirmed),
                    timeout=180,
                    what=f"{QUEUE} drained into the archive (seed {seed})",
                    every=0.5,
                )
            assert run.archiver is not None
            log = run.archiver.terminate()
            assert "Traceback" not in log
            if run.follower is not None:
                follower, state, last = run.follower, run.state, records_in(read_back)
                assert state is not None
                with contextlib.suppress(AssertionError):  # what never comes is counted below, as lost
                    wait_until(
                        lambda: read_state(state).get(QUEUE_STATE_KEY, {}).get("confirmed_seq", 0) >= last,
                        timeout=180,
                        what=f"the follower confirming the archive's last record (seed {seed})",
                        every=0.2,
                    )
                assert follower.terminate() == 0, follower.describe()
                assert "Traceback" not in follower.stderr()
    finally:
        producer.stop()
        if proxy is not None:
            proxy.close()
    assert_verifies(read_back)  # type: ignore[arg-type]  # any sink URI
    records = read_archive(read_back, queue_source(QUEUE))  # type: ignore[arg-type]
    archived = [r.properties.message_id or "" for r in records if r.copy_of is None]
    flagged = sum(r.possible_copy_of is not None for r in records)
    if not scenario.follow:
        done = _replay(scenario, run, target, replay_args, workdir, injections)
        assert done.failed is False, done.text
    with Witness(target.amqp_uri) as witness:
        replayed = [p.message_id or "" for p, _ in witness.fetch_all(QUEUE)]
    injected = run.injected if scenario.during_replay else injections
    return tally(scenario.name, injected, producer, archived, flagged, replayed, run.in_doubt)


def _replay(
    scenario: Scenario, run: Run, target: LocalNode, args: list[str], workdir: Path, injections: int
) -> SummaryLine:
    """The archive replayed into the target (through `during_replay` faults); its summary line."""
    if scenario.during_replay is None:
        result = replay(*args, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        return summary(result.stdout)[QUEUE]
    with Replayers(workdir / "replays") as replayers:
        (workdir / "replays").mkdir(exist_ok=True)
        memory_alarm(target, True)  # blocked from its first publish
        replaying = replayers.start(*args)
        for _ in range(injections):
            if not replaying.running():
                break
            scenario.during_replay(run, target, replaying)
            run.injected += 1
        memory_alarm(target, False)
        code = replaying.wait(600)
        assert code == 0, replaying.describe()
        assert "Traceback" not in replaying.stderr()
        assert "broker blocked publishing" in replaying.stderr(), "the replay was never blocked: this proves nothing"
        return summary(replaying.stdout())[QUEUE]


def records_in(sink: str) -> int:
    """Records the archive holds of the queue, from the segments' footers (any sink URI)."""

    async def count() -> int:
        async with open_sink(sink) as opened:
            segments = await list_segments(opened, source=queue_source(QUEUE))
            return sum([(await read_index(opened, seg)).records for seg in segments])

    return run(count())


def table(rows: list[Tally], *, title: str = "") -> str:
    header = Tally.HEADER
    cells = [tuple(str(c) for c in row.row()) for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = [title] if title else []
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(lines)
