"""Names and schema of the status fields about runs: the run history (status.runs), the promoted run
(status.promoted) and a record's evaluation. status/runs.py writes them; crd.py declares them.
"""

from __future__ import annotations

from collections.abc import Mapping

from kestrel_trainer.spec.contract import PROGRESS_TOP1, PROGRESS_TOP_K_VALUE, PROGRESS_TOPK

RUNS = "runs"
PROMOTED = "promoted"
# A record's keys (the CRD's schema lists them; crd.py reads this).
RECORD_FIELDS: Mapping[str, tuple[str, str]] = {
    "runHash": ("string", "The run's identity; its folder is <results mountPath>/runs/<runHash>."),
    "specHash": ("string", "The spec's part of runHash: a finished run of an unchanged spec keeps its result while "
                           "its spec ConfigMap or upstream cannot be read."),
    "generation": ("integer", "The resource's metadata.generation that started (or last took back) the run."),
    "phase": ("string", "Pending, Suspended, Running, Succeeded or Failed."),
    "mpiJobName": ("string", "The run's MPIJob (gone once its ttlSecondsAfterFinished passed)."),
    "runPath": ("string", "The run's folder as its pods see it."),
    "completionTime": ("date-time", "When the run finished."),
    "outputPath": ("string", "The run's final artifact as its pods see it."),
    "evaluation": ("object", "The trainer's end-of-run evaluation: top1Accuracy, topKAccuracy, topK."),
    "attempt": ("integer", "The run's current (or last) attempt, 1 + the retries so far."),
    "attemptFailures": ("array", "Why each earlier attempt ended: attempt, reason, message, time."),
    "gate": ("object", "The spec.promotion the run was judged with (metric, minimum, maxDrop)."),
    "promotion": ("string", "Promoted or PromotionRejected/EvaluationMissing: the gate's verdict on this run."),
    "promotionMessage": ("string", "The gate's numbers."),
}
# What of status.progress a record keeps as its evaluation (the trainer's `train --evaluate` writes it).
EVALUATION_FIELDS = (PROGRESS_TOP1, PROGRESS_TOPK, PROGRESS_TOP_K_VALUE)
