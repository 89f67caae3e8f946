"""The local side of object storage: a content-addressed object cache and the mirror folders the commands read.

- `CACHE/objects/<ETag>-<size>`: each object version downloaded once, whatever URL or run asked for it.
- `CACHE/s3/<endpoint>/<bucket>/<key>`: mirror folders. A staged dataset is a tree of hard links into the
  object cache, so the rest of Kestrel (folder scans, the bad-image check, the image cache) reads plain files.

CACHE is $KESTREL_CACHE_DIR, else $XDG_CACHE_HOME/kestrel, else ~/.cache/kestrel. A re-run, a retry or another
run on the same data downloads nothing it already has (same ETag and size).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator, Optional

from kestrel_trainer.storage import s3
from kestrel_trainer.storage.s3 import ObjectInfo, StorageError, Url

# Where s3:// inputs are staged and s3:// results mirrored (contract.CACHE_DIR_ENV: the operator points it at an
# emptyDir for runs with spec.storage).
CACHE_DIR_ENV = "KESTREL_CACHE_DIR"

log = logging.getLogger("kestrel.storage")

MANIFEST = ".kestrel-staged.json"
DOWNLOAD_THREADS = 8


def cache_root() -> str:
    root = os.environ.get(CACHE_DIR_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kestrel")
    return os.path.abspath(root)


def mirror_base() -> str:
    """CACHE/s3/<endpoint host_port>: the mirror of this endpoint's buckets."""
    host, _, _ = s3.endpoint()
    return os.path.join(cache_root(), "s3", re.sub(r"[^A-Za-z0-9.-]", "_", host))


def local_path(url: Url) -> str:
    return os.path.join(mirror_base(), url.bucket, *[p for p in url.key.split("/") if p])


def url_of(path: str) -> Optional[str]:
    """The s3:// URL a mirror path stands for, or None for any other path."""
    base = mirror_base() + os.sep
    full = os.path.abspath(path)
    if not full.startswith(base):
        return None
    return s3.SCHEME + full[len(base):].replace(os.sep, "/")


def describe(text: str) -> str:
    """`text` with mirror paths written as the URLs they stand for (error lines name the bucket and key)."""
    base = mirror_base() + os.sep
    return text.replace(base, s3.SCHEME) if base in text else text


def _object_path(info: ObjectInfo) -> str:
    etag = re.sub(r"[^A-Za-z0-9-]", "_", info.etag) or "noetag"
    return os.path.join(cache_root(), "objects", etag[:2], f"{etag}-{info.size}")


@contextmanager
def locked(path: str) -> Iterator[None]:
    """An exclusive lock on `path` (ranks on one node staging the same data take turns; the second reuses)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached(url: Url, info: ObjectInfo) -> tuple[str, bool]:
    """The cache file of this object version, downloaded if missing; (path, downloaded now)."""
    path = _object_path(info)
    try:
        if os.path.getsize(path) == info.size:
            return path, False
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".dl-")
    os.close(fd)
    try:
        s3.download(url, info, tmp)
        os.chmod(tmp, 0o444)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path, True


def add_to_cache(path: str, info: ObjectInfo) -> None:
    """Record a file this process uploaded as that object version (a hard link: no copy, nothing to download)."""
    target = _object_path(info)
    if os.path.exists(target) or not info.etag:
        return
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.link(path, target)
    except OSError:
        pass  # another file system or a race: the cache only saves a download


def place(source: str, target: str, copy: bool = False) -> None:
    """Put `source` at `target` atomically: a hard link (a copy when asked, or across file systems)."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{os.getpid()}.link")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    if not copy:
        try:
            os.link(source, tmp)
        except OSError:
            copy = True
    if copy:
        import shutil

        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _relative(prefix: str, key: str) -> Optional[str]:
    rel = key[len(prefix):]
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("..", ".") for p in parts):
        return None
    return rel


