"""Experiment tracking: MLflow, when MLFLOW_TRACKING_URI is set (MLflow's own convention).

Rank 0 of `kestrel train` opens one MLflow run per results folder, named after the folder, and logs:
- parameters: every resolved spec field by its dotted path (`kestrel spec show`'s names);
- per epoch (step = epoch number): the row written to training.csv (loss, acc, val_loss, val_acc, lr);
- at the end: summary numbers, the artifacts (final model, training_curves.png, the spec, summary.json) and,
  after `train --evaluate`, the evaluation (top-1/top-k, results.json, confusion_matrix.png).
The run id is kept in RESULTS/tracking.json, so a resumed run (same folder) continues the same MLflow run.
The original's visualizer.wandb_config and visualizer.clearml_config log the same to W&B and ClearML (below).

The experiment is MLFLOW_EXPERIMENT_ID or MLFLOW_EXPERIMENT_NAME (created if missing), else MLflow's default.
Credentials (MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME/PASSWORD) are read by MLflow from the environment
and never written anywhere by Kestrel. Tracking never stops training: an unreachable server or any MLflow error
is one warning line, then the run goes on untracked. Without the `mlflow` package, one warning naming the extra.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any, Optional

log = logging.getLogger("kestrel.tracking")

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
TRACKING_FILE = "tracking.json"  # in the results folder: {"mlflow": {"tracking_uri", "experiment_id", "run_id"}}
EXTRA = "kestrel-classify[tracking]"  # the distribution (pyproject.toml [project] name) and its extra with mlflow
EPOCH_METRICS = ("loss", "acc", "val_loss", "val_acc", "lr")  # training.csv's columns (callbacks.CSV_FIELDS)
_MAX_PARAM_VALUE = 6000  # MLflow's limit on a parameter's value
_PARAMS_PER_CALL = 100  # MLflow's limit on parameters per log_batch


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI for an http(s) server, else the run id."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return run_id


def spec_params(fields: Mapping[str, Any]) -> dict[str, str]:
    """The spec's resolved fields as MLflow parameters (strings, within MLflow's size limit; None left out)."""
    params = {}
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            text = ",".join(str(v) for v in value)
        elif isinstance(value, Mapping):
            text = json.dumps(dict(value), sort_keys=True)
        else:
            text = str(value)
        params[name] = text[:_MAX_PARAM_VALUE]
    return params


def epoch_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """An epoch's metrics from its training.csv row (None or "" left out)."""
    return {name: float(row[name]) for name in EPOCH_METRICS if row.get(name) not in (None, "")}


class _Guarded:
    """A tracker's calls go through _call: an error is one warning (the first) and training goes on. LABEL names
    the tracker in the warning, CONSEQUENCE says what still happens."""

    LABEL = ""
    CONSEQUENCE = "training is not affected"
    _failed = False

    def _call(self, fn):
        try:
            return fn()
        except Exception as err:  # the tracker's own errors, requests', ...: never stop training
            if not self._failed:
                log.warning("%s: %s (%s)", self.LABEL, _one_line(err), self.CONSEQUENCE)
            self._failed = True
            return None


