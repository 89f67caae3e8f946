"""Find images that fail to decode before a long run starts, not hours into it.

The scan uses the same decoder as the training pipeline (tf.io.decode_image), in a parallel tf.data
pass, so "passes the check" means "the pipeline can read it". Training refuses to start when any
file is bad unless skip_bad_images is set, in which case the files are left out and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

from kestrel_trainer.errors import DataError

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
    import tensorflow as tf

    if not paths:
        return []
    calls = n_workers if n_workers and n_workers > 0 else tf.data.AUTOTUNE

    def probe(path: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(tf.io.read_file(path), channels=0, expand_animations=False)
        tf.debugging.assert_positive(tf.size(image), message="image has no pixels")
        return path

    ds = tf.data.Dataset.from_tensor_slices(list(paths))
    ds = ds.map(probe, num_parallel_calls=calls, deterministic=False).ignore_errors()
    good = {p.decode() for p in ds.batch(1024).as_numpy_iterator() for p in p}
    return [BadImage(p, _reason(p)) for p in paths if p not in good]


def describe_bad_images(bad: Sequence[BadImage], limit: int = MAX_LISTED) -> str:
    """One line per bad file (up to `limit`), then how many more."""
    lines = [f"{b.path}: {b.reason}" for b in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"... and {len(bad) - limit} more")
    return "\n".join(lines)


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
    bad = find_bad_images(files, n_workers)
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
