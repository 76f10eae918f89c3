"""Fixtures the broker tests share (the brokers themselves: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.archiving import Archivers


@pytest.fixture
def archivers(tmp_path: Path) -> Iterator[Archivers]:
    """`warren archive` subprocesses started by the test; any still running at its end are stopped."""
    with Archivers(tmp_path) as started:
        yield started
