"""Output folders in object storage: commands write into a local mirror folder, an uploader PUTs what they write.

Opening `s3://bucket/run` as an output folder:
1. lists the prefix once; local mirror files the bucket does not have (or has in another version) are removed,
   so the bucket is the truth: a checkpoint whose upload never completed is not resumed from;
2. brings in the few records a command appends to or reads back (status.json, training.csv, summary.json,
   classmap.json; `fetch` adds one file, e.g. the checkpoint a resume needs);
3. checks that the credentials may write there (a probe object, removed at once);
4. starts an uploader thread: every KESTREL_S3_SYNC_SECONDS (default 2) it PUTs each file that is new or changed,
   oldest change first (so a checkpoint goes up before the training.csv row that names it). Files are written
   locally to a temp name and renamed (model_io.files.write_atomic), hidden and temp names are never uploaded,
   and an S3 PUT (multipart: its completion) is atomic: an object is complete or absent, never partial.
`close()` (the CLI's `session()` at the end of every command, error or not) uploads what is left and fails with
one line if it cannot within KESTREL_S3_FLUSH_SECONDS (default 300).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from kestrel_trainer.storage import cache, s3
from kestrel_trainer.storage.s3 import ObjectInfo, StorageError, Url

log = logging.getLogger("kestrel.storage")

STATE_FILES = frozenset({"status.json", "training.csv", "summary.json", "classmap.json"})
# Appended to in place: never linked into the object cache (the cache's copy would change with them).
_APPENDED = ("status.json", ".log")
PROBE = ".kestrel-write-check"
PARALLEL_ABOVE = 16  # more changed files than this in one pass (a dataset import): upload them in parallel


def _float_env(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


def _uploadable(rel: str) -> bool:
    parts = rel.split("/")
    return not any(p.startswith(".") for p in parts) and not rel.endswith((".tmp", ".partial", ".part.minio"))


Signature = tuple[int, int, int]  # size, mtime_ns, inode


def _signature(st: os.stat_result) -> Signature:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


class OutputDir:
    """One output folder: its URL, its local mirror folder and (when uploading) the thread that uploads it."""

    def __init__(self, url: Url, upload: bool = True, reconcile: bool = True,
                 want: Callable[[str], bool] = lambda rel: rel in STATE_FILES) -> None:
        self.url = Url(url.bucket, url.folder_prefix)
        self.local = cache.local_path(self.url)
        self.upload = upload
        self.remote: dict[str, ObjectInfo] = {}
        self._done: dict[str, Signature] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._failing: Optional[str] = None
        self._thread: Optional[threading.Thread] = None
        os.makedirs(self.local, exist_ok=True)
        self.remote = {info.key[len(self.url.folder_prefix):]: info for info in s3.list_objects(self.url)
                       if not info.key.endswith("/")}  # folder markers are no files
        if reconcile:
            self._reconcile(want)
        if upload:
            self._probe()
            self._baseline()
            self._thread = threading.Thread(target=self._run, name=f"upload {self.url}", daemon=True)
            self._thread.start()

    # -- opening ----------------------------------------------------------------------------------------------
    def _reconcile(self, want: Callable[[str], bool]) -> None:
        for folder, _dirs, files in os.walk(self.local):
            for name in files:
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, self.local).replace(os.sep, "/")
                if rel.startswith(".") or rel == cache.MANIFEST:
                    continue
                info = self.remote.get(rel)
                if info is None or not cache.same_file(path, cache._object_path(info)):
                    os.unlink(path)  # not in the bucket, or not known to be the bucket's version
        for rel in self.remote:
            if want(rel):
                self.fetch(rel, copy=True)

    def fetch(self, rel: str, copy: bool = False) -> bool:
        """Bring the bucket's `rel` into the mirror (no-op when it is there); False when the bucket has none."""
        info = self.remote.get(rel)
        if info is None:
            return False
        target = os.path.join(self.local, *rel.split("/"))
        path, fresh = cache.cached(self.url.child(rel), info)
        if not cache.same_file(path, target):
            cache.place(path, target, copy=copy or rel.endswith(_APPENDED))
            if fresh:
                log.info("fetched %s (%.1f MiB)", self.url.child(rel), info.size / 2**20)
        with self._lock:
            self._done[rel] = _signature(os.stat(target))
        return True

    def _probe(self) -> None:
        """Fail now, with one line, when the credentials may not write here (not after an epoch of training)."""
        probe = self.url.child(PROBE)
        path = os.path.join(self.local, PROBE)
        with open(path, "wb"):
            pass
        try:
            s3.upload(probe, path)
        finally:
            os.unlink(path)
        with contextlib.suppress(StorageError):  # may write but not delete: the empty probe object stays
            s3.remove(probe)

    def _baseline(self) -> None:
        for rel, st in self._scan():
            with self._lock:
                if rel not in self._done and rel in self.remote:
                    self._done[rel] = _signature(st)

    # -- uploading --------------------------------------------------------------------------------------------
    def _scan(self) -> list[tuple[str, os.stat_result]]:
        found = []
        for folder, dirs, files in os.walk(self.local):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, self.local).replace(os.sep, "/")
                if not _uploadable(rel):
                    continue
                try:
                    found.append((rel, os.stat(path)))
                except FileNotFoundError:
                    continue  # renamed away between listing and stat
        return found

    def pending(self) -> list[str]:
        """Files written or changed since they were last uploaded, oldest change first."""
        changed = []
        for rel, st in self._scan():
            with self._lock:
                if self._done.get(rel) != _signature(st):
                    changed.append((st.st_mtime_ns, rel))
        return [rel for _, rel in sorted(changed)]

    def _put(self, rel: str) -> None:
        path = os.path.join(self.local, *rel.split("/"))
        if not os.path.exists(path):
            return
        log.debug("uploading %s", self.url.child(rel))
        started = time.monotonic()
        info, st = s3.upload(self.url.child(rel), path)
        with self._lock:
            self._done[rel] = _signature(st)
            self.remote[rel] = info
        if not rel.endswith(_APPENDED) and "tfevents" not in rel:
            try:
                if _signature(os.stat(path)) == _signature(st):
                    cache.add_to_cache(path, info)
            except OSError:
                pass
        if st.st_size >= 1 << 20:
            log.info("uploaded %s (%.1f MiB, %.1f s)", self.url.child(rel), st.st_size / 2**20,
                     time.monotonic() - started)

    def sync(self) -> int:
        """Upload everything pending now; returns how many files went up. Raises StorageError on failure."""
        todo = self.pending()
        if len(todo) > PARALLEL_ABOVE:
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(self._put, todo))
        else:
            for rel in todo:
                self._put(rel)
        return len(todo)

    def _run(self) -> None:
        interval = _float_env("KESTREL_S3_SYNC_SECONDS", 2.0)
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.sync()
                if self._failing:
                    log.warning("uploads to %s work again", self.url)
                self._failing = None
            except StorageError as err:
                if self._failing != err.message:
                    log.warning("upload failed, will retry: %s", err.message)
                self._failing = err.message
            except Exception as err:  # noqa: BLE001 - the uploader must never die silently
                log.warning("upload to %s failed, will retry: %s", self.url, err)

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        """Stop the thread and upload what is left, retrying for up to KESTREL_S3_FLUSH_SECONDS."""
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self._thread = None
        deadline = time.monotonic() + _float_env("KESTREL_S3_FLUSH_SECONDS", 300.0)
        delay = 1.0
        while True:
            try:
                self.sync()
                return
            except StorageError as err:
                left = self.pending()
                if time.monotonic() + delay > deadline:
                    raise StorageError(f"{err.message} ({len(left)} file(s) not uploaded to {self.url}; they are "
                                       f"in {self.local})") from None
                log.warning("upload failed, retrying in %.0f s: %s", delay, err.message)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)


