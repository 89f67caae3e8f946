"""What the operator and the trainer say to each other, defined once; both import it from here.

- Environment: the operator sets these on every trainer container (the key from the resource's Secret, and
  which resource started the run, so rank 0 can patch that resource's status); mpirun forwards them, and
  where the API server is, to every rank.
- Status: the trainer's rank 0 JSON-merge-patches `status.progress` (the fields below) of its resource
  after every epoch and, in long epochs, every half minute or so; with `train --evaluate`, once more with the
  final model's evaluation. The operator keeps it (the CRD's schema and printer columns), or drops it when its
  `run` is not the current MPIJob. The operator grants exactly STATUS_VERBS on `<plural>/status`.
- Run folders: RESULTS_MOUNT/RUNS_DIR/<RUN_ID>, one per run; `kestrel runs remove` deletes only such folders.
- Errors: the trainer's one-line error, `<prog>: error: <message>`, which the operator reads from the
  launcher's termination message (ERROR_LINE).
- The Kubernetes client: in a pod the service account, elsewhere KUBECONFIG (`api_client`).

tests/test_contract_trainer_operator.py fails when either side uses a KESTREL_ name of the other's without
this module, or when the pods the operator renders do not carry what the trainer reads.
Standard library only (the kubernetes package is imported by `api_client` when it is called).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from kestrel_trainer import progress as _progress
from kestrel_trainer.storage import cache as _storage_cache

# -- environment ------------------------------------------------------------------------------------------
KEY_ENV = "KESTREL_KEY"  # the model key: only ever in the environment, never on a command line
RUN_ENV = "KESTREL_RUN"  # the MPIJob of the run: progress carries it so a superseded run's is dropped
RESOURCE_GROUP_ENV = "KESTREL_RESOURCE_GROUP"
RESOURCE_VERSION_ENV = "KESTREL_RESOURCE_VERSION"
RESOURCE_PLURAL_ENV = "KESTREL_RESOURCE_PLURAL"
RESOURCE_NAME_ENV = "KESTREL_RESOURCE_NAME"
RESOURCE_NAMESPACE_ENV = "KESTREL_RESOURCE_NAMESPACE"
RESOURCE_UID_ENV = "KESTREL_RESOURCE_UID"
# GPUs the pod's run asked for (the resource's spec.gpus; "0": the explicit CPU path): the trainer fails at start
# with one line when TensorFlow sees fewer (kestrel_trainer.train.devices), instead of training on the CPU.
REQUIRE_GPUS_ENV = "KESTREL_REQUIRE_GPUS"
# Where the trainer stages s3:// inputs and mirrors s3:// results; the operator points it at an emptyDir for runs
# with spec.storage. Defined by the storage layer (below this one), named here for the operator.
CACHE_DIR_ENV = _storage_cache.CACHE_DIR_ENV
# Seconds between plain progress lines where there is no terminal: the trainer's long commands (progress.py, below this
# layer, defines it) and the operator's submit client (kubectl kestrel) read the same variable.
PROGRESS_SECONDS_ENV = _progress.PROGRESS_SECONDS_ENV
# Every variable the operator sets for the trainer, in the order the pods list them.
TRAINER_ENV = (KEY_ENV, RESOURCE_GROUP_ENV, RESOURCE_VERSION_ENV, RESOURCE_PLURAL_ENV, RESOURCE_NAME_ENV,
               RESOURCE_NAMESPACE_ENV, RESOURCE_UID_ENV, RUN_ENV, REQUIRE_GPUS_ENV)
# Where the API server is (set by Kubernetes in every pod): ranks started over ssh need it forwarded.
API_ENV = ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")


@dataclass(frozen=True)
class RunIdentity:
    """Which resource a run belongs to: the operator writes it into the pods' environment, rank 0 reads it
    back to patch that resource's status. `uid` guards against a new resource that reuses the name."""

    group: str
    version: str
    plural: str
    name: str
    namespace: str
    uid: str = ""
    run: str = ""

    def env(self) -> list[tuple[str, str]]:
        """(name, value) pairs, in TRAINER_ENV order (the key comes from a Secret, not from here)."""
        return [(RESOURCE_GROUP_ENV, self.group), (RESOURCE_VERSION_ENV, self.version),
                (RESOURCE_PLURAL_ENV, self.plural), (RESOURCE_NAME_ENV, self.name),
                (RESOURCE_NAMESPACE_ENV, self.namespace), (RESOURCE_UID_ENV, self.uid), (RUN_ENV, self.run)]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Optional[RunIdentity]:
        """The identity when the operator started this process (group .. namespace all set), else None."""
        values = {key: env.get(var, "").strip() for key, var in (
            ("group", RESOURCE_GROUP_ENV), ("version", RESOURCE_VERSION_ENV), ("plural", RESOURCE_PLURAL_ENV),
            ("name", RESOURCE_NAME_ENV), ("namespace", RESOURCE_NAMESPACE_ENV))}
        if not all(values.values()):
            return None
        return cls(**values, uid=env.get(RESOURCE_UID_ENV, "").strip(), run=env.get(RUN_ENV, "").strip())

    @property
    def status_path(self) -> str:
        """The status subresource: what rank 0 reads (uid check) and patches."""
        return f"/apis/{self.group}/{self.version}/namespaces/{self.namespace}/{self.plural}/{self.name}/status"


