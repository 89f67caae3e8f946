"""The storage layer against a real S3 server (versitygw, tests/conftest.py): bytes round-trip, staging downloads
each object version once, the bucket is the truth for output folders, one-line errors, and an upload killed midway
leaves no partial object."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kestrel_trainer import storage
from kestrel_trainer.storage import StorageError, outputs

REPO = Path(__file__).resolve().parents[2]


def _objects(cache: Path) -> set[Path]:
    return {p for p in (cache / "objects").rglob("*") if p.is_file()} if (cache / "objects").exists() else set()


def test_output_folder_uploads_what_is_written_bytes_intact_and_staging_reads_them_back(s3, tmp_path):
    big = os.urandom(40 * 2**20 + 123)  # above the 16 MiB part size: a multipart upload
    small = b"epoch,acc\n1,0.5\n"
    with storage.session():
        local = storage.output_dir(s3.url("run1"))
        os.makedirs(os.path.join(local, "weights"))
        Path(local, "weights", "model_001.hdf5").write_bytes(big)
        Path(local, "training.csv").write_bytes(small)
        Path(local, ".hidden.tmp").write_bytes(b"never uploaded")
    assert s3.object_keys("run1/") == ["run1/training.csv", "run1/weights/model_001.hdf5"]
    assert hashlib.sha256(s3.get("run1/weights/model_001.hdf5")).digest() == hashlib.sha256(big).digest()
    assert s3.get("run1/training.csv") == small

    os.environ["KESTREL_CACHE_DIR"] = str(tmp_path / "other-cache")  # another machine: nothing local
    staged = storage.input_path(s3.url("run1/weights/model_001.hdf5"))
    assert Path(staged).read_bytes() == big
    folder = storage.input_path(s3.url("run1"))
    assert sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file()
                  and not p.name.startswith(".")) == ["training.csv", "weights/model_001.hdf5"]


def test_staging_downloads_each_object_version_once(s3, tmp_path):
    for c in ("cat", "dog"):
        for i in range(3):
            s3.put(f"data/train/{c}/{i}.png", f"{c}{i}".encode() * 100)
    cache = Path(os.environ["KESTREL_CACHE_DIR"])
    root = storage.input_path(s3.url("data/train"))
    first = _objects(cache)
    assert len(first) == 6
    inodes = {p: p.stat().st_ino for p in Path(root).rglob("*.png")}
    assert storage.input_path(s3.url("data/train/")) == root  # a re-run: nothing new downloaded
    assert _objects(cache) == first
    assert {p: p.stat().st_ino for p in Path(root).rglob("*.png")} == inodes
    s3.put("data/train/dog/1.png", b"changed")  # one object changes: only it is downloaded
    s3.client.remove_object(s3.bucket, "data/train/cat/2.png")  # one goes: its local copy goes too
    storage.input_path(s3.url("data/train"))
    assert len(_objects(cache) - first) == 1
    assert Path(root, "dog", "1.png").read_bytes() == b"changed"
    assert not Path(root, "cat", "2.png").exists()
    for i in range(3):  # the same bytes under another prefix: same ETag and size, served by the cache
        s3.put(f"copy/dog/{i}.png", f"dog{i}".encode() * 100 if i != 1 else b"changed")
    before = _objects(cache)
    storage.input_path(s3.url("copy"))
    assert _objects(cache) == before


def test_an_output_folder_follows_the_bucket_not_stale_local_files(s3):
    s3.put("run/status.json", b'{"status": "STARTED"}\n')
    s3.put("run/weights/m_001.hdf5", b"one")
    with storage.session():
        local = storage.output_dir(s3.url("run"))
        Path(local, "weights", "m_002.hdf5").parent.mkdir(parents=True, exist_ok=True)
        Path(local, "weights", "m_002.hdf5").write_bytes(b"written locally, upload never finished")
        assert Path(local, "status.json").read_bytes() == b'{"status": "STARTED"}\n'  # records are brought in
        assert not Path(local, "weights", "m_001.hdf5").exists()  # checkpoints only on demand
        outputs._open.clear()  # as if killed before the upload: the uploader never ran
    with storage.session():
        local = storage.output_dir(s3.url("run"))  # the next attempt: the bucket is the truth
        assert storage.remote_names(os.path.join(local, "weights")) == ["m_001.hdf5"]
        assert not Path(local, "weights", "m_002.hdf5").exists()
        assert storage.fetch(os.path.join(local, "weights", "m_001.hdf5"))
        assert Path(local, "weights", "m_001.hdf5").read_bytes() == b"one"
        with open(Path(local, "status.json"), "a") as fh:
            fh.write('{"status": "RUNNING"}\n')
    assert s3.get("run/status.json") == b'{"status": "STARTED"}\n{"status": "RUNNING"}\n'
    assert "run/weights/m_002.hdf5" not in s3.object_keys()


@pytest.mark.parametrize("case", ["no bucket", "no prefix", "wrong secret", "unknown key", "no object"])
def test_errors_are_one_line_naming_the_url_and_never_the_secret(s3, monkeypatch, case):
    url = s3.url("data/train")
    if case == "no bucket":
        url = "s3://no-such-bucket-kestrel/data"
    elif case == "wrong secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-4242")
    elif case == "unknown key":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody-4242")
    elif case == "no object":
        url = s3.url("models/missing.tlt")
    with pytest.raises(StorageError) as info:
        storage.input_path(url)
    message = info.value.message
    assert info.value.exit_code == 2
    assert "\n" not in message and message.startswith(url.rstrip("/")), message
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in message
    expected = {"no bucket": "does not exist", "no prefix": "no objects under this prefix",
                "wrong secret": "refused the credentials", "unknown key": "refused the credentials",
                "no object": "no objects under this prefix"}[case]
    assert expected in message, message


def test_an_output_folder_refuses_at_once_when_it_cannot_write(s3, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-4242")
    with pytest.raises(StorageError, match="refused the credentials"):
        storage.output_dir(s3.url("run"))


UPLOADER = r"""
import logging, os, sys
from pathlib import Path
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(message)s")
from kestrel_trainer import storage
from kestrel_trainer.model_io.files import write_atomic  # as Kestrel writes checkpoints: temp name, then rename
with storage.session():
    local = storage.output_dir(sys.argv[1])
    write_atomic(Path(local, "weights", "m_001.hdf5"), Path(sys.argv[2]).read_bytes())
    storage.outputs._open[next(iter(storage.outputs._open))].sync()
    print("first done", file=sys.stderr, flush=True)
    write_atomic(Path(local, "weights", "m_002.hdf5"), Path(sys.argv[3]).read_bytes())
