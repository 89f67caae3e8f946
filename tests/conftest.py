"""Shared test helpers: paths to the repo, the conformance corpus and the example specs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# CI lays shared/ beside the clone; developers have it at /work/shared.
SHARED = Path(os.environ.get("KESTREL_SHARED", REPO.parent / "shared"))
CONFORMANCE = SHARED / "conformance" / "specs"


@pytest.fixture
def conformance_specs() -> list[Path]:
    specs = sorted(CONFORMANCE.glob("*.txt"))
    if not specs:
        pytest.fail(f"no conformance specs found under {CONFORMANCE}; set KESTREL_SHARED")
    return specs


def import_fashion_subset(out: Path, per_class: int) -> Path:
    """`kestrel dataset import fashion-mnist --per-class N`: small real data from the Debian package."""
    proc = subprocess.run(
        [sys.executable, "-m", "kestrel_trainer.cli.main", "dataset", "import", "fashion-mnist", "--out", str(out),
         "--per-class", str(per_class)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return out


# --- an S3-compatible server for the storage tests (docs/storage.md) ----------------------------------------------
# versitygw (an S3 gateway over a POSIX folder) built from its Go module by `bash e2e/build.sh --versitygw`, which
# scripts/test.sh runs (cached). A missing binary skips, which strict mode (scripts/test.sh, CI) turns into a failure.
S3_TEST_ACCESS_KEY = "kestrel-test-access"  # test-only credentials of the server this fixture starts
S3_TEST_SECRET_KEY = "kestrel-test-secret-0123456789"


class S3Server:
    """versitygw on `host` (127.0.0.1; the e2e's pods reach it on the control plane's address) over a temp folder;
    stop() and start() again on the same port and data."""

    def __init__(self, binary: str, root: Path, host: str = "127.0.0.1") -> None:
        import socket

        self.binary, self.root, self.host = binary, root, host
        with socket.socket() as s:
            s.bind((host, 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://{host}:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import socket
        import time

        env = {"PATH": os.environ.get("PATH", ""), "ROOT_ACCESS_KEY_ID": S3_TEST_ACCESS_KEY,
               "ROOT_SECRET_ACCESS_KEY": S3_TEST_SECRET_KEY}  # in its environment, not its command line
        log = open(self.root.parent / "versitygw.log", "ab")  # noqa: SIM115 - the server's, closed with it
        self.proc = subprocess.Popen([self.binary, "--port", f"{self.host}:{self.port}", "--quiet", "posix",
                                      str(self.root)], env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"versitygw exited with {self.proc.returncode}: see {self.root.parent / 'versitygw.log'}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        pytest.fail("versitygw did not listen within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def versitygw_binary() -> str:
    out = subprocess.run(["bash", str(REPO / "e2e" / "build.sh"), "--versitygw-path"], capture_output=True,
                         text=True, check=True).stdout.strip()
    return out


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    binary = versitygw_binary()
    if not os.access(binary, os.X_OK):
        pytest.skip(f"the versitygw S3 server is not built ({binary}): run `bash e2e/build.sh --versitygw` "
                    "(scripts/test.sh does)")
    root = tmp_path_factory.mktemp("s3") / "root"
    root.mkdir()
    server = S3Server(binary, root)
    server.start()
    yield server
    server.stop()


class S3Fixture:
    """A fresh bucket on the test server, the environment that points Kestrel at it, and an independent client."""

    def __init__(self, server: S3Server, bucket: str, env: dict[str, str]) -> None:
        from minio import Minio

        self.server, self.bucket, self.env = server, bucket, env
        self.client = Minio(f"{server.host}:{server.port}", access_key=S3_TEST_ACCESS_KEY,
                            secret_key=S3_TEST_SECRET_KEY, secure=False, region="us-east-1")

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    def put(self, key: str, data: bytes) -> None:
        import io

        self.client.put_object(self.bucket, key, io.BytesIO(data), len(data))

    def get(self, key: str) -> bytes:
        response = self.client.get_object(self.bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def object_keys(self, prefix: str = "") -> list[str]:
        return sorted(o.object_name for o in self.client.list_objects(self.bucket, prefix=prefix or None,
                                                                       recursive=True))

    def upload_tree(self, folder: Path, prefix: str) -> int:
        n = 0
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                self.client.fput_object(self.bucket, f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}",
                                        str(path))
                n += 1
        return n


@pytest.fixture
def s3(s3_server, tmp_path, monkeypatch, request) -> S3Fixture:
    """A fresh bucket; AWS_* and KESTREL_CACHE_DIR (a new, empty cache) set for this process and in `.env` for
    subprocesses."""
    import hashlib
    import re

    tag = hashlib.sha256(f"{request.node.nodeid}{os.getpid()}".encode()).hexdigest()[:8]
    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + f"-{tag}"
    env = {"AWS_ACCESS_KEY_ID": S3_TEST_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_TEST_SECRET_KEY,
           "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_server.endpoint,
           "KESTREL_CACHE_DIR": str(tmp_path / "cache"), "KESTREL_S3_SYNC_SECONDS": "0.5"}
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    fixture = S3Fixture(s3_server, bucket, {**os.environ, **env})
    if not fixture.client.bucket_exists(bucket):
        fixture.client.make_bucket(bucket)
    return fixture
