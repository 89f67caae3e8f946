"""Rank detection and the launcher's command lines (no ranks are started here)."""

from __future__ import annotations

import argparse

from kestrel_trainer.cli.main import build_parser
from kestrel_trainer.train.distributed import Ranks, launched_world, optimizer_wrapper
from kestrel_trainer.train.launcher import launch_command, rank_arguments


def test_ranks_started_by_mpirun_or_horovodrun_are_detected():
    assert launched_world({}) is None
    assert launched_world({"PATH": "/bin"}) is None
    # what Open MPI's mpirun (the MPIJob launcher) gives each rank
    assert launched_world({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4",
                           "OMPI_COMM_WORLD_LOCAL_RANK": "1"}) == Ranks(1, 4, 1)
    # horovodrun (Gloo) takes precedence: it may run under an outer MPI
    assert launched_world({"HOROVOD_RANK": "0", "HOROVOD_SIZE": "2", "HOROVOD_LOCAL_RANK": "0",
                           "OMPI_COMM_WORLD_SIZE": "1", "OMPI_COMM_WORLD_RANK": "0"}) == Ranks(0, 2, 0)
    assert launched_world({"PMI_RANK": "3", "PMI_SIZE": "8"}) == Ranks(3, 8, 0)


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", *argv])


def test_the_key_never_reaches_a_rank_command_line():
    args = _args("-e", "s.txt", "-r", "out", "-k", "secret-key", "--gpus", "4", "--num_processes", "2",
                 "--use_amp", "--init_epoch", "3", "--gpu_index", "3", "2", "1", "0")
    ranks = rank_arguments(args)
    assert "secret-key" not in ranks and "-k" not in ranks and "--key" not in ranks
    assert ranks[:5] == ["train", "-e", "s.txt", "-r", "out"]
    assert ranks[5:9] == ["--gpus", "4", "--num_processes", "2"]
    assert "--use_amp" in ranks and ranks[ranks.index("--init_epoch") + 1] == "3"
    assert ranks[ranks.index("--gpu_index") + 1:][:4] == ["3", "2", "1", "0"]
    for kind in ("gloo", "mpi"):
        cmd = launch_command(2, ranks, kind, is_root=True, forward_key=True)
        assert "secret-key" not in cmd


def test_launch_commands():
    gloo = launch_command(3, ["train"], "gloo")
    assert gloo[0].endswith("horovodrun") and gloo[1:6] == ["-np", "3", "-H", "localhost:3", "--gloo"]
    mpi = launch_command(2, ["train"], "mpi", is_root=True, forward_key=True)
    assert mpi[0].endswith("mpirun") and mpi[1:3] == ["-np", "2"]
    assert "--allow-run-as-root" in mpi and mpi[mpi.index("KESTREL_KEY") - 1] == "-x"
    assert "KESTREL_KEY" not in launch_command(2, ["train"], "mpi", forward_key=False)


def test_single_rank_without_amp_keeps_the_plain_optimizer():
    assert optimizer_wrapper(Ranks(), loss_scaling=False) is None
