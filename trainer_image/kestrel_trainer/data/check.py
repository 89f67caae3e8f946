"""Find images that fail to decode before a long run starts, not hours into it.

The scan uses the same decoder as the training pipeline (tf.io.decode_image), in a parallel tf.data
pass, so "passes the check" means "the pipeline can read it". Training refuses to start when any
file is bad unless skip_bad_images is set, in which case the files are left out and counted. For
training, the same pass keeps the rank's decoded images for the in-memory cache (data/decoded.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from kestrel_trainer.data.sharding import shard_indices
from kestrel_trainer.errors import DataError

if TYPE_CHECKING:
    from kestrel_trainer.data.decoded import DecodedImages
    from kestrel_trainer.data.jpeg_scale import JpegScale

MAX_LISTED = 20


@dataclass(frozen=True)
class BadImage:
    path: str
    reason: str


def _reason(path: str) -> str:
    """Decode one file eagerly to get TensorFlow's message for it (only called for failing files)."""
    import tensorflow as tf

    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=0, expand_animations=False)
        if int(tf.size(image)) == 0:
            return "image has no pixels"
    except (tf.errors.OpError, ValueError) as err:
        message = getattr(err, "message", str(err)) or type(err).__name__
        return message.strip().splitlines()[0]
    return "failed to decode"


def find_bad_images(paths: Sequence[str], n_workers: Optional[int] = None) -> list[BadImage]:
    """Every file in `paths` that cannot be read or decoded (or has no pixels), in input order."""
    from kestrel_trainer.data.decoded import decode_pass

    failed, _ = decode_pass(paths, n_workers=n_workers)
    return _bad_images(paths, failed)


def _bad_images(paths: Sequence[str], failed: Sequence[int]) -> list[BadImage]:
    return [BadImage(paths[i], _reason(paths[i])) for i in failed]


def describe_bad_images(bad: Sequence[BadImage], limit: int = MAX_LISTED) -> str:
    """One line per bad file (up to `limit`), then how many more."""
    lines = [f"{b.path}: {b.reason}" for b in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"... and {len(bad) - limit} more")
    return "\n".join(lines)


def _apply_policy(files: Sequence[str], labels: Sequence[int], bad: list[BadImage], skip_bad_images: bool,
                  log: Callable[[str], None]) -> tuple[list[str], list[int], int]:
    if not bad:
        return list(files), list(labels), 0
    if not skip_bad_images:
        raise DataError(
            f"{len(bad)} image(s) cannot be decoded (fix or remove them, or pass --skip-bad-images; "
            f"`kestrel dataset check ROOT` lists them all):\n{describe_bad_images(bad)}")
    bad_paths = {b.path for b in bad}
    kept = [(f, y) for f, y in zip(files, labels, strict=True) if f not in bad_paths]
    log(f"skipping {len(bad)} image(s) that cannot be decoded:\n{describe_bad_images(bad)}")
    return [f for f, _ in kept], [y for _, y in kept], len(bad)


def exclude_bad_images(
    files: Sequence[str],
    labels: Sequence[int],
    *,
    skip_bad_images: bool,
    n_workers: Optional[int] = None,
    log: Callable[[str], None] = print,
) -> tuple[list[str], list[int], int]:
    """(files, labels, n_skipped) with undecodable files removed, or DataError listing them.

    Refusing is the default because a silently shrinking dataset hides real problems (a broken
    copy, a wrong mount); --skip-bad-images opts in to training on the rest, and the count is logged.
    """
    return _apply_policy(files, labels, find_bad_images(files, n_workers), skip_bad_images, log)


def exclude_bad_images_and_cache(
    files: Sequence[str],
    labels: Sequence[int],
    *,
    skip_bad_images: bool,
    channels: int,
    rank: int = 0,
    size: int = 1,
    cache: str = "auto",
    gather: Optional[Callable[[list[int]], list[int]]] = None,
    n_workers: Optional[int] = None,
    log: Callable[[str], None] = print,
    info: Callable[[str], None] = print,
    scale: Optional[JpegScale] = None,
) -> tuple[list[str], list[int], int, Optional[DecodedImages]]:
    """exclude_bad_images, plus rank `rank`'s shard of the kept files decoded (data/decoded.py) when the
    cache mode and memory allow, from the same decoding pass: checking and caching cost one decode.

    gather: an all-gather over the ranks (each rank's list in, all of them concatenated out). With it,
    each rank decodes only its own shard and the ranks exchange the indices that failed, so the check
    costs 1/size of the data set per rank instead of all of it, and every rank still drops the same files.
    Only when bad files are skipped does the shard move (the kept list is shorter), and then the new
    shard is decoded in a second pass. `log` gets the skipped files, `info` what the cache holds. scale: the
    training options' jpeg_scale (cached JPEGs kept at the scale the per-epoch decoding would use).
    """
    from kestrel_trainer.data.decoded import cache_budget, decode_pass, decode_shard, log_cached
    from kestrel_trainer.storage import materialize

    budget = cache_budget(cache, size)
    shard = shard_indices(len(files), rank, size) if len(files) >= size else np.arange(len(files))
    if gather is not None and size > 1:
        mine = [files[i] for i in shard]
        materialize(mine)  # a dataset staged lazily from object storage: this rank fetches only its shard
        failed_mine, decoded = decode_pass(mine, channels, np.arange(len(mine)) if budget != 0 else None,
                                           max_bytes=budget, n_workers=n_workers, log=info, scale=scale)
        failed = sorted(set(gather([int(shard[i]) for i in failed_mine])))
    else:
        materialize(files)
        failed, decoded = decode_pass(files, channels, shard if budget != 0 else None, max_bytes=budget,
                                      n_workers=n_workers, log=info, scale=scale)
    kept_files, kept_labels, skipped = _apply_policy(files, labels, _bad_images(files, failed), skip_bad_images, log)
    if skipped:  # the shard moved: fetch what it now holds (lazily staged data; nothing for local folders)
        materialize([kept_files[i] for i in shard_indices(len(kept_files), rank, size)] if len(kept_files) >= size
                    else kept_files)
    if skipped and budget != 0:  # the shard moved: what was kept (if anything) is the wrong set
        decoded = decode_shard(kept_files, rank, size, channels, cache, n_workers=n_workers, log=info, scale=scale)
    else:
        log_cached(decoded, info)
    return kept_files, kept_labels, skipped, decoded

