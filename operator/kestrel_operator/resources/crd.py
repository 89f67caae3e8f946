"""The three CustomResourceDefinitions, built from the same defaults as the parser.

`crds/*.yaml` are this module's output (`kestrel-operator crds`), checked by a test, so the schema
the API server enforces and the rules `parse.py` enforces cannot drift apart silently. Every CEL rule
(x-kubernetes-validations) comes from the table `parse.py` evaluates too (`rules.py`, whose GPU/rank rows and
bounds are the trainer's `kestrel_trainer.spec.parallelism.RULES`).
"""

from __future__ import annotations

from typing import Any, Optional

from kestrel_operator import GROUP, VERSION
from kestrel_operator.resources import defaults as d
from kestrel_operator.resources import rules as cel
from kestrel_operator.resources import status_fields as runs
from kestrel_operator.resources.status_fields import EVALUATION_FIELDS
from kestrel_operator.resources.types import KINDS, PHASES, SHORT_NAMES
from kestrel_operator.settings import GPU_RESOURCE_PATTERN
from kestrel_trainer.spec import contract
from kestrel_trainer.spec import parallelism as par

Schema = dict[str, Any]
ABS_PATH = r"^/"
PATH_OR_URL = d.PATH_OR_URL_PATTERN
QUANTITY_PATTERN = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
                    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def _s(desc: str, default: Any = None, **kw: Any) -> Schema:
    out: Schema = {"type": "string", "description": desc, **kw}
    if default is not None:
        out["default"] = default
    return out


def _i(desc: str, default: Optional[int] = None, minimum: Optional[int] = None, fmt: str = "int32") -> Schema:
    out: Schema = {"type": "integer", "format": fmt, "description": desc}
    if minimum is not None:
        out["minimum"] = minimum
    if default is not None:
        out["default"] = default
    return out


def _b(desc: str, default: bool = False) -> Schema:
    return {"type": "boolean", "description": desc, "default": default}


def _o(desc: str, props: dict[str, Schema], required: tuple[str, ...] = (), rules: tuple[tuple[str, str], ...] = (),
       default: Any = None) -> Schema:
    out: Schema = {"type": "object", "description": desc, "properties": props}
    if required:
        out["required"] = list(required)
    if rules:
        out["x-kubernetes-validations"] = [{"rule": r, "message": m} for r, m in rules]
    if default is not None:
        out["default"] = default
    return out


def _name(desc: str) -> Schema:
    return _s(desc, maxLength=253, pattern=NAME_PATTERN)


def _quantity_map(desc: str) -> Schema:
    return {
        "type": "object",
        "description": desc,
        "additionalProperties": {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY_PATTERN,
        },
    }


FIX_OWNERSHIP_DOC = (
    "Opt-in, for volumes that ignore the pods' fsGroup (hostPath, many NFS exports): an init container in every "
    "pod of the run, running as root with only the CHOWN, FOWNER and DAC_OVERRIDE capabilities, creates the mounted "
    "folder (subPath) if missing and gives it (not its contents) to the trainer's user 1000 before the trainer "
    "starts. Off by default: fsGroup (1000, changed only when the volume root differs) covers most CSI volumes, and "
    "a namespace under the restricted Pod Security Standard refuses a root container.")


def _volume(role: str, default_mount: str, read_only_note: str, extra: Schema | None = None) -> Schema:
    return _o(
        f"The {role} volume: a PersistentVolumeClaim (sub-)directory mounted into every pod of the run"
        f"{read_only_note}.",
        {
            "claimName": _name("Name of the PersistentVolumeClaim in the resource's namespace."),
            "subPath": _s("Directory inside the claim to mount (default: the whole volume).", maxLength=1024,
                          pattern=r"^[^/]"),
            "mountPath": _s(f"Where the pods see it; paths in the spec text refer to this (default {default_mount}).",
                            default=default_mount, pattern=ABS_PATH, maxLength=1024),
            **(extra or {}),
        },
        required=("claimName",),
    )


