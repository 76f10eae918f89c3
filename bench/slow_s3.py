"""S3 some milliseconds away, for the benchmarks: moto's S3 server on loopback (the test suite's
`MotoServer`, in memory) behind a `LatencyProxy` that adds `delay` to every request.

`slow_s3(workdir, delay)` starts both, puts fixed bench credentials in this process's environment
(worker processes inherit them; moto accepts any) and points the AWS credential chain at nothing
else on this machine; it stops both at the end. `SlowS3.uri(bucket, prefix)` is a sink URI through
the proxy, `SlowS3.direct_uri(...)` one straight to moto (for setting up outside the timing).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common  # noqa: F401  (first: it puts the repository root on sys.path)
from latency_proxy import LatencyProxy

DEFAULT_DELAY = 0.020  # seconds added to every request
BENCH_AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class SlowS3:
    moto: Any  # tests.sinks.emulators_s3.MotoServer
    proxy: LatencyProxy

    @property
    def delay(self) -> float:
        return self.proxy.delay

    def uri(self, bucket: str, prefix: str = "bench") -> str:
        """A sink URI whose every request goes through the proxy."""
        return f"s3://{bucket}/{prefix}?endpoint-url={self.proxy.endpoint}"

    def direct_uri(self, bucket: str, prefix: str = "bench") -> str:
        """A sink URI straight to moto, without the added latency."""
        return f"s3://{bucket}/{prefix}?endpoint-url={self.moto.endpoint}"

    def create_bucket(self) -> str:
        return str(self.moto.create_bucket())

    def remove_bucket(self, bucket: str) -> None:
        """Empty and delete it (moto holds everything in memory)."""
        self.moto.remove_bucket(bucket)

    def put_tree(self, root: Path, bucket: str, prefix: str = "bench") -> int:
        """Copy every file under `root` into the bucket under `prefix`, keys as their relative paths."""
        s3 = self.moto.s3()
        files = [p for p in sorted(root.rglob("*")) if p.is_file()]
        for path in files:
            s3.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(root).as_posix()}", Body=path.read_bytes())
        return len(files)


def missing() -> str | None:
    """Why S3 cannot be benchmarked here, or None."""
    try:
        import aiobotocore  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as err:
        return f"{err.name} is not installed (pip install -e '.[dev]')"
    return None


@contextlib.contextmanager
def slow_s3(workdir: Path, delay: float = DEFAULT_DELAY) -> Iterator[SlowS3]:
    """moto on a free loopback port behind a LatencyProxy of `delay` seconds; both stopped at the end."""
    from tests.sinks.emulators_s3 import MotoServer

    os.environ.update(BENCH_AWS)
    os.environ.update(
        AWS_CONFIG_FILE=str(workdir / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(workdir / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        NO_PROXY="127.0.0.1,localhost",
    )
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        os.environ.pop(name, None)
    moto = MotoServer(workdir).start()
    try:
        with LatencyProxy(("127.0.0.1", moto.port), delay=delay) as proxy:
            yield SlowS3(moto, proxy)
    finally:
        moto.stop()
