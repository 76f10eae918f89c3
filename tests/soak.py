"""`make soak`: the zero-loss scenarios (tests/integration/zero_loss.py) run long, on each RabbitMQ
version, the archive on the local sink and on S3 (moto), and the table they make:

    python tests/soak.py [--rabbitmq 3.10 --rabbitmq 4.0] [--injections 20] [--seed N] [--fault NAME ...]

Bounded: some 13 minutes a version with the defaults. Exit code 1 if any row lost a message, or
replayed one twice that neither the archive had flagged nor a killed replay had in doubt.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridge.harness.nodes import INSTALLS, LocalNode  # noqa: E402
from tests.integration.zero_loss import SCENARIOS, Tally, run_scenario, start_cluster, table  # noqa: E402
from tests.sinks.emulators_s3 import CREDENTIALS, MotoServer, sink_uri  # noqa: E402

# Fewer broker kills and stalls than the rest: each costs a broker restart, or seconds of silence.
SLOW_FAULTS = {
    "broker kill -9 and restart": 5,
    "network stall past heartbeats": 5,
    "quorum queue leader kill -9": 5,
    "source memory alarm": 5,
    "local sink disk full": 5,
    "replay --follow kill -9": 10,
    "sink network cut or stalled (S3)": 10,
    "network delayed (50-500 ms)": 10,
}
NEEDS_ROOT = {"local sink disk full"}  # mounts a tmpfs


def soak(version: str, injections: int, seed: int, workdir: Path, faults: list[str] | None = None) -> list[Tally]:
    rows: list[Tally] = []
    (workdir / "moto").mkdir()
    moto = MotoServer(workdir / "moto").start()
    try:
        plans: list[tuple[str, str | None]] = [
            (name, None) for name in SCENARIOS if name not in NEEDS_ROOT or os.geteuid() == 0
        ]
        plans.insert(1, ("archiver kill -9", "s3"))
        plans = [plan for plan in plans if faults is None or plan[0] in faults]
        for n, (name, sink) in enumerate(plans):
            scenario = SCENARIOS[name]
            count = min(injections, SLOW_FAULTS.get(name, injections))
            run_dir = workdir / f"run{n}"
            run_dir.mkdir()  # a chrooted node's own files live in its tree, not here
            cluster = start_cluster(run_dir / "cluster", INSTALLS[version]) if scenario.cluster else []
            node = cluster[0] if cluster else LocalNode(run_dir / "source", install=INSTALLS[version]).start()
            target = LocalNode(run_dir / "target", install=INSTALLS[version]).start()
            try:
                uri = sink_uri(moto.endpoint, moto.create_bucket()) if sink == "s3" else None
                started = time.monotonic()
                row = run_scenario(
                    scenario,
                    node,
                    target,
                    run_dir,
                    injections=count,
                    seed=seed + n,
                    sink=uri,
                    cluster=cluster or None,
                    s3=moto,
                )
                if not scenario.sink_proxy:
                    row.fault += " (S3)" if sink == "s3" else " (local)"
                rows.append(row)
                print(table([row]), f"\n  {time.monotonic() - started:.0f}s, seed {seed + n}", flush=True)
            finally:
                for started_node in {id(x): x for x in [*cluster, node, target]}.values():
                    started_node.destroy()
    finally:
        moto.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rabbitmq", action="append", choices=sorted(INSTALLS), help="default: every version")
    parser.add_argument("--injections", type=int, default=20)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--fault", action="append", choices=sorted(SCENARIOS), help="only these (default: every one)")
    args = parser.parse_args()
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # the producer's reconnects are expected here
    os.environ.update(CREDENTIALS)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    failed = False
    for version in args.rabbitmq or sorted(INSTALLS):
        with tempfile.TemporaryDirectory(prefix="warren-soak-") as workdir:
            rows = soak(version, args.injections, args.seed, Path(workdir), args.fault)
        print("\n" + table(rows, title=f"RabbitMQ {version}, seed {args.seed}") + "\n", flush=True)
        failed |= not all(row.holds for row in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