def _storage() -> Schema:
    return _o(
        "Object storage (S3 or S3-compatible) the run's pods read and write: s3:// URLs in the spec text (datasets, "
        "pretrained model), in model.path, outputPath and calibration, and resultsPath instead of a results "
        "volume. The credentials reach the pods from the Secret by reference (docs/storage.md).",
        {
            "s3": _o("The store, configured as the standard AWS environment of every trainer process.", {
                "endpoint": _s("An S3-compatible store's http(s)://host[:port] (AWS_ENDPOINT_URL); unset: AWS "
                               "itself.", pattern=d.S3_ENDPOINT_PATTERN, maxLength=1024),
                "region": _s("The region (AWS_REGION).", maxLength=64),
                "secretRef": _o("A Secret in this namespace with the keys AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY (and optionally AWS_SESSION_TOKEN).",
                                {"name": _name("Secret name.")}, required=("name",)),
                "caBundle": _o("A ConfigMap key with the PEM CA bundle of the endpoint (AWS_CA_BUNDLE).",
                               {"name": _name("ConfigMap name."),
                                "key": _s("Key holding the bundle.", default=d.DEFAULT_CA_BUNDLE_KEY, maxLength=253)},
                               required=("name",)),
            }, required=("secretRef",)),
            "resultsPath": _s("Where the results go instead of a results volume, an s3://bucket/prefix URL: each run "
                              "writes <resultsPath>/runs/<runHash>.", pattern=d.S3_URL_PATTERN, maxLength=4096),
        },
        required=("s3",),
    )


def _requirements(desc: str) -> Schema:
    return _o(desc, {"requests": _quantity_map("Requested resources."), "limits": _quantity_map("Resource limits.")},
              rules=cel.cel_at(cel.REQUIREMENTS, cel.TRAIN))


def _model_ref(desc: str) -> Schema:
    return _o(
        desc,
        {
            "path": _s("Absolute path of a .tlt/.hdf5 model as the run's pods see it (on the data or results "
                       "volume), or its s3:// URL (with storage).", pattern=PATH_OR_URL, maxLength=4096),
            "fromTrain": _name("A ClassificationTrain in this namespace: the run waits until it succeeded and "
                               "reads its final checkpoint (its results volume is mounted read-only)."),
            "fromPrune": _name("A ClassificationPrune in this namespace: the run waits until it succeeded and "
                               "reads its pruned model."),
        },
        rules=cel.cel_at(cel.MODEL_REF, cel.TRAIN),
    )