"""


def test_an_upload_killed_midway_leaves_no_partial_object_and_the_completed_one_intact(s3, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(os.urandom(20 * 2**20))
    second.write_bytes(os.urandom(400 * 2**20))  # 25 parts: seconds of upload, killed after its first part
    env = {**s3.env, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", UPLOADER, s3.url("run"), str(first), str(second)], env=env,
                            stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        seen.append(line)
        if "uploading" in line and "m_002" in line:
            break
        assert time.monotonic() < deadline, "".join(seen)
    parts = s3.server.root / s3.bucket / ".sgwtmp" / "multipart"  # versitygw keeps an upload's parts here
    before = {p for p in parts.rglob("*") if p.is_file()} if parts.exists() else set()
    while time.monotonic() < deadline and not ({p for p in parts.rglob("*") if p.is_file()} - before):
        time.sleep(0.01)  # until the first part of m_002 has reached the server: the upload is under way
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    seen += proc.stderr.readlines()
    assert not any("uploaded" in line and "m_002" in line for line in seen), "".join(seen)
    assert s3.object_keys("run/") == ["run/weights/m_001.hdf5"]  # no object at all for the cut upload
    assert s3.get("run/weights/m_001.hdf5") == first.read_bytes()


def test_uploads_go_through_once_a_stopped_server_is_back(s3, caplog):
    from kestrel_trainer.model_io.files import write_atomic

    data = os.urandom(3 * 2**20)
    with storage.session():
        local = storage.output_dir(s3.url("run"))
        s3.server.stop()
        try:
            write_atomic(Path(local, "weights", "m_001.hdf5"), data)
            deadline = time.monotonic() + 60
            while "upload failed, will retry" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.2)
            assert "upload failed, will retry" in caplog.text  # one warning line, the run goes on
        finally:
            s3.server.start()
    assert s3.get("run/weights/m_001.hdf5") == data
