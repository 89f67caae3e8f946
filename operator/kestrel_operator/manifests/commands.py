"""The trainer command each kind runs, and the mpirun line around it for multi-rank training.

The model key never appears here: it reaches the trainer as the environment variable KEY_ENV
(from the Secret), and mpirun forwards it to the ranks with `-x`. The variable names are the trainer
contract's (kestrel_trainer.spec.contract).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from kestrel_operator.manifests.gpu_mapping import GpuMapping
from kestrel_operator.manifests.runs import in_run, run_dir
from kestrel_operator.resources.types import ExportResource, PruneResource, Resource, TrainResource
from kestrel_trainer.spec.contract import API_ENV, KEY_ENV, MPIRUN_STOP_SIGNAL, TRAINER_ENV, entrypoint_command

SPEC_DIR = "/etc/kestrel/spec"
SPEC_FILE = "spec.txt"
SPEC_PATH = f"{SPEC_DIR}/{SPEC_FILE}"
# Environment the trainer's rank 0 needs to patch its own resource's status (contract.RunIdentity).
RESOURCE_ENV = tuple(name for name in TRAINER_ENV if name != KEY_ENV)
# OpenMPI over TCP without InfiniBand verbs; ranks placed slot by slot, not pinned to cores (Horovod
# and tf.data spawn their own threads). Non-root pods, so no --allow-run-as-root.
MPIRUN_FLAGS = ("--bind-to", "none", "-map-by", "slot")
MPIRUN_MCA = ("-mca", "pml", "ob1", "-mca", "btl", "^openib")
# Ranks started by orted over ssh do not inherit the pod's environment: everything a rank reads must be
# forwarded, including where the API server is (rank 0 may run in a worker pod and report progress).
MPIRUN_ENV = (KEY_ENV, "NCCL_DEBUG=INFO", "LD_LIBRARY_PATH", "PATH", *API_ENV, *RESOURCE_ENV)


def trainer_command(res: Resource, mapping: GpuMapping, model_path: Optional[str], has_spec: bool,
                    output_path: str) -> list[str]:
    """`kestrel train|prune|export ...` with the original CLI's flags. A train's results folder is its run's
    folder (manifests/runs.py); `output_path` is where a prune or export writes (inside its run's folder)."""
    if isinstance(res, TrainResource):
        cmd = ["kestrel", "train", "-e", SPEC_PATH, "-r", run_dir(res.run.results_root, res.meta.run_hash)]
        if mapping.ranks > 1 or mapping.total_gpus > 1:
            cmd += ["--gpus", str(mapping.total_gpus), "--num_processes", str(mapping.ranks)]
        if res.use_amp:
            cmd.append("--use_amp")
        if res.init_epoch is not None:
            cmd += ["--init_epoch", str(res.init_epoch)]
        if res.promotion is not None:
            cmd.append("--evaluate")  # the gate's metric, reported into status.progress before the run ends
        return cmd
    assert model_path is not None
    if isinstance(res, PruneResource):
        cmd = ["kestrel", "prune", "-m", model_path, "-o", output_path]
        if has_spec:
            cmd += ["-e", SPEC_PATH]
        cmd += [
            "-n", res.normalizer,
            "-eq", res.equalization_criterion,
            "-pg", str(res.pruning_granularity),
            "-pth", repr(res.pruning_threshold),
            "-nf", str(res.min_num_filters),
        ]
        if res.excluded_layers:
            cmd += ["-el", *res.excluded_layers]
        return cmd
    assert isinstance(res, ExportResource)
    cmd = ["kestrel", "export", "-m", model_path, "-o", output_path, "--data_type", res.data_type]
    if has_spec:
        cmd += ["-e", SPEC_PATH]
    if res.gen_ds_config:
        cmd.append("--gen_ds_config")
    cal = res.calibration
    for flag, value in (
        ("--cal_image_dir", cal.image_dir),
        ("--cal_cache_file", cal.cache_file),
        ("--batches", cal.batches),
        ("--batch_size", cal.batch_size),
        ("--max_batch_size", res.max_batch_size),
        ("--engine_file", in_run(res.run.results_root, res.meta.run_hash, res.engine_file) if res.engine_file
         else None),
    ):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def mpirun_transport(rdma: bool) -> tuple[str, ...]:
    """mpirun's own transport: TCP without verbs by default; with spec.network.ipcLock (InfiniBand/RoCE), Open MPI's
    own choice (UCX or verbs where the image's Open MPI has them and the pod sees the device, else TCP). The
    gradients themselves go through NCCL on GPUs, which picks InfiniBand by itself when it sees it."""
    return () if rdma else MPIRUN_MCA


def launcher_command(trainer: list[str], mapping: GpuMapping, user_env: Sequence[str] = (),
                     storage_env: Sequence[str] = (), rdma: bool = False) -> list[str]:
    """One rank: run the trainer in the launcher pod itself (it is PID 1 and checkpoints on SIGTERM). More: mpirun
    over the worker pods, forwarding our environment and the names in spec.env (a user's NCCL_DEBUG replaces our
    NCCL_DEBUG=INFO), under the trainer image's entrypoint, which turns the pod's SIGTERM into the signal mpirun
    forwards to every rank (contract.MPIRUN_STOP_SIGNAL). `storage_env`: spec.storage's names (manifests/storage.py),
    forwarded by name like the key: their values (credentials) never reach a command line."""
    if mapping.ranks == 1:
        return trainer
    cmd = ["mpirun", "-np", str(mapping.ranks), *MPIRUN_FLAGS]
    for name in MPIRUN_ENV:
        if name.partition("=")[0] not in user_env:
            cmd += ["-x", name]
    for name in (*storage_env, *user_env):
        cmd += ["-x", name]
    return entrypoint_command([*cmd, *mpirun_transport(rdma), *trainer], MPIRUN_STOP_SIGNAL)
