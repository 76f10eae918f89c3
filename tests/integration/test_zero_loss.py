"""Zero loss under faults, measured from the outside (zero_loss.py): what the broker confirmed to a
producer comes back from a replay of the archive into a fresh broker, once, whatever was done to the
archiver, the broker or the network meanwhile. Here a few injections each; `make soak` runs them long."""

from __future__ import annotations

import os
import time

import pytest

from tests.integration import test_sink_faults
from tests.integration.zero_loss import SCENARIOS, run_scenario, start_cluster, table

pytestmark = pytest.mark.slow

INJECTIONS = {
    "archiver kill -9": 3,
    "broker kill -9 and restart": 1,
    "network cut (FIN or RST)": 3,
    "network stall past heartbeats": 1,
    "network delayed (50-500 ms)": 2,
    "quorum queue leader kill -9": 1,
    "source memory alarm": 1,
    "local sink disk full": 1,
    "replay --follow kill -9": 2,
    "sink network cut or stalled (S3)": 2,
    "replay target blocked (memory alarm)": 2,
}


moto = test_sink_faults.moto  # a moto S3 server of the test's own, test credentials in the environment


@pytest.mark.parametrize("name", list(INJECTIONS))
def test_nothing_confirmed_is_lost_or_doubled_through(name, fresh_broker, rabbitmq, tmp_path, request):
    seed = int(os.environ.get("WARREN_TEST_SEED", time.time_ns() % 1_000_000))
    scenario = SCENARIOS[name]
    if scenario.small_disk and os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    cluster = start_cluster(tmp_path / "cluster", rabbitmq) if scenario.cluster else None
    try:
        node, target = cluster[0] if cluster else fresh_broker(), fresh_broker()
        s3 = request.getfixturevalue("moto") if scenario.sink_proxy else None
        row = run_scenario(
            scenario, node, target, tmp_path, injections=INJECTIONS[name], seed=seed, cluster=cluster, s3=s3
        )
    finally:
        for member in cluster or []:
            member.destroy()
    print("\n" + table([row], title=f"seed {seed}"))
    assert row.confirmed > 0, "nothing was confirmed: the scenario proves nothing"
    assert row.archived == row.confirmed, f"confirmed messages missing from the archive (seed {seed})"
    assert row.lost == 0, f"{row.lost} confirmed messages lost (seed {seed})"
    # A copy is dropped only when the archive proves it one. A broker restarted after kill -9 forgets
    # acknowledgements it had applied and delivers those messages again: the archiver cannot prove
    # them copies, so it keeps and flags them, and replay counts them as possible duplicates.
    # A replay killed -9 publishes again, when rerun, what its state file held in doubt (at least once).
    assert row.duplicated <= row.flagged + row.in_doubt, f"{row.duplicated} replayed twice: {row} (seed {seed})"
    if name not in ("broker kill -9 and restart", "quorum queue leader kill -9", "replay --follow kill -9"):
        assert row.duplicated == 0, f"{row.duplicated} messages replayed twice (seed {seed})"
    assert row.injections > 0, "no fault was injected: the scenario proves nothing"