def _common_spec(kind: str) -> dict[str, Schema]:
    default_gpus = d.DEFAULT_GPUS[kind]
    return {
        "experimentSpec": _s("The experiment spec in classification_tf1's text format (model_config, "
                             "train_config, eval_config), inline.", maxLength=262144),
        "experimentSpecRef": _o(
            "The experiment spec text from a ConfigMap key instead of inline (copied into the run when it starts).",
            {"name": _name("ConfigMap name."),
             "key": _s("Key holding the spec text.", default=d.DEFAULT_SPEC_CONFIGMAP_KEY, maxLength=253)},
            required=("name",),
        ),
        "keySecretRef": _o(
            "The Secret key holding the model encryption key; it reaches the trainer as the environment "
            "variable KESTREL_KEY, never on a command line.",
            {"name": _name("Secret name."), "key": _s("Key in the Secret.", default=d.DEFAULT_KEY_SECRET_KEY,
                                                      maxLength=253)},
            required=("name",),
        ),
        "gpus": _i(f"Total GPUs of the run (0: CPU only). Default {default_gpus}.", default=default_gpus,
                   minimum=par.BOUNDS["gpus"].minimum),
        "numProcesses": _i("MPI/Horovod ranks; each gets gpus/numProcesses GPUs (more than 1 is model "
                           "parallelism); with gpus 0, CPU ranks, one per worker pod. Default: gpus (or 1 when "
                           "gpus is 0).", minimum=par.BOUNDS["processes"].minimum),
        "gpusPerNode": _i("GPUs per node, used to pack ranks into worker pods. Default: the operator's "
                          "KESTREL_GPUS_PER_NODE.", minimum=par.BOUNDS["gpus_per_node"].minimum),
        "gpuResource": _s("The extended resource the GPUs are requested as: nvidia.com/gpu, a MIG profile "
                          "(nvidia.com/mig-1g.10gb) or a renamed/time-sliced resource; the count is gpus either way. "
                          "Default: the operator's KESTREL_GPU_RESOURCE.", maxLength=253,
                          pattern=GPU_RESOURCE_PATTERN),
        "network": _o(
            "Opt-in for NCCL over InfiniBand/RoCE (docs/gpu.md: what it costs in isolation), on the pods that run "
            "ranks.",
            {"hostNetwork": _b("Share the node's network namespace (hostNetwork, dnsPolicy ClusterFirstWithHostNet): "
                               "the node's RDMA interfaces become visible; one such worker per node (sshd port "
                               "2222)."),
             "ipcLock": _b("Add the IPC_LOCK capability (RDMA pins memory); mpirun then no longer pins its own "
                           "traffic to TCP."),
             "nccl": {"type": "object", "description": "NCCL_* variables for every rank (e.g. NCCL_IB_HCA, "
                      "NCCL_SOCKET_IFNAME), forwarded by mpirun.", "maxProperties": 64,
                      "additionalProperties": {"type": "string", "maxLength": 4096}}},
        ),
        "image": _s("Trainer image. Default: the operator's KESTREL_GPU_IMAGE when gpus > 0, else its "
                    "KESTREL_DEFAULT_IMAGE.", maxLength=1024),
        "imagePullPolicy": _s("Image pull policy of the trainer containers.", enum=list(d.IMAGE_PULL_POLICIES)),
        "imagePullSecrets": {
            "type": "array",
            "description": "Secrets for pulling the trainer image.",
            "maxItems": 16,
            "items": _o("A Secret in this namespace.", {"name": _name("Secret name.")}, required=("name",)),
        },
        "volumes": _o(
            "Volumes mounted into every pod of the run. results: unless storage.resultsPath is set; data (for a "
            "ClassificationTrain): unless storage is set (the spec text's dataset paths are s3:// URLs then).",
            {
                "data": _volume("data", d.DEFAULT_DATA_MOUNT, ", read-only (datasets, calibration images)"),
                "results": _volume("results", d.DEFAULT_RESULTS_MOUNT, " (checkpoints, logs, outputs)",
                                   {"fixOwnership": {"type": "boolean", "default": False,
                                                     "description": FIX_OWNERSHIP_DOC}}),
            },
            rules=cel.cel_at(cel.VOLUMES, kind),
        ),
        "storage": _storage(),
        "resources": _requirements(
            "CPU/memory requests and limits of each pod that runs ranks; nvidia.com/gpu is set from gpus."),
        "nodeSelector": {"type": "object", "description": "Node labels the pods must match.",
                         "additionalProperties": {"type": "string"}},
        "tolerations": {
            "type": "array",
            "description": "Tolerations of the pods (e.g. for tainted GPU nodes).",
            "maxItems": 32,
            "items": _o("A toleration (core/v1).", {
                "key": _s("Taint key.", maxLength=317),
                "operator": _s("Exists or Equal.", enum=["Exists", "Equal"]),
                "value": _s("Taint value.", maxLength=63),
                "effect": _s("Taint effect.", enum=["NoSchedule", "PreferNoSchedule", "NoExecute"]),
                "tolerationSeconds": _i("How long a NoExecute taint is tolerated.", fmt="int64"),
            }),
        },
        "priorityClassName": _name("PriorityClass of the pods."),
        "serviceAccountName": _name("ServiceAccount of the pods. Default: one the operator creates; either way "
                                    "the operator binds it to a Role that can patch this resource's status."),
        "backoffLimit": _i("Retries of a failed run (each starts the trainer again).",
                           default=d.DEFAULT_BACKOFF_LIMIT, minimum=0),
        "activeDeadlineSeconds": _i("Fail the run after this many seconds.", minimum=1, fmt="int64"),
        "ttlSecondsAfterFinished": _i("Seconds a finished run's MPIJob and pods stay (then the MPI Operator deletes "
                                      "them; status, files and Events keep the result). Default: the operator's "
                                      "KESTREL_RUN_TTL_SECONDS (chart value runTTLSecondsAfterFinished).",
                                      minimum=0, fmt="int32"),
        "retryLimit": _i("Attempts started again after one fails for a reason that is not the trainer's own error "
                         "(a pod evicted, preempted or deleted, a node lost, a rank gone): each deletes the failed "
                         "attempt's pods and resumes from the newest checkpoint in the run's folder. A trainer error "
                         f"(bad spec, key or data) is never retried. 0: never. Default {d.DEFAULT_RETRY_LIMIT}.",
                         default=d.DEFAULT_RETRY_LIMIT, minimum=0),
        "keepRuns": _i("Old runs whose folders (<results>/runs/<runHash>) are kept besides the current and the "
                       "promoted run; a new run's launcher removes older ones from a results volume (runs in "
                       "object storage leave status.runs but their objects stay). A spec edited back to a kept run's "
                       f"spec takes its result back with no new run. Default {d.DEFAULT_KEEP_RUNS}.",
                       default=d.DEFAULT_KEEP_RUNS, minimum=0),
        "shmSize": {"description": "Size limit of the /dev/shm memory volume (default: no limit).",
                    "anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True},
        **_scheduling_spec(),
    }


def _string_map(desc: str) -> Schema:
    return {"type": "object", "description": desc, "additionalProperties": {"type": "string"}}


def _scheduling_spec() -> dict[str, Schema]:
    """Queueing, gang scheduling and pod passthrough fields (changing suspend, tolerations or
    activeDeadlineSeconds does not restart a run; see docs/operator.md)."""
    return {
        "suspend": _b("Create the run suspended (MPIJob runPolicy.suspend: no pods) or suspend a running one; "
                      "false resumes it. Leave unset with Kueue (Kueue suspends and admits the MPIJob)."),
        "queueName": _s(f"Kueue LocalQueue: sets the label {d.KUEUE_QUEUE_LABEL} on the MPIJob.", maxLength=63),
        "schedulingPolicy": _o(
            "Gang scheduling: the MPIJob's runPolicy.schedulingPolicy, turned into a PodGroup by the MPI Operator "
            "when it runs with --gang-scheduling=volcano or the scheduler-plugins coscheduler.",
            {
                "minAvailable": _i("Pods that must be schedulable together (default: all pods of the run).",
                                   minimum=1),
                "queue": _s("Volcano queue.", maxLength=253),
                "priorityClass": _name("PriorityClass of the PodGroup."),
                "scheduleTimeoutSeconds": _i("Coscheduler: how long the PodGroup may wait for all its pods.",
                                             minimum=1),
            },
        ),
        "schedulerName": _name("Scheduler of every pod (e.g. volcano, scheduler-plugins-scheduler)."),
        "labels": _string_map("Extra labels on the MPIJob and every pod (not kestrel.dev/*, "
                              "app.kubernetes.io/managed-by, app.kubernetes.io/name, training.kubeflow.org/*)."),
        "annotations": _string_map("Extra annotations on the MPIJob and every pod."),
        "env": {
            "type": "array",
            "description": "Extra environment of every trainer container (NCCL_*, proxies); forwarded to every "
                           "rank by mpirun. Names starting with KESTREL_ are the operator's.",
            "maxItems": 64,
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": _s("Variable name.", maxLength=256),
                    "value": _s("Value.", maxLength=32768),
                    "valueFrom": {"type": "object", "description": "core/v1 EnvVarSource.",
                                  "x-kubernetes-preserve-unknown-fields": True},
                },
            },
        },
        "affinity": {"type": "object", "description": "core/v1 Affinity of every pod.",
                     "x-kubernetes-preserve-unknown-fields": True},
        "runtimeClassName": _name("RuntimeClass of every pod (e.g. nvidia)."),
        "launcherResources": _requirements(
            "Requests and limits of a launcher that only runs mpirun (default requests 250m CPU / 256Mi, limits "
            "1 CPU / 512Mi, so namespaces whose ResourceQuota demands limits accept it)."),
    }


