"""The protocol's two layers as the tree shows them: the sans-IO core (`protocol.core`) imports no I/O and
nothing of the asyncio transport (`protocol.aio`), and the transport's channel knows its connection only
through the small interface it declares, so the two modules do not import each other."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.core.events import Event
from protocol.core.message import Message
from tests.unit.test_import_rules import imports

PROTOCOL = Path(__file__).resolve().parents[2] / "protocol"
IO = (
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "uvloop",
    "aiohttp",
    "rstream",
    "protocol.aio",
    "protocol.loop",
    "protocol.stream",
    "protocol.management",
)


@pytest.mark.parametrize("path", sorted((PROTOCOL / "core").glob("*.py")), ids=lambda p: p.name)
def test_the_sans_io_core_imports_no_io_and_no_transport(path: Path):
    wrong = sorted(i for i in imports(path) if any(i == m or i.startswith(m + ".") for m in IO))
    assert wrong == [], f"protocol/core/{path.name} imports {wrong}"


def test_the_transport_channel_does_not_import_the_connection_it_lives_on():
    assert "protocol.aio.connection" not in imports(PROTOCOL / "aio" / "channel.py")


def test_a_delivery_is_the_message_itself_and_an_event():
    assert issubclass(Message, Event)
    assert Event.__slots__ == ()  # a base that adds nothing to a message's construction
