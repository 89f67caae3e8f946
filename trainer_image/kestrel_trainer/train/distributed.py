"""Who this process is among the data-parallel ranks, and what that changes.

Single-process runs use `Ranks()`; a Horovod launch (mpirun, horovodrun, an MPIJob) fills it from
Horovod. The loop only asks: am I the chief (rank 0 writes outputs), how many ranks scale the LR,
which shard do I read, and, when there is more than one rank, the few collective steps of
data-parallel training (wrap the optimizer, broadcast rank 0's state, average the epoch metrics).

Horovod is imported only when there is more than one rank, so single-process training never needs it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

log = logging.getLogger("kestrel.train")

# Environment variables by which a launcher tells a process its place in the job: horovodrun (Gloo or
# MPI) sets HOROVOD_*, Open MPI's mpirun (the MPIJob launcher) sets OMPI_COMM_WORLD_*, MPICH/Intel MPI
# and Slurm's PMI set PMI_*.
_WORLD_VARS = (
    ("HOROVOD_RANK", "HOROVOD_SIZE", "HOROVOD_LOCAL_RANK"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched_world(env: Optional[Mapping[str, str]] = None) -> Optional[Ranks]:
    """The rank/size a launcher gave this process (from its environment), or None when not launched.

    This is how a rank started by `mpirun -np P kestrel train ...` (an MPIJob) knows it must join the
    job instead of starting P ranks of its own.
    """
    env = os.environ if env is None else env
    for rank_var, size_var, local_var in _WORLD_VARS:
        if rank_var in env and size_var in env:
            rank, size = int(env[rank_var]), int(env[size_var])
            return Ranks(rank=rank, size=size, local_rank=int(env.get(local_var, "0") or 0))
    return None


def _hvd() -> Any:
    """horovod.tensorflow.keras, or a clear error when this install has no Horovod."""
    try:
        import horovod.tensorflow.keras as hvd
    except ImportError as err:
        from kestrel_trainer.errors import KestrelError

        raise KestrelError(
            f"multi-rank training needs Horovod 0.28.1, which cannot be imported here ({err}); "
            "install it with scripts/build_horovod.sh", exit_code=2) from err
    return hvd


def init_ranks() -> Ranks:
    """Join the launched job (Horovod over MPI when started by mpirun, else Gloo) and say who we are."""
    hvd = _hvd()
    hvd.init()
    ranks = Ranks(rank=hvd.rank(), size=hvd.size(), local_rank=hvd.local_rank())
    controller = "MPI" if hvd.mpi_enabled() else "Gloo" if hvd.gloo_enabled() else "?"
    log.info("rank %d of %d (local rank %d), Horovod over %s", ranks.rank, ranks.size, ranks.local_rank, controller)
    return ranks


def optimizer_wrapper(ranks: Ranks, loss_scaling: bool) -> Optional[Callable[[Any], Any]]:
    """What task.compile_model does to the optimizer: Horovod's gradient averaging, under loss scaling (AMP).

    LossScaleOptimizer(DistributedOptimizer(opt)): each rank scales its loss, Horovod averages the
    scaled gradients, the loss-scale optimizer unscales the average and checks it. The average is the
    same on every rank, so all ranks make the same finite/non-finite decision, skip the same steps and
    keep the same scale. (The other order, DistributedOptimizer(LossScaleOptimizer(opt)), cannot be built
    with Horovod 0.28.1 and Keras 2.15: Horovod re-creates the optimizer with from_config, and Keras'
    LossScaleOptimizer.from_config passes its inner optimizer positionally, which Horovod's class
    rejects with a TypeError.) Keras leaves an optimizer that is already loss-scaling as it is.
    """
    if not ranks.distributed and not loss_scaling:
        return None

    def wrap(optimizer: Any) -> Any:
        import tensorflow as tf

        if ranks.distributed:
            optimizer = _hvd().DistributedOptimizer(optimizer)
        if loss_scaling:
            optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
        return optimizer

    return wrap


def broadcast_object(ranks: Ranks, obj: Any) -> Any:
    """Rank 0's value of a picklable object on every rank (e.g. the resume decision)."""
    if not ranks.distributed:
        return obj
    _hvd()
    import horovod.tensorflow as hvd_tf

    return hvd_tf.broadcast_object(obj, root_rank=0, name="kestrel_object")


def broadcast_state(ranks: Ranks, model: Any) -> None:
    """Make every rank start from rank 0's weights and optimizer state (explicitly, before fit)."""
    if not ranks.distributed:
        return
    import horovod.tensorflow as hvd_tf

    hvd_tf.broadcast_variables(model.variables, root_rank=0)
    opt_vars = model.optimizer.variables() if callable(getattr(model.optimizer, "variables", None)) else []
    if opt_vars:  # a resumed optimizer has state already; a fresh one creates it on the first step
        hvd_tf.broadcast_variables(opt_vars, root_rank=0)


def allgather_list(ranks: Ranks, values: list[int], name: str) -> list[int]:
    """Every rank's list, concatenated in rank order (a collective: every rank calls it with the same name)."""
    if not ranks.distributed:
        return list(values)
    _hvd()
    import horovod.tensorflow as hvd_tf

    return [v for part in hvd_tf.allgather_object(list(values), name=name) for v in part]


def allreduce_sum(values: list[float]) -> list[float]:
    """Sum of each value over all ranks (a collective: every rank must call it with the same length)."""
    import numpy as np
    import tensorflow as tf

    _hvd()
    import horovod.tensorflow as hvd

    total = hvd.allreduce(tf.constant(np.asarray(values, dtype=np.float64)), op=hvd.Sum, name="kestrel_metrics")
    return [float(v) for v in total.numpy()]