def _spec_schema(kind: str) -> Schema:
    props = _common_spec(kind)
    required = ["keySecretRef"]
    if kind == "ClassificationTrain":
        props.update({
            "useAmp": _b("Automatic mixed precision (--use_amp)."),
            "initEpoch": _i("Resume: start at this epoch from the previous epoch's checkpoint (--init_epoch).",
                            minimum=1),
            "pretrainedModel": _model_ref("Pretrained weights, overriding train_config.pretrained_model_path; "
                                          "retraining a pruned model is fromPrune."),
            "promotion": _o(
                "Quality gate: a run that succeeds becomes the promoted model (what fromTrain references and "
                "status.promoted name) only if its end-of-run evaluation on eval_config's data passes. A run that "
                "misses it ends Succeeded with the condition Promoted=False, and dependents keep the promoted "
                "model. Without it every successful run is promoted. Changing the thresholds starts no run; "
                "adding or removing the gate does (the run evaluates at its end).",
                {
                    "metric": _s("top1, or topK (eval_config.top_k).", default=d.DEFAULT_PROMOTION_METRIC,
                                 enum=list(d.PROMOTION_METRICS)),
                    "minimum": {"type": "number", "minimum": 0, "maximum": 1,
                                "description": "The metric must be at least this (0-1)."},
                    "maxDrop": {"type": "number", "minimum": 0, "maximum": 1,
                                "description": "The metric may be at most this much below the promoted run's "
                                               "(0: at least as good)."},
                },
            ),
        })
    else:
        required.append("model")
    if kind == "ClassificationPrune":
        props.update({
            "model": _model_ref("The model to prune."),
            "outputPath": _s("The pruned model (default <results>/pruned/<name>.tlt); must be in the results "
                             "location (the results volume's mountPath or storage.resultsPath).", pattern=PATH_OR_URL,
                             maxLength=4096),
            "normalizer": _s("Score normalisation within a layer (-n).", default=d.DEFAULT_NORMALIZER,
                             enum=list(d.NORMALIZERS)),
            "equalizationCriterion": _s("How scores of layers joined by element-wise ops combine (-eq).",
                                        default=d.DEFAULT_EQUALIZATION, enum=list(d.EQUALIZATION_CRITERIA)),
            "pruningGranularity": _i("Kept filters are a multiple of this (-pg).", default=d.DEFAULT_GRANULARITY,
                                     minimum=1),
            "pruningThreshold": {"type": "number", "description": "Filters scoring at or below this are pruned "
                                 "(-pth).", "default": d.DEFAULT_THRESHOLD, "minimum": 0, "maximum": 1},
            "minNumFilters": _i("Minimum filters kept per layer (-nf).", default=d.DEFAULT_MIN_FILTERS, minimum=1),
            "excludedLayers": {"type": "array", "description": "Layers never pruned (-el).", "maxItems": 1024,
                               "items": {"type": "string", "maxLength": 256}},
        })
    if kind == "ClassificationExport":
        props.update({
            "model": _model_ref("The model to export."),
            "outputPath": _s("The exported model (default <results>/export/<name>.etlt); must be in the "
                             "results location (the results volume's mountPath or storage.resultsPath).",
                             pattern=PATH_OR_URL, maxLength=4096),
            "dataType": _s("Engine precision (--data_type).", default=d.DEFAULT_DATA_TYPE, enum=list(d.DATA_TYPES)),
            "genDsConfig": _b("Also write a DeepStream nvinfer config and labels.txt (--gen_ds_config)."),
            "calibration": _o("INT8 calibration.", {
                "imageDir": _s("Images to calibrate on (--cal_image_dir).", pattern=PATH_OR_URL, maxLength=4096),
                "cacheFile": _s("Calibration cache to write or reuse (--cal_cache_file).", pattern=PATH_OR_URL,
                                maxLength=4096),
                "batches": _i("Calibration batches (--batches).", minimum=1),
                "batchSize": _i("Calibration batch size (--batch_size).", minimum=1),
            }),
            "maxBatchSize": _i("Maximum engine batch size (--max_batch_size).", minimum=1),
            "engineFile": _s("Also build a TensorRT engine here (--engine_file).", pattern=PATH_OR_URL,
                             maxLength=4096),
        })
    return _o(f"Desired state of a {kind}: a change starts a new run (the running one is stopped).", props,
              required=tuple(required), rules=cel.cel_at(cel.SPEC, kind))