def stage_dir(url_text: str, lazy: bool = False) -> str:
    """Bring every object under `url_text` (a folder prefix) into its mirror folder; returns that folder.

    Listed once; each object comes from the object cache (downloaded only when that ETag and size is not there
    yet); local files not in the listing are removed. Folder markers (keys ending in "/") become empty folders,
    so an empty class folder is reported as the local check reports one.

    lazy: list and lay out the folders, but leave the files this mirror does not hold yet to `materialize`, called
    with the paths a process is about to read (a training rank: its shard; data/check.py). `pending_under` tells
    the folder scan (data/folders.py) which files the listing has, so every rank sees the whole file list.
    """
    url = s3.parse(url_text if url_text.endswith("/") else url_text + "/")
    start = time.monotonic()
    listing = list(s3.list_objects(url))
    if not listing:
        raise StorageError(f"{url}: no objects under this prefix at {s3.endpoint_name()}")
    prefix = url.folder_prefix
    root = local_path(url)
    with locked(root.rstrip(os.sep) + ".lock"):
        os.makedirs(root, exist_ok=True)
        manifest_path = os.path.join(root, MANIFEST)
        try:
            with open(manifest_path, encoding="utf-8") as fh:
                old = json.load(fh)
        except (OSError, ValueError):
            old = {}
        wanted: dict[str, ObjectInfo] = {}
        folders: set[str] = set()
        for info in listing:
            rel = _relative(prefix, info.key)
            if rel is None:
                log.warning("%s%s: skipped (not a usable file name)", s3.SCHEME, f"{url.bucket}/{info.key}")
                continue
            if rel.endswith("/"):
                folders.add(rel.rstrip("/"))
            else:
                wanted[rel] = info
        todo = []
        for rel, info in wanted.items():
            target = os.path.join(root, *rel.split("/"))
            if old.get(rel) == [info.etag, info.size] and os.path.isfile(target) \
                    and os.path.getsize(target) == info.size:
                continue
            todo.append((rel, info, target))
        downloaded = _fetch_all(url.bucket, todo) if not lazy else (0, 0)
        for rel in folders | {rel.rpartition("/")[0] for rel in wanted if "/" in rel}:
            os.makedirs(os.path.join(root, *rel.split("/")), exist_ok=True)
        _remove_others(root, set(wanted), folders)
        pending = {target: (rel, info) for rel, info, target in todo} if lazy else {}
        for target in pending:  # an older version of a file left for later must not be read meanwhile
            if os.path.lexists(target):
                os.unlink(target)
        _write_manifest(root, {rel: [i.etag, i.size] for rel, i in wanted.items()
                               if os.path.join(root, *rel.split("/")) not in pending})
        with _PENDING_LOCK:
            _PENDING[root] = (url, pending)
    total = sum(i.size for i in wanted.values())
    if lazy:
        log.info("listed %s: %d objects (%.1f MiB), %d here already, %d left to fetch as they are read, in %.1f s "
                 "(cache %s)", url, len(wanted), total / 2**20, len(wanted) - len(pending), len(pending),
                 time.monotonic() - start, cache_root())
    else:
        log.info("staged %s: %d objects (%.1f MiB), %d downloaded now (%.1f MiB), %d from the cache, in %.1f s "
                 "(cache %s)", url, len(wanted), total / 2**20, downloaded[0], downloaded[1] / 2**20,
                 len(wanted) - downloaded[0], time.monotonic() - start, cache_root())
    return root


# Lazily staged mirror folders of this process: root -> (its URL, {local path: (relative key, object version)})
# of the listed files not fetched yet (stage_dir(lazy=True), materialize, pending_under).
_PENDING: dict[str, tuple[Url, dict[str, tuple[str, ObjectInfo]]]] = {}
_PENDING_LOCK = threading.Lock()


def _fetch_all(bucket: str, jobs: list[tuple[str, ObjectInfo, str]]) -> tuple[int, int]:
    """Each (relative key, object version, mirror path) from the object cache, downloading what it lacks, in
    DOWNLOAD_THREADS threads; (objects downloaded now, their bytes)."""
    downloaded = [0, 0]

    def fetch(job: tuple[str, ObjectInfo, str]) -> None:
        _rel, info, target = job
        path, fresh = cached(Url(bucket, info.key), info)
        if fresh:
            downloaded[0] += 1
            downloaded[1] += info.size
        place(path, target)

    with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
        list(pool.map(fetch, jobs))
    return downloaded[0], downloaded[1]