# -- status -----------------------------------------------------------------------------------------------
STATUS_VERBS = ("get", "patch")  # on <plural>/status, for the one resource (the run's Role)
PROGRESS = "progress"  # the key under status the trainer owns
# status.progress, field -> (JSON schema type, meaning): the trainer writes these, the CRD declares them.
PROGRESS_EPOCH, PROGRESS_MAX_EPOCH, PROGRESS_RUN, PROGRESS_UPDATE_TIME = "epoch", "maxEpoch", "run", "updateTime"
PROGRESS_VAL_ACCURACY = "valAccuracy"
PROGRESS_PERCENT, PROGRESS_ETA = "percent", "eta"
# Written once, after training, by `kestrel train --evaluate` (the final model on eval_config's data).
PROGRESS_TOP1, PROGRESS_TOPK, PROGRESS_TOP_K_VALUE = "top1Accuracy", "topKAccuracy", "topK"
PROGRESS_TRACKER_RUN = "trackerRun"
PROGRESS_FIELDS: Mapping[str, tuple[str, str]] = {
    PROGRESS_EPOCH: ("integer", "Last finished epoch."),
    PROGRESS_MAX_EPOCH: ("integer", "Epochs of the run."),
    "loss": ("number", "Training loss."),
    "accuracy": ("number", "Training accuracy."),
    "valLoss": ("number", "Validation loss."),
    PROGRESS_VAL_ACCURACY: ("number", "Validation accuracy."),
    PROGRESS_PERCENT: ("integer", "Percent of the run's training steps done (0-100)."),
    PROGRESS_ETA: ("string", "Estimated time left, e.g. 4m10s, from rank 0's measured step time (empty when "
                   "unknown)."),
    PROGRESS_TOP1: ("number", "Top-1 accuracy of the final model on eval_config's data (train --evaluate)."),
    PROGRESS_TOPK: ("number", "Top-k accuracy of the final model on eval_config's data (k = topK)."),
    PROGRESS_TOP_K_VALUE: ("integer", "The k of topKAccuracy (eval_config.top_k)."),
    "message": ("string", "Trainer message."),
    PROGRESS_TRACKER_RUN: ("string", "The experiment tracker's run (MLFLOW_TRACKING_URI set): its MLflow UI URL, "
                           "or its id for a non-HTTP tracking URI."),
    PROGRESS_RUN: ("string", "The MPIJob (run) that reported it."),
    PROGRESS_UPDATE_TIME: ("date-time", "When it was reported."),
}


def progress_patch(epoch: int, max_epoch: int, loss: Optional[float], accuracy: Optional[float],
                   val_loss: Optional[float], val_accuracy: Optional[float], message: Optional[str],
                   run: Optional[str], update_time: str, percent: Optional[int] = None,
                   eta: Optional[str] = None) -> dict[str, Any]:
    """The JSON merge patch of status.progress during training (numbers already JSON-safe: None for NaN/inf,
    which clears the field). Percent and ETA are sent when given; the evaluation fields are not touched."""
    values: dict[str, Any] = {
        PROGRESS_EPOCH: int(epoch), PROGRESS_MAX_EPOCH: int(max_epoch), "loss": loss, "accuracy": accuracy,
        "valLoss": val_loss, PROGRESS_VAL_ACCURACY: val_accuracy, "message": message, PROGRESS_RUN: run or None,
        PROGRESS_UPDATE_TIME: update_time}
    if percent is not None:
        values[PROGRESS_PERCENT] = int(percent)
    if eta is not None:
        values[PROGRESS_ETA] = eta
    return {"status": {PROGRESS: {name: values[name] for name in PROGRESS_FIELDS if name in values}}}