def _status_schema(kind: str) -> Schema:
    time = {"type": "string", "format": "date-time"}
    props: dict[str, Schema] = {
        "phase": _s("Pending, Suspended, Running, Succeeded or Failed.", enum=list(PHASES)),
        "reason": _s("Why, as a CamelCase word (docs/operator.md lists them): InvalidSpec, SpecNotFound, "
                     "ImagePullBackOff, Unschedulable, ..., or the MPIJob's reason."),
        "message": _s("Human-readable detail (for InvalidSpec the spec loader's message with its line)."),
        "observedGeneration": _i("The metadata.generation this status describes.", fmt="int64"),
        "mpiJobName": _s("The MPIJob of the current run."),
        "startTime": {**time, "description": "When the run started."},
        "completionTime": {**time, "description": "When the run finished."},
        "outputPath": _s("The final artifact (model, pruned model, exported file) as the run's pods see it."),
        "output": _o("Where the final artifact is on its volume (what fromTrain/fromPrune references mount); only "
                     "relativePath when it is in object storage (outputPath is its URL).", {
            "claimName": _s("PersistentVolumeClaim."), "subPath": _s("Sub-path of the results volume."),
            "relativePath": _s("Path below the sub-path.")}),
        "inputModelPath": _s("The model this run read, as its pods see it."),
        "runHash": _s("The current run's identity (spec, spec text, input model); its folder is runPath."),
        "runPath": _s("The current run's folder, <results mountPath>/runs/<runHash> as its pods see it, or "
                      "<storage.resultsPath>/runs/<runHash> (an s3:// URL)."),
        "attempt": _i("The current run's attempt (1 + the retries so far; spec.retryLimit)."),
        runs.PROMOTED: _o("The promoted run: the model dependents (fromTrain/fromPrune) read.", _record_schema()),
        runs.RUNS: {"type": "array", "description": "Run history, newest first: the current run, the promoted "
                    "one and up to spec.keepRuns others (their folders are kept).",
                    "items": _o("A run.", _record_schema())},
        "conditions": {
            "type": "array",
            "description": "Ready (the one to wait on: True once the run succeeded and its model is the promoted "
                           "one), Reconciling (a run of this generation is pending, running or held), Stalled "
                           "(failed, or cannot go on without a change), Promoted (the gate's verdict), and Created, "
                           "Running, Restarting, Succeeded, Failed mirrored from the MPIJob.",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
            "items": _o("A condition.", {
                "type": _s("Condition type."),
                "status": _s("True, False or Unknown.", enum=["True", "False", "Unknown"]),
                "reason": _s("Machine-readable reason."),
                "message": _s("Detail."),
                "lastTransitionTime": {**time, "description": "When status last changed."},
                "observedGeneration": _i("The metadata.generation this condition was set for.", fmt="int64"),
            }, required=("type", "status")),
        },
    }
    if kind == "ClassificationTrain":
        props[contract.PROGRESS] = _o("Written by the trainer's rank 0 after every epoch.", _progress_schema())
    return _o(f"Observed state of a {kind}, written by the operator (and progress by the trainer).", props)


