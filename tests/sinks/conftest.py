"""The `sink` fixture: every backend the contract suite runs against.

A backend joins by adding a `<name>_sink` fixture here and its name to `BACKENDS`; a cloud backend's
fixture starts (or finds) its storage emulator and skips with a reason when there is none.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.loop import run
from sinks import LocalSink, Sink

BACKENDS = ["local"]


@pytest.fixture
def local_sink(tmp_path: Path) -> Iterator[Sink]:
    yield LocalSink(tmp_path / "archive")


@pytest.fixture(params=BACKENDS)
def sink(request: pytest.FixtureRequest) -> Iterator[Sink]:
    """A checked, empty sink of each backend, closed after the test."""
    backend: Sink = request.getfixturevalue(f"{request.param}_sink")
    run(backend.check())
    try:
        yield backend
    finally:
        run(backend.close())
