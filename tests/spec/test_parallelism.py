"""The GPU / rank / model-parallelism rule (kestrel_trainer.spec.parallelism): one function that `kestrel train`
and the operator both call, so they accept and refuse the same numbers with the same sentence."""

from __future__ import annotations

import argparse
import itertools

import pytest

from kestrel_operator.manifests import map_gpus
from kestrel_operator.resources import InvalidSpec
from kestrel_trainer.cli.common import resolve_processes
from kestrel_trainer.errors import KestrelError
from kestrel_trainer.spec.parallelism import parallelism
from kestrel_trainer.train.model_parallel import plan_devices

# From docs/distributed.md and docs/operator.md ("GPU mapping"): G GPUs, P ranks, F model_parallelism entries.
# k = G/P must be whole; k > 1 needs F == k; k == 1 allows at most one entry; a CPU rank (G = 0) has one device.
DOCUMENTED = [
    # G, P, F, accepted, GPUs per rank
    (1, 1, 0, True, 1),
    (8, 8, 0, True, 1),
    (8, 4, 2, True, 2),  # two-way model parallel
    (4, 1, 4, True, 4),
    (2, 1, 1, False, None),  # 2 GPUs per rank need 2 entries
    (8, 4, 0, False, None),
    (8, 4, 3, False, None),
    (6, 4, 0, False, None),  # not a multiple
    (2, 2, 2, False, None),  # 1 GPU per rank, 2 entries
    (1, 1, 1, True, 1),  # one entry is no split
    (0, 3, 0, True, 0),  # three CPU ranks
    (0, 1, 2, False, None),  # a CPU rank has one device
]


@pytest.mark.parametrize("gpus,processes,entries,accepted,per_rank", DOCUMENTED)
def test_documented_mappings(gpus, processes, entries, accepted, per_rank):
    result = parallelism(gpus, processes, [1.0] * entries)
    assert result.ok is accepted, result.message()
    if accepted:
        assert (result.ranks, result.gpus_per_rank) == (processes, per_rank)


def test_unset_processes_means_one_rank_per_gpu_or_one_cpu_rank():
    assert parallelism(4).ranks == 4 and parallelism(4).gpus_per_rank == 1
    assert parallelism(0).ranks == 1 and parallelism(0).ok


def test_every_violation_is_reported_not_only_the_first():
    result = parallelism(20, 3, None, gpus_per_node=4)
    assert [v.rule.key for v in result.violations] == ["gpus-multiple-of-processes", "rank-fits-a-node"]
    assert result.message() == ("gpus must be a multiple of numProcesses: gpus 20, numProcesses 3; a rank's GPUs "
                                "(gpus/numProcesses) must fit on one node (gpusPerNode): each rank needs 6 GPUs "
                                "but a node has 4")
    bounds = parallelism(-1, 0)
    assert [v.field for v in bounds.violations] == ["gpus", "processes"]


GRID = list(itertools.product(range(0, 9), range(1, 6), range(0, 4)))


def test_trainer_and_operator_refuse_exactly_the_same_numbers():
    """`kestrel train --gpus G --num_processes P` with F entries against a ClassificationTrain with the same
    numbers (nodes as large as the job, so only the shared rule decides), over a grid of 135 cases."""
    refused_by_both = 0
    for gpus, processes, entries in GRID:
        fractions = tuple([1.0] * entries)
        try:
            # the training loop reads --gpus below the rank count as one device per rank (max(gpus, ranks))
            plan_devices(max(gpus, processes), processes, 0, fractions, n_visible_gpus=0)
            trainer = None
        except KestrelError as err:
            trainer = err.message
        try:
            map_gpus(max(gpus, processes), processes, 64, fractions)
            operator = None
        except InvalidSpec as err:
            operator = err.errors[0].detail
        assert (trainer is None) == (operator is None), (gpus, processes, entries, trainer, operator)
        if trainer is not None:
            refused_by_both += 1
            assert trainer.replace("--num_processes", "numProcesses").replace("--gpus", "gpus") == operator.replace(
                "train_config.model_parallelism", "model_parallelism")
    assert 40 < refused_by_both < len(GRID) - 20  # both outcomes are well represented


def _args(gpus, processes):
    return argparse.Namespace(gpus=gpus, num_processes=processes)


def test_resolve_processes_applies_the_rule_before_starting_any_rank():
    assert resolve_processes(_args(4, -1)) == 4
    assert resolve_processes(_args(0, 3)) == 3
    assert resolve_processes(_args(1, 2)) == 2  # the default --gpus 1 with -np 2: one device per rank
    with pytest.raises(KestrelError, match="--gpus must be a multiple of --num_processes: --gpus 3, --num_processes 2"):
        resolve_processes(_args(3, 2))
    with pytest.raises(KestrelError, match=r"^--gpus must be >= 0 \(0: CPU only\)$"):
        resolve_processes(_args(-2, -1))
