"""Every `status.reason` the operator writes itself, in one place, and which of them are Warnings.

A reason is a CamelCase word for machines (`kubectl wait`, alerts); the `message` next to it says what
happened and what the user should do. The MPIJob's own reasons (`MPIJobCreated`, `MPIJobRunning`, ...) are
mirrored as they are and are not listed here, but for the one that decides an Event's type.
tests/operator/test_reasons.py fails when a reason is written as a string literal anywhere else.
"""

from __future__ import annotations

# Before a run exists.
INVALID_SPEC = "InvalidSpec"
SPEC_NOT_FOUND = "SpecNotFound"
WAITING_FOR_MODEL = "WaitingForModel"
MODEL_SOURCE_FAILED = "ModelSourceFailed"
NAME_CONFLICT = "NameConflict"
WAITING_FOR_OLD_RUN = "WaitingForOldRun"
# The API server refused a call (retried with backoff); the MPIJob kind is not served at all.
API_ERROR = "APIError"
MPIJOB_CRD_MISSING = "MPIJobCRDMissing"
# The run exists but is held back.
SUSPENDED = "Suspended"
QUEUED = "Queued"
MPIJOB_PENDING = "MPIJobPending"
MPIJOB_MISSING = "MPIJobMissing"
# Why the run's pods do not get going (from the pods, their container states and their Events).
UNSCHEDULABLE = "Unschedulable"
VOLUME_CLAIM_MISSING = "VolumeClaimMissing"
IMAGE_PULL_BACKOFF = "ImagePullBackOff"
KEY_SECRET_MISSING = "KeySecretMissing"
CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
VOLUME_MULTI_ATTACH = "VolumeMultiAttach"
VOLUME_MOUNT_FAILED = "VolumeMountFailed"
WORKER_CRASH_LOOP = "WorkerCrashLoopBackOff"
WORKER_EVICTED = "WorkerEvicted"
# How a run ended, when the trainer said why (the launcher's termination message).
TRAINER_FAILED = "TrainerFailed"
# An attempt that ended without the trainer's own error: the operator starts the next one (spec.retryLimit).
RANK_LOST = "RankLost"
RUN_STOPPED = "RunStopped"
# A pod of the attempt was evicted from a node that stopped answering (status/pods.py node_lost).
NODE_LOST = "NodeLost"
RETRYING = "Retrying"
# A finished run and the promotion gate (spec.promotion); a spec that maps to a run that already succeeded.
PROMOTED = "Promoted"
PROMOTION_REJECTED = "PromotionRejected"
EVALUATION_MISSING = "EvaluationMissing"
RUN_REUSED = "RunReused"

# Mirrored from the MPIJob (the MPI Operator writes it), listed for WARNING_REASONS.
MPIJOB_FAILED = "MPIJobFailed"

# Events only (never a status reason).
SPEC_CHANGED = "SpecChanged"
RUN_UPDATED = "RunUpdated"
MPIJOB_CREATED = "MPIJobCreated"
MPIJOB_RECREATED = "MPIJobRecreated"
OLD_RUNS_REMOVED = "OldRunsRemoved"
WORKERS_REMOVED = "WorkersRemoved"

WARNING_REASONS = frozenset({
    INVALID_SPEC, SPEC_NOT_FOUND, MODEL_SOURCE_FAILED, NAME_CONFLICT, API_ERROR, MPIJOB_CRD_MISSING,
    UNSCHEDULABLE, VOLUME_CLAIM_MISSING, IMAGE_PULL_BACKOFF, KEY_SECRET_MISSING, CREATE_CONTAINER_CONFIG_ERROR,
    VOLUME_MULTI_ATTACH, VOLUME_MOUNT_FAILED, WORKER_CRASH_LOOP, WORKER_EVICTED, TRAINER_FAILED, MPIJOB_RECREATED,
    MPIJOB_FAILED, PROMOTION_REJECTED, EVALUATION_MISSING, RANK_LOST, RUN_STOPPED, RETRYING, NODE_LOST,
})
# Why an attempt failed, for which running it again cannot help: it is not retried.
NOT_RETRIED = frozenset({TRAINER_FAILED, INVALID_SPEC})
# Reasons that mean the run failed or cannot go on without someone's change: the Stalled condition (kstatus:
# Failed; Argo CD: Degraded). Waiting for a ConfigMap, a claim, an upstream model, a node or a queue is
# Reconciling instead: it goes on by itself once that appears.
STALLED_REASONS = frozenset({
    INVALID_SPEC, MODEL_SOURCE_FAILED, NAME_CONFLICT, MPIJOB_CRD_MISSING, IMAGE_PULL_BACKOFF, KEY_SECRET_MISSING,
    CREATE_CONTAINER_CONFIG_ERROR, VOLUME_MOUNT_FAILED, WORKER_CRASH_LOOP, TRAINER_FAILED, MPIJOB_FAILED,
    PROMOTION_REJECTED, EVALUATION_MISSING, RANK_LOST, RUN_STOPPED, WORKER_EVICTED, NODE_LOST,
})