def _write_manifest(root: str, entries: dict[str, list]) -> None:
    manifest_path = os.path.join(root, MANIFEST)
    tmp = manifest_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(entries, fh)
    os.replace(tmp, manifest_path)


def pending_under(folder: str) -> list[str]:
    """Local paths under `folder` that a lazily staged mirror listed but has not fetched yet (else [])."""
    base = os.path.abspath(folder).rstrip(os.sep) + os.sep
    with _PENDING_LOCK:
        return [path for _url, pending in _PENDING.values() for path in pending if path.startswith(base)]


def materialize(paths) -> int:  # noqa: ANN001 - any iterable of local paths
    """Fetch the files among `paths` that a lazily staged mirror listed but does not hold yet (from the object cache,
    downloading what it lacks); other paths are left alone. Returns how many were fetched."""
    wanted = {os.path.abspath(p) for p in paths}
    with _PENDING_LOCK:
        work = {root: (url, [(rel, info, path) for path, (rel, info) in pending.items() if path in wanted])
                for root, (url, pending) in _PENDING.items()}
    fetched = 0
    for root, (url, jobs) in work.items():
        if not jobs:
            continue
        start = time.monotonic()
        with locked(root.rstrip(os.sep) + ".lock"):
            n, size = _fetch_all(url.bucket, jobs)
            manifest_path = os.path.join(root, MANIFEST)
            try:
                with open(manifest_path, encoding="utf-8") as fh:
                    entries = json.load(fh)
            except (OSError, ValueError):
                entries = {}
            entries.update({rel: [info.etag, info.size] for rel, info, _path in jobs})
            _write_manifest(root, entries)
        with _PENDING_LOCK:
            for _rel, _info, path in jobs:
                _PENDING[root][1].pop(path, None)
        fetched += len(jobs)
        log.info("fetched %d of the files of %s for this process: %d downloaded now (%.1f MiB), %d from the cache, "
                 "in %.1f s", len(jobs), url, n, size / 2**20, len(jobs) - n, time.monotonic() - start)
    return fetched


def _remove_others(root: str, keep_files: set[str], keep_folders: set[str]) -> None:
    """Delete files (and then empty folders) under root that the listing does not have."""
    keep_dirs = set(keep_folders)
    for rel in keep_files:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            keep_dirs.add("/".join(parts[:i]))
    for folder, _dirs, files in os.walk(root, topdown=False):
        rel_folder = os.path.relpath(folder, root).replace(os.sep, "/")
        rel_folder = "" if rel_folder == "." else rel_folder
        for name in files:
            rel = f"{rel_folder}/{name}" if rel_folder else name
            if rel == MANIFEST or rel in keep_files:
                continue
            os.unlink(os.path.join(folder, name))
        if rel_folder and rel_folder not in keep_dirs and not os.listdir(folder):
            os.rmdir(folder)


def stage_file(url_text: str) -> str:
    """Bring one object into its mirror path (from the object cache when that version is there); returns the path."""
    url = s3.parse(url_text)
    info = s3.stat(url)
    if info is None:
        raise StorageError(f"{url}: no such object at {s3.endpoint_name()}")
    target = local_path(url)
    path, fresh = cached(url, info)
    if not same_file(path, target):
        place(path, target)
    log.info("staged %s (%.1f MiB%s)", url, info.size / 2**20, ", downloaded" if fresh else ", from the cache")
    return target


def stage(url_text: str, lazy: bool = False) -> str:
    """A file or a folder prefix, whichever `url_text` names (a trailing "/" means a folder); lazy: stage_dir's."""
    url = s3.parse(url_text)
    if not url.key or url.key.endswith("/"):
        return stage_dir(url_text, lazy)
    if s3.stat(url) is not None:
        return stage_file(url_text)
    return stage_dir(url_text, lazy)
