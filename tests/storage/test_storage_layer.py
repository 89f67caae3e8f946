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


def _present(root: str) -> set[str]:
    """Files a mirror folder holds, relative to it (the staging manifest aside)."""
    return {p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file() and not p.name.startswith(".")}


def test_two_ranks_each_fetch_only_their_shard_disjoint_and_together_the_dataset(s3, tmp_path, monkeypatch):
    """`kestrel train` stages its datasets lazily (cli/common.stage_spec_inputs): rank r of 2 (two nodes, each its
    own cache) scans the whole file list but fetches only its shard (sharding.shard_indices), as the bad-image check
    (data/check.py, which the trainer runs before reading anything) decodes it. Counted against the server's
    own listing (ETags and sizes from an independent client): the two ranks' downloads are disjoint, and together
    exactly the bucket's objects."""
    from kestrel_trainer.data import folders
    from kestrel_trainer.data.check import exclude_bad_images_and_cache
    from kestrel_trainer.data.sharding import shard_indices
    from tests.conftest import import_fashion_subset

    data = import_fashion_subset(tmp_path / "fm", per_class=3)
    s3.upload_tree(data / "train", "fm/train")
    server = {o.object_name[len("fm/train/"):]: f"{o.etag.strip(chr(34))}-{o.size}"
              for o in s3.client.list_objects(s3.bucket, prefix="fm/train/", recursive=True)}
    assert len(server) == 30

    def rank(r: int, size: int) -> tuple[list[str], set[str], set[str]]:
        cache = tmp_path / f"node-{r}-of-{size}"
        monkeypatch.setenv("KESTREL_CACHE_DIR", str(cache))
        root = storage.input_path(s3.url("fm/train"), lazy=True)
        assert _present(root) == set()  # listed only: nothing fetched yet
        scanned = folders.scan(root)  # the whole list, as every rank must see it
        kept, _labels, skipped, _ = exclude_bad_images_and_cache(
            list(scanned.files), list(scanned.labels), skip_bad_images=False, channels=1, rank=r, size=size,
            cache="off", gather=lambda failed: failed, log=print, info=print)
        assert skipped == 0 and kept == list(scanned.files)
        shard = {os.path.relpath(scanned.files[i], root) for i in shard_indices(len(scanned.files), r, size)}
        assert _present(root) == shard  # this rank holds its shard and nothing else
        downloaded = {p.name for p in (cache / "objects").rglob("*") if p.is_file()}
        assert downloaded == {server[rel] for rel in shard}  # ... and downloaded just those objects
        return [os.path.relpath(f, root) for f in scanned.files], shard, downloaded

    list0, shard0, got0 = rank(0, 2)
    list1, shard1, got1 = rank(1, 2)
    assert list0 == list1 and sorted(list0) == sorted(server)
    assert shard0.isdisjoint(shard1) and shard0 | shard1 == set(server)
    assert len(shard0) == len(shard1) == 15
    assert got0 | got1 == set(server.values())

    whole, _, got = rank(0, 1)  # one rank: all of it, as before
    assert set(whole) == set(server) and got == set(server.values())


def test_a_skipped_bad_image_moves_the_shard_and_the_rank_fetches_its_new_files(s3, tmp_path, monkeypatch):
    from kestrel_trainer.data import folders
    from kestrel_trainer.data.check import exclude_bad_images_and_cache
    from kestrel_trainer.data.sharding import shard_indices

    for c in ("cat", "dog"):
        for i in range(4):
            s3.put(f"d/{c}/{i}.png", _png(i))
    s3.put("d/cat/0.png", b"not a png")  # file 0, in rank 0's shard: every later file changes rank
    found_by_rank0: list[int] = []

    def check(r: int, gather) -> tuple[str, list[str], list[str]]:  # noqa: ANN001
        monkeypatch.setenv("KESTREL_CACHE_DIR", str(tmp_path / f"node-{r}"))
        root = storage.input_path(s3.url("d"), lazy=True)
        scanned = folders.scan(root)
        kept, _labels, skipped, _ = exclude_bad_images_and_cache(
            list(scanned.files), list(scanned.labels), skip_bad_images=True, channels=1, rank=r, size=2,
            cache="off", gather=gather, log=print, info=print)
        assert skipped == 1 and len(kept) == 7
        return root, list(scanned.files), kept

    check(0, lambda failed: found_by_rank0.extend(failed) or list(failed))  # the all-gather, rank 0's half first
    assert found_by_rank0 == [0]
    root, files, kept = check(1, lambda failed: found_by_rank0 + list(failed))
    first = {os.path.relpath(files[i], root) for i in shard_indices(8, 1, 2)}
    moved = {os.path.relpath(kept[i], root) for i in shard_indices(7, 1, 2)}
    assert moved - first and _present(root) == first | moved


def _png(seed: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8), color=seed * 20).save(buf, format="PNG")
    return buf.getvalue()
