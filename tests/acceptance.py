"""Run the shared acceptance scenarios (../shared/acceptance) against a RabbitMQ version of the harness.

    python tests/acceptance.py --rabbitmq 4.0 [SCENARIO.py] [scenario options...]

The scenarios start their nodes with `rmq.Node`, which runs the host's rabbitmq-server. For a chrooted
install (4.0) this points it at small wrapper scripts that run the tree's own tools with chroot, in a
mount namespace of their own, and puts the scenario's temporary directories inside the tree, where the
node can see them.
"""

from __future__ import annotations

import argparse
import os
import runpy
import shlex
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "acceptance"
sys.path.insert(0, str(REPO))

from bridge.harness.nodes import INSTALLS, RabbitMQInstall  # noqa: E402

TOOLS = ("rabbitmq-server", "rabbitmqctl", "rabbitmq-plugins", "rabbitmq-diagnostics")


def wrapper_bin(install: RabbitMQInstall) -> Path:
    """A directory of scripts that run the install's own tools (inside its tree, for a chrooted one)."""
    if install.chroot is None:
        return install.bin_dir
    directory = install.chroot.parent / f"rabbitmq-{install.version}-bin"
    directory.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        script = directory / tool
        script.write_text(f'#!/bin/sh\nexec {shlex.join(install.command(tool))} "$@"\n')
        script.chmod(0o755)
    return directory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rabbitmq", choices=list(INSTALLS), default="3.10")
    parser.add_argument("scenario", nargs="?", default="e2e_pitr.py")
    args, rest = parser.parse_known_args()
    install = INSTALLS[args.rabbitmq]
    install.prepare()
    sys.path.insert(0, str(SHARED))
    import rmq  # the scenarios' own node helper

    rmq.RMQ_BIN = wrapper_bin(install)
    nodes_dir = install.nodes_dir()
    if nodes_dir is not None:
        nodes_dir.mkdir(parents=True, exist_ok=True)
        tempfile.tempdir = str(nodes_dir)
    os.environ.setdefault("PATH", "/usr/bin:/bin")
    sys.argv = [str(SHARED / args.scenario), "--warren", f"{sys.executable} -m bridge.cli", *rest]
    print(f"acceptance {args.scenario} on RabbitMQ {install.version}", flush=True)
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as done:
        return int(done.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