def _record_schema() -> dict[str, Schema]:
    """A run record (status.runs[], status.promoted): status/runs.py's fields."""
    out = _fields_schema(runs.RECORD_FIELDS)
    out["output"] = _o("Where the artifact is on its volume.", {
        "claimName": _s("PersistentVolumeClaim."), "subPath": _s("Sub-path of the results volume."),
        "relativePath": _s("Path below the sub-path.")})
    out["evaluation"] = _o(runs.RECORD_FIELDS["evaluation"][1],
                           {k: v for k, v in _progress_schema().items() if k in EVALUATION_FIELDS})
    out["attemptFailures"] = {"type": "array", "description": runs.RECORD_FIELDS["attemptFailures"][1],
                               "items": _o("An attempt that ended.", {
                                   "attempt": _i("Its number."), "reason": _s("Why (a status reason)."),
                                   "message": _s("Detail."),
                                   "time": {"type": "string", "format": "date-time", "description": "When."}})}
    out["gate"] = _o(runs.RECORD_FIELDS["gate"][1], {
        "metric": _s("top1 or topK."), "minimum": {"type": "number", "description": "spec.promotion.minimum."},
        "maxDrop": {"type": "number", "description": "spec.promotion.maxDrop."}})
    return out


def _progress_schema() -> dict[str, Schema]:
    """status.progress as the trainer writes it (contract.PROGRESS_FIELDS)."""
    return _fields_schema(contract.PROGRESS_FIELDS)


