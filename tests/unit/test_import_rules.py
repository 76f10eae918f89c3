"""Which package may import which (docs/ARCHITECTURE.md), checked on the source itself: every import
statement of every module, read with `ast`, so that a new module cannot quietly point the wrong way."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bridge", "protocol", "sinks")


def modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            yield name, path


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# (what, which modules it binds, what they must not import)
RULES = [
    ("protocol knows frames and messages, not archives or storage", ("protocol",), ("bridge", "sinks")),
    ("a sink knows bytes and keys, not messages", ("sinks",), ("bridge", "protocol")),
    (
        "the archive format knows no archiver, replayer or command",
        ("bridge.archive",),
        ("bridge.archiver", "bridge.replay", "bridge.commands", "bridge.harness", "bridge.cli"),
    ),
    ("the replayer does not lean on the archiver", ("bridge.replay",), ("bridge.archiver", "bridge.commands")),
    ("the archiver does not lean on the replayer", ("bridge.archiver",), ("bridge.replay", "bridge.commands")),
    (
        "only commands use the test and demo harness",
        ("bridge.archive", "bridge.archiver", "bridge.replay"),
        ("bridge.harness",),
    ),
    (
        "argument parsing belongs to the commands",
        ("bridge.archive", "bridge.archiver", "bridge.replay", "protocol", "sinks"),
        ("argparse",),
    ),
]


@pytest.mark.parametrize(("what", "bound", "forbidden"), RULES, ids=[rule[0] for rule in RULES])
def test_import_rule(what: str, bound: tuple[str, ...], forbidden: tuple[str, ...]) -> None:
    broken = [
        f"{name} imports {imported}"
        for name, path in modules()
        if within(name, *bound)
        for imported in imports(path)
        if within(imported, *forbidden)
    ]
    assert not broken, f"{what}: " + "; ".join(broken)


def test_only_the_stream_client_wrapper_imports_rstream() -> None:
    users = sorted(name for name, path in modules() if any(within(i, "rstream") for i in imports(path)))
    assert all(within(name, "protocol.stream") for name in users), users


def test_nothing_in_bridge_but_the_command_line_catches_every_exception() -> None:
    """A catch-all hides bugs; the one place allowed is where the CLI turns a bug into one line. (The
    protocol's transport has one more: a consumer callback that raises closes its channel, so that the
    broker requeues what it held.)"""
    catching = []
    for name, path in modules():
        if not within(name, "bridge"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ExceptHandler) and isinstance(node.type, ast.Name) and node.type.id == "Exception":
                catching.append(f"{name}:{node.lineno}")
    assert [where for where in catching if not where.startswith("bridge.cli:")] == []
