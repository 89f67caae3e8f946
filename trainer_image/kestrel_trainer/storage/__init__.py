"""Object storage: `s3://bucket/prefix` wherever a command takes a path (docs/storage.md).

Everything path-like goes through here; a local path comes back unchanged, so local runs do exactly what they did.
- inputs (datasets, models, classmaps, images): `input_path` stages the object or prefix into the local cache
  and returns the local copy (listed once, content-addressed by ETag and size: nothing is downloaded twice); a
  training dataset is staged lazily: listed, and each rank fetches (`materialize`) only the files it reads;
- outputs (results folders, model files): `output_dir` / `output_file` return a local mirror path whose files are
  uploaded as they are written; `session()` (around every CLI command) uploads the rest before the command ends;
- `fetch` brings one more object of an open output folder in (the checkpoint a resume needs), `remote_names`
  lists a folder of it as the bucket has it, `describe` turns mirror paths in a message back into URLs.
"""

from __future__ import annotations

import os
from typing import Optional

from kestrel_trainer.storage import cache, outputs
from kestrel_trainer.storage.s3 import StorageError, is_url

__all__ = ["StorageError", "UrlLogFilter", "describe", "display", "fetch", "input_if_exists", "input_path", "is_url",
           "materialize", "output_dir", "output_file", "pending_under", "remote_exists", "remote_names", "session",
           "url_of"]

session = outputs.session


def _url(path: Optional[str]) -> Optional[str]:
    """The URL `path` names: itself when it is one, the URL of a mirror path, else None."""
    if not path:
        return None
    if is_url(path):
        return path
    try:
        return cache.url_of(path)
    except StorageError:  # a malformed AWS_ENDPOINT_URL: no mirror, so a local path is just that
        return None


def url_of(path: str) -> Optional[str]:
    return _url(path)


def input_path(path: Optional[str], lazy: bool = False) -> Optional[str]:
    """A local path to read `path` from: an s3:// file or prefix is staged into the cache; anything else as it is.
    lazy (a training dataset): the prefix is listed and its folders laid out, and each file is fetched only when
    `materialize` is called with it (a rank fetches its shard; docs/storage.md)."""
    if not is_url(path):
        return path
    return cache.stage(path, lazy)


def materialize(paths) -> int:  # noqa: ANN001 - any iterable of local paths
    """Fetch those of `paths` that a lazy `input_path` listed but has not fetched yet; returns how many."""
    return cache.materialize(paths)


def pending_under(folder: str) -> list[str]:
    """Files under local `folder` that a lazy `input_path` listed and has not fetched yet (for folder scans)."""
    return cache.pending_under(folder)


def output_dir(path: Optional[str], upload: bool = True, reconcile: bool = True) -> Optional[str]:
    """The local folder to write `path`'s files into: for an s3:// URL (or its mirror path) a mirror folder whose
    files are uploaded as they are written (upload=False: other ranks, which only read it); else `path` itself."""
    url = _url(path)
    if url is None:
        return path
    return outputs.open_dir(url, upload=upload, reconcile=reconcile).local


def output_file(path: Optional[str]) -> Optional[str]:
    """The local path to write the file `path` to; for s3:// its folder is an output folder (uploaded), and an
    object already there is brought in first, so "exists: pass --force" and "reuse the cache file" work as locally."""
    url = _url(path)
    if url is None:
        return path
    parent, _, name = url.rstrip("/").rpartition("/")
    if not name or parent in ("s3:", "s3:/"):
        raise StorageError(f"{url}: an output file needs s3://bucket/[prefix/]name")
    outputs.open_dir(parent + "/")
    local = cache.local_path(cache.s3.parse(url))
    found = outputs.find(local)
    if found is not None:
        found[0].fetch(found[1])
    return local


def fetch(path: str) -> bool:
    """Make sure mirror path `path` of an open output folder is here (downloaded from the bucket if needed).
    True when the file is there; a path outside the mirror is only checked for existence."""
    found = outputs.find(path)
    if found is not None and not os.path.exists(path):
        found[0].fetch(found[1])
    return os.path.exists(path)


def remote_names(local_dir: str) -> Optional[list[str]]:
    """Names of the objects directly inside mirror folder `local_dir` as the bucket had them when its output
    folder was opened; None when `local_dir` is not in an open output folder."""
    found = outputs.find(local_dir)
    if found is None:
        return None
    od, rel = found
    prefix = "" if rel == "." else rel.rstrip("/") + "/"
    return sorted(r[len(prefix):] for r in od.remote if r.startswith(prefix) and "/" not in r[len(prefix):])


def display(path: Optional[str]) -> Optional[str]:
    """The s3:// URL a mirror path stands for, or the path itself (for records such as summary.json)."""
    return _url(path) or path


class UrlLogFilter:
    """A logging filter that writes mirror paths in log lines as their s3:// URLs."""

    def filter(self, record) -> bool:  # noqa: ANN001 - logging.LogRecord
        message = record.getMessage()
        described = describe(message)
        if described != message:
            record.msg, record.args = described, ()
        return True


def describe(text: str) -> str:
    """Mirror paths in `text` written as their s3:// URLs (for error lines)."""
    try:
        return cache.describe(text)
    except StorageError:
        return text


def input_if_exists(path: str) -> Optional[str]:
    """Stage the s3:// object `path` when the bucket has it; None when it has not."""
    from kestrel_trainer.storage import s3

    if s3.stat(s3.parse(path)) is None:
        return None
    return cache.stage_file(path)


def remote_exists(local: str) -> bool:
    """Whether the bucket has an object at mirror path `local` of an open output folder, or under it."""
    found = outputs.find(local)
    if found is None:
        return False
    od, rel = found
    return any(r == rel or r.startswith(rel.rstrip("/") + "/") for r in od.remote)
