"""Google Cloud Storage for the sink tests: gcp-storage-emulator on a private loopback port.

`gcs_emulator` runs one in-memory emulator for the session; a test may `stop()` it and `start()` it
again on the same port (which empties it). `gcs_sink` gives each test a fresh bucket and a GCSSink on
a prefix inside it. Both skip, saying why, when the emulator or google-cloud-storage is not installed.
The SDK is imported only inside the fixtures, so the other backends' tests never need it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from bridge.harness.nodes import free_port
from protocol.loop import run

if TYPE_CHECKING:
    from sinks.gcs import GCSSink

# What gcp-storage-emulator does not do that GCS does, by the name a contract test asks about
# (`sink.emulator_gaps`): each such test is reported as an expected failure with this reason.
GCS_EMULATOR_GAPS = {
    "conditional_create": "gcp-storage-emulator ignores if_generation_match=0; real GCS enforces it",
}

START_TIMEOUT = 30.0  # seconds for the emulator to answer after launch
STOP_TIMEOUT = 10.0  # seconds for it to exit after SIGTERM before SIGKILL
PROJECT = "warren-test"


def _emulator_executable() -> str | None:
    beside_python = Path(sys.executable).parent / "gcp-storage-emulator"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("gcp-storage-emulator")


class GCSEmulator:
    """One gcp-storage-emulator process on 127.0.0.1:`port`: in memory, or with `data_dir` on disk there,
    so that a restarted emulator keeps its buckets and objects."""

    def __init__(self, executable: str, port: int, log_path: Path, *, data_dir: Path | None = None) -> None:
        self.executable = executable
        self.port = port
        self.log_path = log_path
        self.data_dir = data_dir
        self._process: subprocess.Popen[bytes] | None = None
        self._admin: Any = None  # a google.cloud.storage.Client, made on first use

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Launch the emulator (empty, unless on disk) and return once it answers HTTP."""
        if self.running:
            return
        command = [self.executable, "start", "--host", "127.0.0.1", "--port", str(self.port), "-q"]
        env = None
        if self.data_dir is None:
            command.append("--in-memory")
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "STORAGE_BASE": str(self.data_dir)}  # it keeps everything in .cloudstorage/ there
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self._process.poll() is not None:
                raise RuntimeError(f"gcp-storage-emulator exited with {self._process.returncode}: {self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gcp-storage-emulator did not answer within {START_TIMEOUT:g}s: {self._log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """End the emulator process (by its PID: SIGTERM, then SIGKILL) and wait until it is gone."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b?project={PROJECT}", timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def admin(self) -> Any:
        """A client of the emulator itself, for making buckets and looking inside them."""
        if self._admin is None:
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            self._admin = storage.Client(
                project=PROJECT, credentials=AnonymousCredentials(), client_options={"api_endpoint": self.endpoint}
            )
        return self._admin

    def create_bucket(self) -> str:
        name = f"warren-test-{secrets.token_hex(6)}"
        self.admin().create_bucket(name)
        return name

    def wipe(self) -> None:
        """Drop every bucket and object, and uploads left unfinished (which would block deleting a bucket)."""
        with urllib.request.urlopen(f"{self.endpoint}/wipe", timeout=10.0) as response:
            response.read()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GCSEmulator]:
    pytest.importorskip("google.cloud.storage", reason="the GCS sink needs google-cloud-storage")
    executable = _emulator_executable()
    if executable is None:
        pytest.skip("gcp-storage-emulator is not installed (pip install gcp-storage-emulator)")
    log_path = tmp_path_factory.mktemp("gcs-emulator") / "emulator.log"
    emulator = GCSEmulator(executable, free_port(), log_path)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def gcs_sink(gcs_emulator: GCSEmulator) -> Iterator[GCSSink]:
    """An unchecked GCSSink on `some/prefix` in a bucket of its own; the emulator is emptied afterwards."""
    from sinks.gcs import GCSSink

    gcs_emulator.start()  # a test before may have stopped it
    bucket = gcs_emulator.create_bucket()
    sink = GCSSink.from_uri(f"gs://{bucket}/some/prefix?endpoint={gcs_emulator.endpoint}")
    sink.emulator_gaps = dict(GCS_EMULATOR_GAPS)  # type: ignore[attr-defined]
    try:
        yield sink
    finally:
        run(sink.close())
        if gcs_emulator.running:  # else it restarts empty
            gcs_emulator.wipe()