def _fields_schema(fields: Any) -> dict[str, Schema]:
    out: dict[str, Schema] = {}
    for name, (kind, description) in fields.items():
        if kind == "integer":
            out[name] = _i(description)
        elif kind == "date-time":
            out[name] = {"type": "string", "format": "date-time", "description": description}
        else:
            out[name] = {"type": kind, "description": description}
    return out


def _columns(kind: str) -> list[dict[str, Any]]:
    cols = [{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}]
    progress = f".status.{contract.PROGRESS}"
    if kind == "ClassificationTrain":
        cols += [
            {"name": "Epoch", "type": "integer", "jsonPath": f"{progress}.{contract.PROGRESS_EPOCH}"},
            {"name": "Max", "type": "integer", "jsonPath": f"{progress}.{contract.PROGRESS_MAX_EPOCH}"},
            {"name": "Progress", "type": "integer", "jsonPath": f"{progress}.{contract.PROGRESS_PERCENT}",
             "description": "Percent of the run's training steps done."},
            {"name": "ETA", "type": "string", "jsonPath": f"{progress}.{contract.PROGRESS_ETA}",
             "description": "Time left, from rank 0's measured step time."},
            {"name": "Val Acc", "type": "number", "jsonPath": f"{progress}.{contract.PROGRESS_VAL_ACCURACY}"},
            {"name": "Promoted", "type": "string", "jsonPath": f".status.{runs.PROMOTED}.runHash", "priority": 1},
        ]
    else:
        cols.append({"name": "Output", "type": "string", "jsonPath": ".status.outputPath"})
    cols += [
        {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
        {"name": "MPIJob", "type": "string", "jsonPath": ".status.mpiJobName", "priority": 1},
        {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return cols


def crd(kind: str) -> dict[str, Any]:
    plural = KINDS[kind]
    what = {"ClassificationTrain": "trains an image classifier", "ClassificationPrune": "prunes a trained "
            "classifier", "ClassificationExport": "exports a classifier for deployment"}[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/name": "kestrel"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
                      "shortNames": [SHORT_NAMES[kind]], "categories": ["kestrel"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": _columns(kind),
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": f"A {kind} {what} with a classification_tf1 spec, run as a Kubeflow MPIJob "
                                   "by the Kestrel operator.",
                    "properties": {
                        "apiVersion": {"type": "string", "description": "kestrel.dev/v1alpha1"},
                        "kind": {"type": "string", "description": kind},
                        "metadata": {"type": "object"},
                        "spec": _spec_schema(kind),
                        "status": _status_schema(kind),
                    },
                    "required": ["spec"],
                }},
            }],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [crd(kind) for kind in KINDS]