class MlflowTracker(_Guarded):
    """One MLflow run, through MlflowClient (no global state: the fluent API's active run is not used)."""

    LABEL, CONSEQUENCE = "MLflow", "tracking goes on where it can; training is not affected"

    def __init__(self, client: Any, tracking_uri: str, experiment_id: str, run_id: str) -> None:
        self.client, self.tracking_uri = client, tracking_uri
        self.experiment_id, self.run_id = experiment_id, run_id

    @property
    def url(self) -> str:
        return run_url(self.tracking_uri, self.experiment_id, self.run_id)

    # --- what the run logs -------------------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        existing = self._call(lambda: self.client.get_run(self.run_id).data.params) or {}
        items = [p for p in items if p.key not in existing]  # a resumed run: parameters cannot be re-set
        changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
        if changed:
            log.warning("MLflow run %s: the spec changed since it started (%s); MLflow keeps the first values",
                        self.run_id, ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else ""))
        for i in range(0, len(items), _PARAMS_PER_CALL):
            self._call(lambda chunk=items[i:i + _PARAMS_PER_CALL]: self.client.log_batch(self.run_id, params=chunk))

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int]) -> None:
        """step None: a one-off value (the evaluation), at step 0."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(name, float(value), now, int(step or 0)) for name, value in metrics.items()]
        if batch:
            self._call(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def log_artifacts(self, paths: Iterable[Optional[str]], artifact_path: Optional[str] = None) -> None:
        for path in paths:
            if path and os.path.isfile(path):
                self._call(lambda p=path: self.client.log_artifact(self.run_id, p, artifact_path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self._call(lambda k=key, v=value: self.client.set_tag(self.run_id, k, v))

    def log_images(self, title: str, images: Any, step: int) -> None:
        """The visualizer's sample images: in TensorBoard (RESULTS/events/images) and ClearML, not in MLflow."""
        del title, images, step

    def finish(self, status: str = "FINISHED") -> None:
        """FINISHED, FAILED or KILLED (a stop: the resumed run sets it RUNNING again)."""
        self._call(lambda: self.client.set_terminated(self.run_id, status))



def log_evaluation(tracker: MlflowTracker, metrics: Mapping[str, Any], results_dir: Optional[str]) -> None:
    """An evaluation (kestrel evaluate's results.json) into the run: eval_top_1_accuracy, eval_top_K_accuracy,
    eval_n_images, and results.json, results.txt, confusion_matrix.png as artifacts under evaluate/."""
    k = int(metrics["top_k"])
    numbers = {"eval_top_1_accuracy": metrics.get("top_1_accuracy"), f"eval_top_{k}_accuracy":
               metrics.get(f"top_{k}_accuracy"), "eval_n_images": metrics.get("n_images")}
    tracker.log_metrics({name: float(v) for name, v in numbers.items() if v is not None}, step=None)
    if results_dir:
        tracker.log_artifacts([os.path.join(results_dir, name)
                               for name in ("results.json", "results.txt", "confusion_matrix.png")], "evaluate")


def open_tracker(results_dir: str, run_name: str, tags: Optional[Mapping[str, str]] = None,
                 environ: Optional[Mapping[str, str]] = None) -> Optional[MlflowTracker]:
    """The MLflow run of this results folder (resumed from RESULTS/tracking.json, else a new one named
    `run_name`), or None when MLFLOW_TRACKING_URI is not set, mlflow is missing or the server cannot be reached."""
    env = os.environ if environ is None else environ
    uri = env.get(TRACKING_URI_ENV, "").strip()
    if not uri:
        return None
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        log.warning("%s is set but the mlflow package is not installed: install %s (pip install '%s') to log "
                    "this run to MLflow; training goes on untracked", TRACKING_URI_ENV, EXTRA, EXTRA)
        return None
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # an unreachable server: a warning in seconds
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    path = os.path.join(results_dir, TRACKING_FILE)
    try:
        client = MlflowClient(uri)
        saved = _read_saved(path, uri)
        if saved is not None:
            run = client.get_run(saved["run_id"])
            client.update_run(run.info.run_id, status="RUNNING")
            tracker = MlflowTracker(client, uri, run.info.experiment_id, run.info.run_id)
            log.info("MLflow: continuing run %s (%s)", run.info.run_id, tracker.url)
            return tracker
        experiment_id = _experiment_id(client, env)
        run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
    except Exception as err:
        log.warning("MLflow (%s): %s; training goes on untracked", uri, _one_line(err))
        return None
    tracker = MlflowTracker(client, uri, experiment_id, run.info.run_id)
    from kestrel_trainer.model_io.files import write_json_atomic

    write_json_atomic(path, {**_read_json(path), "mlflow": {"tracking_uri": uri, "experiment_id": experiment_id,
                                                            "run_id": run.info.run_id, "url": tracker.url}})
    log.info("MLflow: run %s (%s)", run.info.run_id, tracker.url)
    return tracker


