"""Every command's --help ends with examples an operator can adapt and the exit codes it may return."""

from __future__ import annotations

import pytest

from bridge.cli import COMMANDS, build_parser


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_examples_and_its_exit_codes_in_its_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser(command).parse_args([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "example" in text and f"warren {command} " in text.split("example", 1)[1], text
    assert "exit codes" in text and "6 credentials or certificate refused" in text, text
