"""An S3 emulator for the tests: moto's server on a free loopback port, and a fresh bucket per test.

`s3_emulator` is one server for the whole session; `s3_sink` is an `S3Sink` on a new, empty bucket
in it, with test credentials in the environment (moto accepts any). A test that stops the emulator
starts its own `MotoServer`, which can be stopped and started again on the same port. moto keeps
everything in memory: a restarted server comes back empty.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from protocol.loop import run

if TYPE_CHECKING:
    from sinks.s3 import S3Sink

REPO = Path(__file__).resolve().parents[2]
STARTUP_DEADLINE = 30.0  # seconds for a server to answer after it is started
PREFIX = "some/prefix"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
_SERVE = "from tests.sinks.emulators_s3 import serve_moto_one_at_a_time; serve_moto_one_at_a_time()"


def serve_moto_one_at_a_time() -> None:
    """Run moto's own server (its options, request handler and keep-alive) with its application taking
    one request at a time. moto handles requests on threads and checks If-None-Match before it stores,
    without a lock, so two concurrent conditional creates can both win, where S3 decides them
    atomically: serialised, the emulator is as strict as S3. The tests send little load."""
    import threading

    import moto.server
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    class OneAtATime(DomainDispatcherApplication):
        _lock = threading.Lock()

        def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
            with self._lock:
                response = super().__call__(environ, start_response)
                try:
                    return list(response)
                finally:
                    if hasattr(response, "close"):
                        response.close()

    moto.server.DomainDispatcherApplication = OneAtATime  # type: ignore[misc]
    moto.server.main()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class MotoServer:
    """moto's S3 server as a child process on 127.0.0.1; `stop()` kills it, `start()` brings it back
    on the same port (empty)."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log_path = log_dir / f"moto-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._clients: dict[str, Any] = {}
        # No proxy between the tests and the loopback server, whatever the environment says.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> MotoServer:
        if self._process is not None:
            raise RuntimeError(f"moto is already running at {self.endpoint}")
        with open(self._log_path, "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _SERVE, "-H", "127.0.0.1", "-p", str(self.port)],
                cwd=REPO,  # `python -c` imports from the working directory: this module, in the child
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + STARTUP_DEADLINE
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log_tail = self._log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"moto did not start at {self.endpoint}; its log ends:\n{log_tail}")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        try:
            with self._opener.open(f"{self.endpoint}/moto-api/", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """Kill the server (by its PID) and wait until it is gone, so its port is free again."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()  # Popen's own: never signals a reaped, possibly reused pid
        process.wait(timeout=10)

    # -- buckets, through a plain botocore client

    def client(self, service: str) -> Any:
        """A synchronous botocore client of this server for `service`, made once (it survives restarts)."""
        if service not in self._clients:
            import botocore.session

            self._clients[service] = botocore.session.get_session().create_client(
                service,
                endpoint_url=self.endpoint,
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
        return self._clients[service]

    def s3(self) -> Any:
        return self.client("s3")

    def enforce_authentication(self) -> None:
        """From now on, refuse requests unless signed with an IAM user's access key (moto accepts any
        credentials until told otherwise). Lasts until the server is restarted."""
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
        )
        with self._opener.open(request, timeout=10) as response:
            assert response.status == 200, response.read()

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"warren-test-{secrets.token_hex(6)}"
        self.s3().create_bucket(Bucket=name)
        return name

    def remove_bucket(self, name: str) -> None:
        """Delete the bucket and everything in it, so the session's server does not grow without end."""
        s3 = self.s3()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            for entry in page.get("Contents", ()):
                s3.delete_object(Bucket=name, Key=entry["Key"])
        for upload in s3.list_multipart_uploads(Bucket=name).get("Uploads", ()):
            s3.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
        s3.delete_bucket(Bucket=name)


def use_test_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Point the AWS credential chain at fixed test credentials and nothing else on this machine."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def sink_uri(endpoint: str, bucket: str, prefix: str = PREFIX) -> str:
    return f"s3://{bucket}/{prefix}?endpoint-url={endpoint}"


@pytest.fixture(scope="session")
def s3_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto S3 server for the session; skips with a reason when moto or aiobotocore is missing."""
    pytest.importorskip("moto.server", reason="the S3 emulator needs moto[server]")
    pytest.importorskip("aiobotocore", reason="the S3 sink needs aiobotocore")
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_sink(s3_emulator: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[S3Sink]:
    """An `S3Sink` on a fresh bucket of the session's emulator, under prefix `some/prefix`."""
    from sinks.s3 import S3Sink

    use_test_credentials(monkeypatch, tmp_path)
    bucket = s3_emulator.create_bucket()
    sink = S3Sink(sink_uri(s3_emulator.endpoint, bucket))
    try:
        yield sink
    finally:
        run(sink.close())
        s3_emulator.remove_bucket(bucket)