def _experiment_id(client: Any, env: Mapping[str, str]) -> str:
    """MLFLOW_EXPERIMENT_ID, else MLFLOW_EXPERIMENT_NAME (created when missing), else MLflow's default ("0")."""
    if env.get("MLFLOW_EXPERIMENT_ID"):
        return env["MLFLOW_EXPERIMENT_ID"]
    name = env.get("MLFLOW_EXPERIMENT_NAME", "").strip()
    if not name:
        return "0"
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else client.create_experiment(name)


def _read_saved(path: str, uri: str) -> Optional[dict[str, str]]:
    """The run recorded in RESULTS/tracking.json for this tracking URI, or None."""
    try:
        with open(path, encoding="utf-8") as fh:
            saved = json.load(fh).get("mlflow") or {}
    except (OSError, ValueError, AttributeError):
        return None
    if saved.get("tracking_uri") != uri or not saved.get("run_id"):
        if saved.get("run_id"):
            log.warning("MLflow: %s names a run on %s, not on %s: a new run is started", path,
                        saved.get("tracking_uri"), uri)
        return None
    return saved


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


# --- W&B: the original's visualizer.wandb_config ----------------------------------------------------------------
WANDB = "train_config.visualizer.wandb_config"
WANDB_EXTRA = "wandb==0.28.0"
_WANDB_MODES = {"ONLINE": "online", "OFFLINE": "offline", "DISABLED": "disabled"}


def wandb_settings(fields: Mapping[str, Any], run_name: str, results_dir: str,
                   environ: Optional[Mapping[str, str]] = None) -> Optional[dict[str, Any]]:
    """wandb.init's arguments from the spec (visualizer.enabled and wandb_config.enabled), else None. The spec's
    mode applies unless WANDB_MODE is set; `key` is never used (W&B reads WANDB_API_KEY, from a Secret)."""
    env = os.environ if environ is None else environ
    if not (fields.get("train_config.visualizer.enabled") and fields.get(f"{WANDB}.enabled")):
        return None
    settings: dict[str, Any] = {
        "project": fields.get(f"{WANDB}.project") or "kestrel",
        "entity": fields.get(f"{WANDB}.entity") or None,
        "name": fields.get(f"{WANDB}.name") or run_name,
        "tags": list(fields.get(f"{WANDB}.tags") or ()) or None,
        "notes": fields.get(f"{WANDB}.notes") or None,
        "dir": fields.get(f"{WANDB}.wandb_dir") or results_dir,
    }
    mode = fields.get(f"{WANDB}.mode")
    if mode and not env.get("WANDB_MODE"):
        settings["mode"] = _WANDB_MODES.get(str(mode).upper(), str(mode).lower())
    return settings


class WandbTracker(_Guarded):
    """One W&B run with the MlflowTracker's methods (the loop and train command call both alike)."""

    LABEL = "W&B"

    def __init__(self, run: Any) -> None:
        self.run = run

    @property
    def url(self) -> str:
        return getattr(self.run, "url", None) or self.run.id

    def log_params(self, params: Mapping[str, str]) -> None:
        self._call(lambda: self.run.config.update(dict(params), allow_val_change=True))

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int]) -> None:
        """step None (the evaluation): at W&B's current step, which never goes back."""
        if not metrics:
            return
        if step is None:
            self._call(lambda: self.run.log(dict(metrics)))
        else:
            self._call(lambda: self.run.log({**metrics, "epoch": int(step)}, step=int(step)))

    def log_artifacts(self, paths: Iterable[Optional[str]], artifact_path: Optional[str] = None) -> None:
        del artifact_path
        for path in paths:
            if path and os.path.isfile(path):
                self._call(lambda p=path: self.run.save(p, base_path=os.path.dirname(p), policy="now"))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        del tags

    def log_images(self, title: str, images: Any, step: int) -> None:
        """The visualizer's sample images: in TensorBoard (RESULTS/events/images) and ClearML, not in W&B."""
        del title, images, step

    def finish(self, status: str = "FINISHED") -> None:
        self._call(lambda: self.run.finish(exit_code=0 if status == "FINISHED" else 1))



