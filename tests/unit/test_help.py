"""Every command's --help ends with examples an operator can adapt and the exit codes it may return."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_output_cut_short_by_its_reader_stops_quietly_with_the_shells_sigpipe_code(tmp_path):
    # `warren ls ARCHIVE | head -1`: the reader goes away before warren writes; no "internal error".
    (tmp_path / "archive").mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "ls", str(tmp_path / "archive")],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    assert proc.wait(60) == 141
    assert proc.stderr.read() == b""
