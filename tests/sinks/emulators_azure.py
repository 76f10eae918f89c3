"""Azurite, Microsoft's Blob Storage emulator, for the Azure sink's tests.

`azure_emulator` is one Azurite for the whole session, on a free loopback port, keeping its data in
memory; a test may stop() and start() it again (same port, data gone). `azure_sink` is an Azure sink
on a fresh container of it, found through $AZURE_STORAGE_CONNECTION_STRING as an operator would set it.
Azurite comes from npm into .tools/ (`make setup`), or from PATH.
"""

from __future__ import annotations

import contextlib
import http.client
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from protocol.loop import run

if TYPE_CHECKING:
    from sinks.azure import AzureBlobSink

# Azurite's one built-in account and its published key: not a secret, but the tests check that it never
# shows in an error all the same, as a real key must not.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

REPO = Path(__file__).resolve().parents[2]
PROJECT_AZURITE = REPO / ".tools" / "node_modules" / ".bin" / "azurite-blob"
START_TIMEOUT = 30.0  # seconds for Azurite to answer after its start
STOP_TIMEOUT = 10.0


def find_azurite() -> str:
    """The azurite-blob executable: the project's (.tools/), else one on PATH; fails the test if none."""
    if PROJECT_AZURITE.is_file():
        return str(PROJECT_AZURITE)
    found = shutil.which("azurite-blob")
    if found is None:
        pytest.fail(
            f"azurite-blob (the Azure Blob Storage emulator) is not installed: run `make setup`, which puts it "
            f"in {PROJECT_AZURITE.relative_to(REPO)} (npm install --prefix .tools azurite)",
            pytrace=False,
        )
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Azurite:
    """One azurite-blob process on 127.0.0.1: start(), stop(), and start() again on the same port.

    In memory by default; with `persistent=True` it keeps its data on disk in `workdir` (`--location`),
    so that it comes back from a stop with everything it held.
    """

    def __init__(self, binary: str, workdir: Path, *, persistent: bool = False) -> None:
        self.binary = binary
        self.workdir = workdir  # its cwd: Azurite writes nothing with in-memory persistence, but just in case
        self.persistent = persistent
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        parts = {"DefaultEndpointsProtocol": "http", "AccountName": ACCOUNT, "AccountKey": ACCOUNT_KEY}
        return "".join(f"{name}={value};" for name, value in {**parts, "BlobEndpoint": self.endpoint}.items())

    @property
    def log(self) -> Path:
        return self.workdir / "azurite.log"

    def start(self) -> Azurite:
        """Start Azurite and return once it answers HTTP; fails the test, with its log, if it does not."""
        if self._process is not None:
            raise RuntimeError("Azurite is already running")
        command = [
            self.binary,
            *("--blobHost", "127.0.0.1", "--blobPort", str(self.port)),
            *(("--location", str(self.workdir / "data")) if self.persistent else ("--inMemoryPersistence",)),
            "--skipApiVersionCheck",  # the SDK may be newer than the emulator
            "--disableTelemetry",
            "--silent",
        ]
        with open(self.log, "ab") as log:
            self._process = subprocess.Popen(
                command, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_text(errors="replace")[-2000:]
                pytest.fail(f"Azurite did not start on port {self.port}:\n{tail}", pytrace=False)
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
        try:
            connection.request("GET", f"/{ACCOUNT}?comp=list")
            connection.getresponse().read()  # any status will do: it is serving
            return True
        except OSError:
            return False
        finally:
            connection.close()

    def stop(self) -> None:
        """Stop the process (by its PID, SIGTERM first, so a persistent one saves); in-memory data is gone."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def create_container(self) -> str:
        """A new, empty container with a unique name."""
        name = f"warren-{secrets.token_hex(6)}"
        run(self._create_container(name))
        return name

    async def _create_container(self, name: str) -> None:
        from azure.storage.blob.aio import BlobServiceClient

        async with BlobServiceClient.from_connection_string(self.connection_string) as service:
            await service.create_container(name)

    def delete_container(self, name: str) -> None:
        if self.running:
            run(self._delete_container(name))

    async def _delete_container(self, name: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError
        from azure.storage.blob.aio import BlobServiceClient

        async with BlobServiceClient.from_connection_string(self.connection_string) as service:
            with contextlib.suppress(ResourceNotFoundError):  # gone with a restart of the emulator
                await service.delete_container(name)


@pytest.fixture(scope="session")
def azure_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    emulator = Azurite(find_azurite(), tmp_path_factory.mktemp("azurite"))
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def azure_sink(azure_emulator: Azurite, monkeypatch: pytest.MonkeyPatch) -> Iterator[AzureBlobSink]:
    """An (unchecked) Azure sink on a fresh container of the session's Azurite, under a prefix."""
    from sinks.azure import AzureBlobSink  # here, so that a missing SDK fails these tests, not the collection

    if not azure_emulator.running:  # a test that stopped it failed before starting it again
        azure_emulator.start()
    for name in ("AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azure_emulator.connection_string)
    container = azure_emulator.create_container()
    sink = AzureBlobSink.from_uri(f"az://{container}/some/prefix")
    try:
        yield sink
    finally:
        run(sink.close())
        azure_emulator.delete_container(container)
