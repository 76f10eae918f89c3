"""The test harness: private RabbitMQ nodes from Debian's rabbitmq-server, one per need, per version.

Every test that asks for a broker runs once per RabbitMQ version chosen with `--rabbitmq`
(default: 3.10 and 4.0, as CI runs it); its id says which, e.g. `test_x[4.0]`. A test that applies to
some versions only says so with `@pytest.mark.rabbitmq("4.0")`.

`broker` is one node per version shared by the whole session, for tests that only declare, publish and
consume (each uses its own queue names). `fresh_broker()` starts a node that belongs to one test alone,
which it may kill -9, pause, restart or fill up; it is removed when the test ends. `rabbitmq` is the
version's install, for tests that start nodes of their own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.harness.nodes import INSTALLS, LocalNode, RabbitMQInstall, require

BROKER_FIXTURES = {"broker", "fresh_broker", "rabbitmq"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rabbitmq",
        default=os.environ.get("WARREN_RABBITMQ", ",".join(INSTALLS)),
        help=f"comma-separated RabbitMQ versions to run broker tests on (default: {','.join(INSTALLS)})",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "rabbitmq(*versions): the RabbitMQ versions a broker test applies to")


def chosen_versions(config: pytest.Config) -> list[str]:
    versions = [v.strip() for v in config.getoption("--rabbitmq").split(",") if v.strip()]
    unknown = [v for v in versions if v not in INSTALLS]
    if unknown:
        raise pytest.UsageError(f"--rabbitmq: unknown version(s) {', '.join(unknown)}; known: {', '.join(INSTALLS)}")
    return versions


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not BROKER_FIXTURES & set(metafunc.fixturenames):
        return
    versions = chosen_versions(metafunc.config)
    marker = metafunc.definition.get_closest_marker("rabbitmq")
    if marker is not None:
        versions = [v for v in versions if v in marker.args]
    # An empty list makes pytest report the test as skipped for these versions, which is what it is.
    metafunc.parametrize("rabbitmq", versions, indirect=True, scope="session")


OWN_GROUPS = {"test_zero_loss.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # With pytest-xdist's --dist loadgroup, every test of one RabbitMQ version runs in the same worker:
    # each version's shared node is started once, and the versions run side by side. The zero-loss
    # scenarios (a third of a version's time, on nodes of their own) go to a group of their own, so that
    # the workers finish together.
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "rabbitmq" in callspec.params:
            version = callspec.params["rabbitmq"]
            own = item.path.name in OWN_GROUPS
            item.add_marker(pytest.mark.xdist_group(f"{item.path.stem}-{version}" if own else f"rabbitmq-{version}"))


@pytest.fixture(scope="session")
def rabbitmq(request: pytest.FixtureRequest) -> RabbitMQInstall:
    install = INSTALLS[request.param]
    require(install)
    return install


@pytest.fixture(scope="session")
def broker(rabbitmq: RabbitMQInstall, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNode]:
    node = LocalNode(tmp_path_factory.mktemp("broker"), install=rabbitmq)
    node.start()
    try:
        yield node
    finally:
        node.destroy()


@pytest.fixture
def fresh_broker(rabbitmq: RabbitMQInstall, tmp_path: Path) -> Iterator[Callable[..., LocalNode]]:
    started: list[LocalNode] = []

    def start(extra_conf: str = "", *, tls: bool = False) -> LocalNode:
        node = LocalNode(tmp_path / f"node{len(started)}", extra_conf=extra_conf, install=rabbitmq, tls=tls)
        started.append(node)
        return node.start()

    try:
        yield start
    finally:
        for node in started:
            node.destroy()