def average_model_state(model: Any) -> None:
    """Average the non-trainable float variables (BatchNorm moving mean/variance) over all ranks.

    Averaged gradients keep the trainable weights identical on every rank, but each rank's BatchNorm
    statistics follow its own batches. Averaging them at each validation makes every rank's model (and
    so rank 0's checkpoint) the same and evaluates the job's statistics, not one shard's. For the moving
    mean this is exactly the moving average of the job's batch means; for the variance it leaves out the
    spread between the ranks' means (small: the shards are random halves of the same data).
    """
    import tensorflow as tf

    _hvd()
    import horovod.tensorflow as hvd

    state = [v for v in model.non_trainable_variables if v.dtype.is_floating]
    if not state:
        return
    averaged = hvd.grouped_allreduce([tf.convert_to_tensor(v) for v in state], op=hvd.Average,
                                     name="kestrel_model_state")
    for var, value in zip(state, averaged):
        var.assign(value)


def metric_average_callback(ranks: Ranks, n_train: int, n_val: int) -> Any:
    """A Keras callback (first in the list) that makes the ranks agree at each epoch end.

    Before validation it averages the BatchNorm statistics (average_model_state). At the epoch end it
    replaces each rank's metrics with the job's: each rank's Keras metrics are means over the images
    of its own shard (train and validation are both sharded), so the job's mean is the
    image-count-weighted mean of the ranks' means: exact even when shards differ by one image,
    unlike a plain average.
    """
    import tensorflow as tf

    from kestrel_trainer.data.sharding import shard_size

    train_w = float(shard_size(n_train, ranks.rank, ranks.size))
    val_w = float(shard_size(n_val, ranks.rank, ranks.size))

    class AverageMetrics(tf.keras.callbacks.Callback):
        def on_test_begin(self, logs: Optional[dict] = None) -> None:
            average_model_state(self.model)  # validation inside fit(): every rank, every epoch

        def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
            if logs is None:
                return
            keys = sorted(k for k, v in logs.items() if isinstance(v, (int, float)) or hasattr(v, "numpy"))
            weights = [val_w if k.startswith("val_") else train_w for k in keys]
            sums = allreduce_sum([float(logs[k]) * w for k, w in zip(keys, weights)] + [train_w, val_w])
            total_train, total_val = sums[-2], sums[-1]
            for k, s in zip(keys, sums):
                logs[k] = s / (total_val if k.startswith("val_") else total_train)

    return AverageMetrics()


# About how often, in seconds of training, the ranks agree on whether to stop (StopVote).
STOP_VOTE_SECONDS = 1.0
MAX_STOP_VOTE_INTERVAL = 10_000  # steps


@dataclass(frozen=True)
class StopDecision:
    """What the ranks agreed at a vote: `signum` 0 means go on; else the signal and the highest rank that got one."""

    signum: int = 0
    rank: int = 0


class StopVote:
    """How the ranks of a data-parallel job agree on a stop, so that all of them stop after the same step.

    A rank that gets a stop request (its pod's SIGTERM) cannot just leave: the others would wait for it in the next
    gradient allreduce. Every `interval` steps each rank calls `vote` (a collective, at the same step on every rank:
    `due` counts steps, and the interval changes only from the vote's result, which every rank receives alike):
    one Max-allreduce of (the signal this rank got or 0, its rank + 1 or 0, its mean seconds per step since the
    previous vote). The interval then becomes about STOP_VOTE_SECONDS of the slowest rank's steps, so a stop waits
    at most about a second and the vote costs one small allreduce per second (bench/stop_vote.py measures it).
    Steps are timed between consecutive batch ends of one epoch (`epoch_break` leaves validation out).
    """

    def __init__(self, ranks: Ranks, every_seconds: float = STOP_VOTE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ranks = ranks
        self.every_seconds = every_seconds
        self.clock = clock
        self.interval = 1  # steps between votes; the first vote is after the first step
        self.votes = 0
        self._until_vote = 1
        self._last_end: Optional[float] = None
        self._busy = 0.0  # seconds of timed steps since the last vote
        self._timed = 0  # timed steps since the last vote

    def due(self) -> bool:
        """Called after every training step on every rank: True when this step ends with a vote."""
        now = self.clock()
        if self._last_end is not None:
            self._busy += now - self._last_end
            self._timed += 1
        self._last_end = now
        self._until_vote -= 1
        return self._until_vote <= 0

    def epoch_break(self) -> None:
        """Between epochs (validation, checkpoints): the next step's time is not a step's."""
        self._last_end = None

    def vote(self, signum: int) -> StopDecision:
        """The collective: every rank's request in, the job's decision out (the same on every rank)."""
        mean = self._busy / self._timed if self._timed else 0.0
        signal_max, rank_max, slowest = max_allreduce(
            [float(signum), float(self.ranks.rank + 1 if signum else 0), mean], name="kestrel_stop_vote")
        self.votes += 1
        if slowest > 0:
            self.interval = max(1, min(MAX_STOP_VOTE_INTERVAL, int(self.every_seconds / slowest)))
        self._until_vote, self._busy, self._timed = self.interval, 0.0, 0
        if not signal_max:
            return StopDecision()
        return StopDecision(int(signal_max), int(rank_max) - 1)


def max_allreduce(values: list[float], name: str) -> list[float]:
    """Each value's maximum over all ranks (a collective: every rank calls it with the same length and name)."""
    import numpy as np
    import tensorflow as tf

    _hvd()
    import horovod.tensorflow as hvd

    total = hvd.allreduce(tf.constant(np.asarray(values, dtype=np.float64)), op=hvd.Max, name=name)
    return [float(v) for v in total.numpy()]