def open_wandb(fields: Mapping[str, Any], results_dir: str, run_name: str) -> Optional[WandbTracker]:
    """The W&B run the spec asks for (resumed from RESULTS/tracking.json), or None; a missing `wandb` package
    is one warning naming what to install."""
    settings = wandb_settings(fields, run_name, results_dir)
    if settings is None:
        return None
    if fields.get(f"{WANDB}.key"):
        log.warning("%s.key is not used: a key does not belong in a spec; give W&B WANDB_API_KEY (from a Secret)",
                    WANDB)
    try:
        import wandb
    except ImportError:
        log.warning("%s.enabled is set but the wandb package is not installed: pip install '%s' to log this run "
                    "to W&B; training goes on without it", WANDB, WANDB_EXTRA)
        return None
    path = os.path.join(results_dir, TRACKING_FILE)
    saved = _read_json(path)
    run_id = (saved.get("wandb") or {}).get("run_id")
    try:
        os.makedirs(settings["dir"], exist_ok=True)
        run = wandb.init(**settings, id=run_id, resume="allow" if run_id else None, reinit="create_new")
    except Exception as err:
        log.warning("W&B: %s; training goes on without it", _one_line(err))
        return None
    from kestrel_trainer.model_io.files import write_json_atomic

    write_json_atomic(path, {**_read_json(path), "wandb": {"run_id": run.id, "project": settings["project"],
                                                          "dir": settings["dir"]}})
    log.info("W&B: %s run %s (%s)", "continuing" if run_id else "started", run.id, settings.get("mode") or
             os.environ.get("WANDB_MODE", "online"))
    return WandbTracker(run)


# --- ClearML: the original's visualizer.clearml_config ------------------------------------------------------------
CLEARML = "train_config.visualizer.clearml_config"
CLEARML_EXTRA = "clearml==2.1.12"
CLEARML_PROJECT = "kestrel"  # when the spec names none
# Task.init's automatic logging, all off: Kestrel logs explicitly (the CSV's values, not Keras' or TensorBoard's),
# the command line is not logged (it may hold -k KEY), and no git or package scan runs in the trainer.
_CLEARML_FRAMEWORKS = ("catboost", "fastai", "gradio", "hydra", "joblib", "lightgbm", "matplotlib", "megengine",
                       "pytorch", "scikit", "tensorboard", "tensorflow", "tfdefines", "xgboost", "detect_repository")
# training.csv's columns as ClearML (title, series): train and validation on one plot
CLEARML_SERIES = {"loss": ("loss", "train"), "val_loss": ("loss", "validation"), "acc": ("accuracy", "train"),
                  "val_acc": ("accuracy", "validation"), "lr": ("learning_rate", "lr")}


def clearml_settings(fields: Mapping[str, Any], enabled: bool, run_name: str) -> Optional[dict[str, Any]]:
    """Task.init's project, task name and tags from the spec's clearml_config, or None when it is not in effect
    (`enabled`: the spec has visualizer.enabled and a clearml_config, spec.train.visualizer.clearml)."""
    if not enabled:
        return None
    return {"project_name": fields.get(f"{CLEARML}.project") or CLEARML_PROJECT,
            "task_name": fields.get(f"{CLEARML}.task") or run_name,
            "tags": list(fields.get(f"{CLEARML}.tags") or ()) or None}


