"""The `sink` fixture: every backend the contract suite runs against.

A backend joins by adding a `<name>_sink` fixture here and its name to `BACKENDS`; a cloud backend's
fixture starts its storage emulator on loopback (installed by `make setup`) and lists, in
`sink.emulator_gaps`, what the emulator does not do that the real service does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.loop import run
from sinks import LocalSink, Sink
from tests.sinks.emulators_azure import azure_emulator, azure_sink  # noqa: F401 (fixtures, used by name)
from tests.sinks.emulators_gcs import gcs_emulator, gcs_sink  # noqa: F401
from tests.sinks.emulators_s3 import s3_emulator, s3_sink  # noqa: F401

BACKENDS = ["local", "s3", "gcs", "azure"]


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
