"""The test harness: private RabbitMQ nodes from Debian's rabbitmq-server, one per need.

`broker` is one node shared by the whole session, for tests that only declare, publish and consume
(each uses its own queue names). `fresh_broker()` starts a node that belongs to one test alone, which
it may kill -9, pause, restart or fill up; it is removed when the test ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.localnode import LocalNode, require_rabbitmq


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNode]:
    require_rabbitmq()
    node = LocalNode(tmp_path_factory.mktemp("broker"))
    node.start()
    try:
        yield node
    finally:
        node.destroy()


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[Callable[..., LocalNode]]:
    require_rabbitmq()
    started: list[LocalNode] = []

    def start(extra_conf: str = "") -> LocalNode:
        node = LocalNode(tmp_path / f"node{len(started)}", extra_conf=extra_conf)
        started.append(node)
        return node.start()

    try:
        yield start
    finally:
        for node in started:
            node.destroy()