def evaluation_patch(top1: Optional[float], topk: Optional[float], k: int, run: Optional[str],
                     update_time: str) -> dict[str, Any]:
    """The JSON merge patch of status.progress with the final model's evaluation (train --evaluate): only
    these fields, so the last epoch's progress stays."""
    return {"status": {PROGRESS: {PROGRESS_TOP1: top1, PROGRESS_TOPK: topk, PROGRESS_TOP_K_VALUE: int(k),
                                  PROGRESS_RUN: run or None, PROGRESS_UPDATE_TIME: update_time}}}


def tracker_patch(tracker_run: str, run: Optional[str], update_time: str) -> dict[str, Any]:
    """The JSON merge patch of status.progress with the experiment tracker's run, sent once when training starts:
    only this field, so the progress fields stay."""
    return {"status": {PROGRESS: {PROGRESS_TRACKER_RUN: tracker_run, PROGRESS_RUN: run or None,
                                  PROGRESS_UPDATE_TIME: update_time}}}


# -- run folders ------------------------------------------------------------------------------------------
# The operator gives each run its own folder RESULTS_MOUNT/runs/<16 lowercase hex> and removes old ones with
# `kestrel runs remove PATH...`, which refuses any other path.
RUNS_DIR = "runs"
RUN_ID = re.compile(r"[0-9a-f]{16}")


# -- errors -----------------------------------------------------------------------------------------------
# The trainer's exit code after a graceful stop (SIGTERM: it wrote a checkpoint first; 128 + SIGTERM, what
# Kubernetes and shells expect). The operator starts such an attempt again; it never retries an ERROR_LINE.
PREEMPTED_EXIT_CODE = 143
# `kestrel: error: ...`, `classification_tf1: error: ...`, argparse's `kestrel train: error: ...`.
ERROR_LINE = re.compile(r"^(?:kestrel|classification_tf1)(?: [a-z_]+)?: error: \S.*$")


def error_line(prog: str, message: str) -> str:
    """How the trainer reports bad input: one line on stderr, then a non-zero exit."""
    return f"{prog}: error: {message}"


# The line of a graceful stop (exit PREEMPTED_EXIT_CODE): an ERROR_LINE, but not bad input. The operator reads it as
# a stop even when mpirun's own exit code is another (it may lose a worker's daemon before the ranks' 143 reach it).
STOPPED_MESSAGE = re.compile(r"stopped by signal \d+(?: on rank \d+)?: checkpoint written to \S+")


def stopped_message(reason: str, checkpoint: str) -> str:
    """The graceful stop's message; `reason` is "signal N" or "signal N on rank R"."""
    return f"stopped by {reason}: checkpoint written to {checkpoint}; run the same command again to resume from it"


# -- graceful stops ---------------------------------------------------------------------------------------
# Trainer pods that run ranks over ssh run `kestrel-worker [--child-signal SIG] -- COMMAND` (the trainer image's
# console script, kestrel_trainer/cli/worker.py) as PID 1: on SIGTERM (a pod deleted, evicted, preempted) it asks
# the ranks running in its pod to stop, which checkpoint as rank 0 does on its own SIGTERM, and stops COMMAND (sshd)
# once they are gone. A multi-rank launcher's COMMAND is mpirun. Measured with Open MPI 4.1.4: mpirun answers its
# own SIGTERM by sending the ranks SIGCONT, SIGTERM one second later and SIGKILL a second after that (no time for a
# checkpoint) and exits 1, while it forwards SIGUSR1 to every rank at once and exits with their 143; so the
# launcher's entrypoint sends mpirun MPIRUN_STOP_SIGNAL instead. The trainer stops on any of STOP_SIGNALS.
WORKER_ENTRYPOINT = "kestrel-worker"
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")
MPIRUN_STOP_SIGNAL = "SIGUSR1"


def entrypoint_command(command: Sequence[str], child_signal: Optional[str] = None) -> list[str]:
    """COMMAND under the trainer image's PID 1; `child_signal`: what a SIGTERM becomes for COMMAND, at once (else
    COMMAND gets SIGTERM after the pod's ranks have stopped)."""
    flags = ["--child-signal", child_signal] if child_signal else []
    return [WORKER_ENTRYPOINT, *flags, "--", *command]


# -- the Kubernetes client --------------------------------------------------------------------------------
def api_client(pool_size: Optional[int] = None) -> Any:
    """A kubernetes.client.ApiClient: in a pod (KUBERNETES_SERVICE_HOST set, no KUBECONFIG) the service
    account; elsewhere KUBECONFIG or ~/.kube/config. `pool_size`: kept-alive connections."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if pool_size is not None:
        configuration.connection_pool_maxsize = pool_size
    if os.environ.get(API_ENV[0]) and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration)
    return client.ApiClient(configuration)
