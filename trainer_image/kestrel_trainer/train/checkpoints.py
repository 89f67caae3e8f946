"""Checkpoint names, discovery and the resume decision.

`weights/<arch>_<epoch:03d>.tlt` after each completed epoch (the original's names, e.g. resnet_080.tlt;
`.hdf5` when no key is given). A run stopped mid-epoch (SIGTERM, preemption) writes
`<arch>_<epoch:03d>_step<steps:06d>.tlt`: `steps` batches of epoch `epoch` are done. Resume picks the
checkpoint furthest along; ordering needs no steps-per-epoch: a partial epoch e sorts before a
completed epoch e.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

from kestrel_trainer.errors import KestrelError

_NAME = re.compile(r"^(?P<arch>[A-Za-z0-9_]+?)_(?P<epoch>\d{3,})(?:_step(?P<step>\d{6,}))?\.(?P<ext>tlt|hdf5)$")


@dataclass(frozen=True)
class Checkpoint:
    path: str
    epoch: int  # completed: epochs done; partial: the epoch in progress (1-based)
    step: Optional[int] = None  # batches done within `epoch` for a partial checkpoint
    from_pretrained: bool = False  # the original's resume: --init_epoch N with pretrained_model_path as the file

    @property
    def epochs_done(self) -> int:
        return self.epoch if self.step is None else self.epoch - 1

    @property
    def steps_into_epoch(self) -> int:
        return 0 if self.step is None else self.step

    @property
    def order(self) -> tuple[int, int]:
        return (self.epochs_done, self.steps_into_epoch)


def suffix(key: Optional[str]) -> str:
    return ".tlt" if key else ".hdf5"


def epoch_path(weights_dir: str, arch: str, epoch: int, key: Optional[str]) -> str:
    return os.path.join(weights_dir, f"{arch}_{epoch:03d}{suffix(key)}")


def partial_path(weights_dir: str, arch: str, epoch: int, step: int, key: Optional[str]) -> str:
    return os.path.join(weights_dir, f"{arch}_{epoch:03d}_step{step:06d}{suffix(key)}")


def find_checkpoints(weights_dir: str, arch: str, names: Optional[list[str]] = None) -> list[Checkpoint]:
    """Checkpoints of `arch` in the folder (or among `names` in it), oldest progress first (temp files are
    ignored). A folder of an s3:// results folder also lists the bucket's (docs/storage.md)."""
    if names is None:
        from kestrel_trainer import storage

        names = os.listdir(weights_dir) if os.path.isdir(weights_dir) else []
        names = sorted(set(names) | set(storage.remote_names(weights_dir) or ()))
    found = []
    for name in names:
        m = _NAME.match(name)
        if m and m.group("arch") == arch:
            step = m.group("step")
            found.append(Checkpoint(os.path.join(weights_dir, name), int(m.group("epoch")),
                                    int(step) if step else None))
    return sorted(found, key=lambda c: c.order)


def fetch_from_storage(weights_dir: str, arch: str, init_epoch: Optional[int]) -> None:
    """A results folder in object storage (docs/storage.md): bring in the one checkpoint a resume would start
    from, as the bucket lists them (the newest, or --init_epoch's); nothing for a local folder."""
    from kestrel_trainer import storage

    names = storage.remote_names(weights_dir)
    if not names:
        return
    found = find_checkpoints(weights_dir, arch, names)
    if init_epoch is not None:
        found = [c for c in found if c.step is None and c.epoch == init_epoch - 1]
    if found:
        storage.fetch(found[-1].path)


def choose_resume(weights_dir: str, arch: str, init_epoch: Optional[int],
                  pretrained_model_path: str = "") -> Optional[Checkpoint]:
    """Which checkpoint a run starts from.

    - no --init_epoch: the newest checkpoint in the results folder, if any (automatic resume);
    - --init_epoch 1: a new run;
    - --init_epoch N: the results folder's epoch N-1 checkpoint; when the folder has none, the spec's
      pretrained_model_path is that checkpoint, as in the original (which resumes only that way). When both
      exist, the results folder's checkpoint wins: it is the same run, optimizer state included.
    """
    found = find_checkpoints(weights_dir, arch)
    if init_epoch is None:
        return found[-1] if found else None
    if init_epoch < 1:
        raise KestrelError(f"--init_epoch must be >= 1, got {init_epoch}", exit_code=2)
    if init_epoch == 1:
        return None
    wanted = [c for c in found if c.step is None and c.epoch == init_epoch - 1]
    if not wanted and pretrained_model_path:
        return Checkpoint(pretrained_model_path, init_epoch - 1, from_pretrained=True)
    if not wanted:
        have = ", ".join(os.path.basename(c.path) for c in found) or "none"
        raise KestrelError(
            f"--init_epoch {init_epoch} needs the epoch {init_epoch - 1} checkpoint "
            f"{arch}_{init_epoch - 1:03d}.tlt in {weights_dir} (found: {have}) or, as in the original, "
            "train_config.pretrained_model_path naming that checkpoint",
            exit_code=2,
        )
    return wanted[0]
