"""The coverage-guided fuzzers of tests/fuzz.py (atheris) for a short budget each: the frame handler, the
segment reader and a block's record decoder take arbitrary bytes with typed errors only, within
libFuzzer's memory and time limits. `make soak` runs them for minutes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

pytestmark = pytest.mark.slow

FUZZ = Path(__file__).resolve().parent / "fuzz.py"
SECONDS = 8


@pytest.mark.parametrize("target", ["frames", "segment", "records"])
def test_the_decoder_survives_mutated_input_with_typed_errors_only(target: str, tmp_path: Path):
    done = subprocess.run(
        [sys.executable, str(FUZZ), target, "--seconds", str(SECONDS)],
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    runs = int(done.stderr.split("stat::number_of_executed_units:")[1].split()[0])
    assert runs > 1000, f"only {runs} inputs tried: the budget proves little\n{done.stderr[-2000:]}"
