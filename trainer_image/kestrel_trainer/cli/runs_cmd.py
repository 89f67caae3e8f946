"""`kestrel runs remove PATH...`: delete old run folders (the operator keeps only `spec.keepRuns` of them).

The operator gives each run its own folder RESULTS_MOUNT/runs/<16 lowercase hex> (contract.RUNS_DIR,
contract.RUN_ID) and runs this command in the new run's launcher pod. It deletes nothing but such folders:
every PATH is checked first and one that is not a run folder (another name, another parent, a symbolic link,
a file) refuses the whole command, so a wrong argument never costs a single file. A folder already gone is
fine (a previous attempt removed it). Symbolic links inside a folder are removed, never followed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import stat
from collections.abc import Sequence
from typing import Optional

from kestrel_trainer.cli.common import setup_logging
from kestrel_trainer.errors import KestrelError
from kestrel_trainer.spec.contract import RUN_ID, RUNS_DIR

ORDER = 80
log = logging.getLogger("kestrel.runs")


def refusal(path: str) -> Optional[str]:
    """Why `path` may not be removed as a run folder, or None when it may (or is already gone)."""
    full = os.path.abspath(path)
    name, parent = os.path.basename(full), os.path.basename(os.path.dirname(full))
    if not RUN_ID.fullmatch(name):
        return f"{path}: not a run folder (its name must be 16 lowercase hex characters)"
    if parent != RUNS_DIR:
        return f"{path}: not a run folder (its parent folder must be named {RUNS_DIR})"
    if os.path.islink(full):
        return f"{path}: is a symbolic link, not a run folder"
    if os.path.lexists(full) and not os.path.isdir(full):
        return f"{path}: is not a folder"
    return None


def folder_contents(path: str) -> tuple[int, int]:
    """(files, bytes) under `path`: every entry that is not a folder counts as a file (symbolic links too,
    not followed); bytes are the regular files' sizes."""
    files = size = 0
    for folder, dirs, names in os.walk(path, followlinks=False):
        for name in dirs + names:
            info = os.lstat(os.path.join(folder, name))
            if stat.S_ISDIR(info.st_mode):
                continue
            files += 1
            size += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return files, size


def human_size(n: int) -> str:
    """Bytes in binary units: 512 B, 1.5 KiB, 12.3 MiB, 2.0 GiB."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def remove_run_folders(paths: Sequence[str]) -> None:
    """Check every path, then remove each folder tree, logging one line per path."""
    refused = [reason for reason in map(refusal, paths) if reason]
    if refused:
        raise KestrelError(f"runs remove: {'; '.join(refused)}; nothing was removed", exit_code=2)
    for path in paths:
        if not os.path.lexists(path):
            log.info("run folder %s: already gone", path)
            continue
        files, size = folder_contents(path)
        try:
            shutil.rmtree(path)
        except OSError as err:
            raise KestrelError(f"runs remove: cannot remove {path}: {err.strerror or err}") from None
        log.info("removed run folder %s (%d files, %s)", path, files, human_size(size))


def run_remove(args: argparse.Namespace) -> int:
    setup_logging(args.log_file)
    remove_run_folders(args.paths)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("runs", help="manage run folders (RESULTS/runs/<id>)")
    sub = parser.add_subparsers(dest="runs_command", metavar="ACTION")
    sub.required = True
    rm = sub.add_parser("remove", help="delete run folders RESULTS/runs/<16 lowercase hex> (nothing else)")
    rm.add_argument("paths", nargs="+", metavar="PATH", help="run folder to delete")
    rm.add_argument("--log_file", default=None, help="also write the log lines to this file")
    rm.set_defaults(func=run_remove)
