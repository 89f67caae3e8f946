"""Start P training ranks on this machine when `kestrel train --num_processes P` is not already under a launcher.

As in the original, `kestrel train --gpus 2` on a workstation starts its own ranks. Under an MPIJob (or any
`mpirun`/`horovodrun`) the ranks already exist and join the job (distributed.launched_world); this module
is only for the first case. Ranks are started with `horovodrun --gloo` (no MPI installation needed) or,
with KESTREL_LAUNCHER=mpi, with Open MPI's `mpirun`. The key travels in the environment (KESTREL_KEY),
never on a command line, where any user of the machine could read it.

Fail fast: both launchers stop every rank as soon as one exits with an error or dies (a dead rank would
otherwise leave the others waiting in an allreduce forever); this module then says which checkpoint a
rerun resumes from.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from typing import Mapping, Optional, Sequence

from kestrel_trainer.errors import KestrelError
from kestrel_trainer.spec.contract import KEY_ENV
from kestrel_trainer.spec.parallelism import FLAGS, parallelism

log = logging.getLogger("kestrel.train")

LAUNCHER_ENV = "KESTREL_LAUNCHER"  # "gloo" (default: horovodrun --gloo) or "mpi" (mpirun)


def resolve_processes(args: argparse.Namespace) -> int:
    """Ranks to run: --num_processes, where -1 (the original's default) or absent means as many as --gpus.
    --gpus 0 is CPU only (what the operator renders for `gpus: 0`): -1 then means one process, and
    `--gpus 0 --num_processes P` runs P CPU ranks. The numbers must obey the rule the operator checks too
    (kestrel_trainer.spec.parallelism); --gpus below --num_processes (the default --gpus 1 with `-np 2`) is
    read as one device per rank, as the training loop reads it. --gpus not given (None, resolved later by
    train.devices.check) counts as the original's default 1 here: the rank count is the same either way."""
    gpus = getattr(args, "gpus", 1)
    n = getattr(args, "num_processes", -1)
    gpus = 1 if gpus is None else gpus
    processes = None if n is None or n == -1 else n
    if gpus > 0 and processes is not None and 0 < gpus < processes:
        gpus = processes
    rule = parallelism(gpus, processes, terms=FLAGS)
    if not rule.ok:
        raise KestrelError(rule.message(), exit_code=2)
    return rule.ranks


def rank_arguments(args: argparse.Namespace) -> list[str]:
    """The `kestrel train` arguments every rank runs with: the caller's, minus the key."""
    out = ["train", "-e", args.experiment_spec, "-r", args.results_dir]
    if args.gpus is not None:  # resolved by train.devices.check before the ranks start: each rank checks its share
        out += ["--gpus", str(args.gpus)]
    out += ["--num_processes", str(resolve_processes(args))]
    if args.init_epoch is not None:
        out += ["--init_epoch", str(args.init_epoch)]
    if args.classmap:
        out += ["--classmap", args.classmap]
    if args.skip_bad_images:
        out.append("--skip-bad-images")
    if args.gpu_index:
        out += ["--gpu_index", *map(str, args.gpu_index)]
    if args.use_amp:
        out.append("--use_amp")
    if args.log_file:
        out += ["--log_file", args.log_file]
    if args.verbose:
        out.append("--verbose")
    if getattr(args, "model_format", "kestrel") != "kestrel":
        out += ["--format", args.model_format]
    if getattr(args, "image_cache", "auto") != "auto":
        out += ["--image-cache", args.image_cache]
    if getattr(args, "evaluate", False):
        out.append("--evaluate")  # rank 0 evaluates after training
    return out


def _tool(name: str) -> str:
    """A launcher from this Python's environment first (the venv's horovodrun), then PATH."""
    local = os.path.join(os.path.dirname(sys.executable), name)
    found = local if os.access(local, os.X_OK) else shutil.which(name)
    if not found:
        hint = "install Horovod with scripts/build_horovod.sh" if name == "horovodrun" else \
            "install Open MPI (Debian: openmpi-bin)"
        raise KestrelError(f"cannot start ranks: '{name}' not found; {hint}", exit_code=2)
    return found


def launch_command(n: int, rank_argv: Sequence[str], kind: str = "gloo", is_root: bool = False,
                   forward_key: bool = False) -> list[str]:
    """The launcher command line (tool by name) starting n local ranks of `python -m kestrel_trainer.cli.main ARGS`."""
    rank_cmd = [sys.executable, "-m", "kestrel_trainer.cli.main", *rank_argv]
    if kind == "gloo":
        return ["horovodrun", "-np", str(n), "-H", f"localhost:{n}", "--gloo", *rank_cmd]
    if kind == "mpi":
        cmd = ["mpirun", "-np", str(n), "--bind-to", "none", "-map-by", "slot", "-x", "PATH"]
        if forward_key:  # the variable's name only: mpirun copies its value from our environment
            cmd += ["-x", KEY_ENV]
        if is_root:
            cmd.append("--allow-run-as-root")
        return [*cmd, *rank_cmd]
    raise KestrelError(f"{LAUNCHER_ENV}={kind!r}: use 'gloo' or 'mpi'", exit_code=2)


def launch(n: int, rank_argv: Sequence[str], key: Optional[str], results_dir: str, arch: str,
           env: Optional[Mapping[str, str]] = None) -> int:
    """Run n ranks to completion; 0 on success, else the failure is raised as a one-line KestrelError."""
    child_env = dict(os.environ if env is None else env)
    if key:
        child_env[KEY_ENV] = key
    kind = child_env.get(LAUNCHER_ENV, "gloo")
    cmd = launch_command(n, rank_argv, kind, is_root=hasattr(os, "getuid") and os.getuid() == 0,
                         forward_key=bool(child_env.get(KEY_ENV)))
    cmd[0] = _tool(cmd[0])
    log.info("starting %d ranks with %s", n, os.path.basename(cmd[0]))
    proc = subprocess.run(cmd, env=child_env, check=False)
    if proc.returncode == 0:
        return 0
    from kestrel_trainer.train import checkpoints as ckpt

    found = ckpt.find_checkpoints(os.path.join(os.path.abspath(results_dir), "weights"), arch)
    complete = [c for c in found if c.step is None]
    where = (f"the last complete checkpoint is {complete[-1].path}" if complete
             else "no epoch was completed yet")
    how = "signal" if proc.returncode < 0 else "exit code"
    message = (f"a rank failed, so all {n} ranks were stopped ({os.path.basename(cmd[0])} {how} "
               f"{abs(proc.returncode)}; the rank's own error is above); {where}; run the same command again to resume")
    _record_failure(os.path.join(os.path.abspath(results_dir), "status.json"), message)
    raise KestrelError(message, exit_code=proc.returncode if proc.returncode > 0 else 1)


def _record_failure(status_path: str, message: str) -> None:
    """End status.json with FAILURE when the ranks could not: rank 0, which writes it, may be the one that died
    (killed, out of memory), leaving a RUNNING record as the last word on a job that has stopped."""
    import json

    from kestrel_trainer.report.status import StatusLogger

    last = None
    if os.path.exists(status_path):
        with open(status_path, encoding="utf-8") as fh:
            lines = [line for line in fh.read().splitlines() if line.strip()]
        try:
            last = json.loads(lines[-1]).get("status") if lines else None
        except ValueError:  # a line cut by the kill: not a record
            last = None
    if last != "FAILURE":
        StatusLogger(status_path).write("FAILURE", message)