_open: dict[str, OutputDir] = {}
_open_lock = threading.Lock()


def open_dir(url_text: str, upload: bool = True, reconcile: bool = True) -> OutputDir:
    url = s3.parse(url_text)
    key = str(Url(url.bucket, url.folder_prefix))
    with _open_lock:
        for other_key, other in _open.items():  # a folder inside an open one is already uploaded by it
            if key.startswith(other_key) and (other.upload or not upload):
                return other
        if key not in _open:
            _open[key] = OutputDir(url, upload=upload, reconcile=reconcile)
        return _open[key]


def find(local: str) -> Optional[tuple[OutputDir, str]]:
    """The open output folder holding mirror path `local`, and the path relative to it."""
    full = os.path.abspath(local)
    with _open_lock:
        for od in _open.values():
            if full == od.local or full.startswith(od.local + os.sep):
                return od, os.path.relpath(full, od.local).replace(os.sep, "/")
    return None


def close_all() -> None:
    """Upload what every open output folder still has (the first failure is raised after all were tried)."""
    with _open_lock:
        dirs = list(_open.values())
        _open.clear()
    first: Optional[StorageError] = None
    for od in dirs:
        try:
            od.close()
        except StorageError as err:
            first = first or err
    if first is not None:
        raise first


@contextmanager
def session() -> Iterator[None]:
    """Every output folder opened inside is uploaded before this returns, also when the command fails."""
    try:
        yield
    except BaseException:
        try:
            close_all()
        except StorageError as err:  # the command's own error is the one to report; this one is logged
            log.error("%s", err.message)
        raise
    close_all()