class ClearmlTracker(_Guarded):
    """One ClearML Task with the MlflowTracker's methods."""

    LABEL = "ClearML"

    def __init__(self, task: Any) -> None:
        self.task = task

    @property
    def url(self) -> str:
        from clearml import Task

        if Task.is_offline():
            return self.task.id
        return self._call(self.task.get_output_log_web_page) or self.task.id

    def log_params(self, params: Mapping[str, str]) -> None:
        """The spec's fields: the task's configuration (hyperparameters, section "spec")."""
        self._call(lambda: self.task.connect(dict(params), name="spec"))

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int]) -> None:
        """Scalars at iteration `step` (the epoch); step None (the evaluation): single values."""
        logger = self._call(self.task.get_logger)
        if logger is None:
            return
        for name, value in metrics.items():
            if step is None:
                self._call(lambda n=name, v=value: logger.report_single_value(n, float(v)))
            else:
                title, series = CLEARML_SERIES.get(name, (name, name))
                self._call(lambda t=title, s=series, v=value: logger.report_scalar(t, s, float(v), int(step)))

    def log_artifacts(self, paths: Iterable[Optional[str]], artifact_path: Optional[str] = None) -> None:
        """Files as the task's artifacts, named `artifact_path/file name` (the model too: clearml 2.1.12's
        OutputModel fails in offline mode, "'DummyModel' object has no attribute 'locked'")."""
        for path in paths:
            if path and os.path.isfile(path):
                name = f"{artifact_path}/{os.path.basename(path)}" if artifact_path else os.path.basename(path)
                self._call(lambda n=name, p=path: self.task.upload_artifact(n, artifact_object=p,
                                                                            wait_on_upload=True))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        del tags  # the task's tags are the spec's (clearml_config.tags)

    def log_images(self, title: str, images: Any, step: int) -> None:
        """The visualizer's sample images (uint8, N x H x W x C) as debug samples at iteration `step`."""
        logger = self._call(self.task.get_logger)
        if logger is None:
            return
        for i, image in enumerate(images):
            self._call(lambda s=f"image_{i}", x=image: logger.report_image(title, s, int(step), image=x))

    def finish(self, status: str = "FINISHED") -> None:
        """The task closed: completed, or first marked stopped (a stop: a resumed run continues the task) or
        failed."""
        if status == "KILLED":
            self._call(lambda: self.task.mark_stopped(force=True, status_message="stopped; resumed later"))
        elif status != "FINISHED":
            self._call(lambda: self.task.mark_failed(status_reason="training failed", force=True))
        self._call(self.task.close)



def open_clearml(fields: Mapping[str, Any], enabled: bool, results_dir: str,
                 run_name: str) -> Optional[ClearmlTracker]:
    """The ClearML task the spec asks for (continued from RESULTS/tracking.json), or None. The server and the
    credentials are ClearML's own (CLEARML_API_HOST, CLEARML_API_ACCESS_KEY/SECRET_KEY, clearml.conf), never the
    spec's; CLEARML_OFFLINE_MODE=1 writes an offline session. A missing `clearml` package is one warning."""
    settings = clearml_settings(fields, enabled, run_name)
    if settings is None:
        return None
    try:
        from clearml import Task
    except ImportError:
        log.warning("%s is set but the clearml package is not installed: pip install '%s' to log this run to "
                    "ClearML; training goes on without it", CLEARML, CLEARML_EXTRA)
        return None
    path = os.path.join(results_dir, TRACKING_FILE)
    task_id = (_read_json(path).get("clearml") or {}).get("task_id")
    # A resume continues the recorded task with iteration offset 0 (continue_last_task=0 and reuse_last_task_id=ID,
    # Task.init's documented pair): the epochs are absolute, while continue_last_task=ID would shift them by the last
    # iteration reported. ClearML prints "overwriting (reusing) task" for it; the task and its reports are kept.
    try:
        task = Task.init(**settings, reuse_last_task_id=task_id or False, continue_last_task=0 if task_id else False,
                         auto_connect_arg_parser=False, auto_connect_frameworks=dict.fromkeys(_CLEARML_FRAMEWORKS,
                                                                                              False),
                         auto_connect_streams=False, auto_resource_monitoring=True)
    except Exception as err:
        log.warning("ClearML: %s; training goes on without it", _one_line(err))
        return None
    from kestrel_trainer.model_io.files import write_json_atomic

    write_json_atomic(path, {**_read_json(path), "clearml": {"task_id": task.id,
                                                            "project": settings["project_name"]}})
    tracker = ClearmlTracker(task)
    log.info("ClearML: %s task %s (%s)", "continuing" if task_id else "started", task.id, tracker.url)
    return tracker


class Trackers:
    """Every tracker a run logs to (MLflow, W&B, ClearML), called as one."""

    def __init__(self, trackers: Iterable[Any]) -> None:
        self.trackers = [t for t in trackers if t is not None]

    @property
    def url(self) -> str:
        return self.trackers[0].url  # MLflow's first: the one status.progress.trackerRun links

    def __getattr__(self, name: str):
        def call(*args: Any, **kwargs: Any) -> None:
            for tracker in self.trackers:
                getattr(tracker, name)(*args, **kwargs)
        return call


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
