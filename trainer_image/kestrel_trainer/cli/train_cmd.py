"""`kestrel train` (and `classification_tf1 train`): train a classifier from a spec file.

With `--evaluate` (a Kestrel extension), rank 0 then evaluates the final model on eval_config's data exactly
as `kestrel evaluate -e SPEC -m FINAL_MODEL` does and reports top-1/top-k to the cluster status: the
operator's promotion gate reads them as soon as the run succeeds.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Optional

from kestrel_trainer import storage
from kestrel_trainer.cli.common import (
    SPEC_HELP,
    add_common_task_arguments,
    add_format_argument,
    add_key_argument,
    check_format_key,
    resolve_key,
    resolve_processes,
    setup_logging,
    stage_spec_inputs,
)
from kestrel_trainer.errors import KestrelError
from kestrel_trainer.spec import load_spec
from kestrel_trainer.spec.contract import PREEMPTED_EXIT_CODE
from kestrel_trainer.spec.types import ExperimentSpec

ORDER = 30
log = logging.getLogger("kestrel.train")


IMAGE_CACHE_MODES = ("auto", "on", "off")  # data/decoded.CACHE_MODES, without importing NumPy for --help


def run(args: argparse.Namespace) -> int:
    if args.image_cache not in IMAGE_CACHE_MODES:  # argparse does not check a default from the environment
        raise KestrelError(f"KESTREL_IMAGE_CACHE must be one of {', '.join(IMAGE_CACHE_MODES)}, "
                           f"got {args.image_cache!r}", exit_code=2)
    spec = load_spec(args.experiment_spec, "train")
    eval_spec = load_spec(args.experiment_spec, "evaluate") if args.evaluate else None  # its errors before training
    setup_logging(args.log_file, args.verbose)
    for warning in spec.warnings:
        log.warning("%s", warning)
    processes = resolve_processes(args)
    if args.dry_run:
        from kestrel_trainer.train.dry_run import describe_run

        spec = stage_spec_inputs(spec, train=True)

        results = storage.output_dir(args.results_dir, upload=False)  # s3://: the bucket's checkpoints, none fetched
        for line in describe_run(spec, results, args.init_epoch, processes, storage.input_path(args.classmap)):
            print(storage.describe(line))
        if eval_spec is not None:
            print(f"evaluate: then the final model on {eval_spec.eval.eval_dataset_path}, into "
                  f"{os.path.join(args.results_dir, 'evaluate', 'results.json')} (--evaluate)")
        return 0
    from kestrel_trainer.train import devices
    from kestrel_trainer.train.distributed import Ranks, init_ranks, launched_world

    world = launched_world()
    # No silent CPU: an explicit --gpus N (or KESTREL_REQUIRE_GPUS) that TensorFlow cannot meet is one line, exit 2,
    # before anything is read or written; without --gpus, the CPU is said in one line. A rank needs its share.
    devices.check(args, per_rank_of=world.size if world is not None else 1)
    processes = resolve_processes(args)
    if eval_spec is not None:
        from kestrel_trainer.data import folders

        eval_spec = stage_spec_inputs(eval_spec, evaluate=True)
        folders.scan(eval_spec.eval.eval_dataset_path)  # a missing or empty eval folder fails now, not after training
    key = resolve_key(args)
    if not key:
        check_format_key(args.model_format, key)
        log.warning("no key given (-k or KESTREL_KEY): checkpoints are written unencrypted as .hdf5")
    if world is None and processes > 1:
        # Not under mpirun/horovodrun: start the ranks ourselves (each one comes back here and joins).
        from kestrel_trainer.train.launcher import launch, rank_arguments

        return launch(processes, rank_arguments(args), key,
                      storage.output_dir(args.results_dir, upload=False, reconcile=False), spec.model.arch)
    ranks = Ranks()
    if world is not None and world.size > 1:
        if args.num_processes not in (None, -1) and processes != world.size:
            raise KestrelError(f"--num_processes {processes} but the launcher started {world.size} "
                               "ranks; start as many ranks as --num_processes says", exit_code=2)
        ranks = init_ranks()
        if not ranks.is_chief:  # rank 0 reports progress; the others speak only of trouble
            logging.getLogger().setLevel(logging.WARNING)
    from kestrel_trainer.train.loop import TrainOptions, run_training

    spec = stage_spec_inputs(spec, train=True)  # s3:// data and models: local copies (docs/storage.md)
    # s3://: a local mirror folder, uploaded as it is written (rank 0; the others only read from it)
    results_dir = storage.output_dir(args.results_dir, upload=ranks.is_chief, reconcile=ranks.is_chief)
    tracker = open_run_tracker(args.results_dir, results_dir, spec) if ranks.is_chief else None
    try:
        summary = run_training(spec, TrainOptions(
            results_dir=results_dir,
            key=key,
            init_epoch=args.init_epoch,
            classmap_path=storage.input_path(args.classmap),
            skip_bad_images=args.skip_bad_images,
            use_amp=args.use_amp,
            ranks=ranks,
            gpus=args.gpus,
            gpu_index=tuple(args.gpu_index) if args.gpu_index else None,
            image_cache=args.image_cache,
            model_format=args.model_format,
            tracker=tracker,
            spec_file=args.experiment_spec,
        ))
        if eval_spec is not None and ranks.is_chief:  # the other ranks are done: they exit now
            evaluate_final_model(eval_spec, summary.get("final_model"), key, args.skip_bad_images, tracker)
    except BaseException as err:
        if tracker is not None:  # a stop (SIGTERM, exit 143) is resumed later: KILLED, RUNNING again on resume
            tracker.finish("KILLED" if getattr(err, "exit_code", None) == PREEMPTED_EXIT_CODE
                           or isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    if tracker is not None:
        tracker.finish("FINISHED")
    return 0


def open_run_tracker(results_arg: str, results_dir: str, spec: ExperimentSpec):
    """The experiment trackers' runs for this results folder (MLflow when MLFLOW_TRACKING_URI is set, W&B and
    ClearML when the spec's visualizer.wandb_config / clearml_config are in effect), named after the folder (in a
    cluster, the run's resource), or None."""
    from kestrel_trainer.report.tracking import Trackers, open_clearml, open_tracker, open_wandb
    from kestrel_trainer.train.loop import create_results_folder

    name = results_arg.rstrip("/").rsplit("/", 1)[-1] or "kestrel"
    create_results_folder(results_dir)  # the trackers keep their run id there; an unwritable folder is one line
    tracker = Trackers([open_tracker(results_dir, name, tags={"kestrel.results_dir": results_arg}),
                        open_wandb(spec.fields, results_dir, name),
                        open_clearml(spec.fields, spec.train.visualizer.clearml, results_dir, name)])
    if not tracker.trackers:
        return None
    from kestrel_trainer.report.cluster_status import ClusterStatusReporter

    reporter = ClusterStatusReporter.from_env()  # in a cluster: status.progress.trackerRun links the run
    if reporter is not None:
        reporter.report_tracker(tracker.url)
    return tracker


def evaluate_final_model(spec: ExperimentSpec, model_path: Optional[str], key: Optional[str],
                         skip_bad_images: bool, tracker: Any = None) -> None:
    """--evaluate: `kestrel evaluate -e SPEC -m MODEL` (results.json in RUN/evaluate), one log line, and
    top-1/top-k into the cluster status (in a cluster), sent before this returns."""
    if not model_path:
        raise KestrelError("--evaluate: the run has no final model to evaluate")
    from kestrel_trainer.evaluate import default_results_dir, run_evaluation
    from kestrel_trainer.report.cluster_status import ClusterStatusReporter

    results = default_results_dir(model_path)
    metrics = run_evaluation(spec, model_path, key, results, skip_bad_images=skip_bad_images)
    k = metrics["top_k"]
    top1, topk = metrics["top_1_accuracy"], metrics[f"top_{k}_accuracy"]
    log.info("evaluation of %s on %d images of %s: top-1 accuracy %.4f, top-%d accuracy %.4f -> %s",
             os.path.basename(model_path), metrics["n_images"], metrics["dataset"], top1, k, topk,
             os.path.join(results, "results.json"))
    reporter = ClusterStatusReporter.from_env()
    if reporter is not None:
        reporter.report_evaluation(top1, topk, k)
    if tracker is not None:
        from kestrel_trainer.report.tracking import log_evaluation

        log_evaluation(tracker, metrics, results)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a classifier from a spec file")
    p.add_argument("-e", "--experiment_spec_file", "--experiment_spec", dest="experiment_spec", required=True,
                   metavar="SPEC", help=SPEC_HELP)
    p.add_argument("-r", "--results_dir", required=True, metavar="RESULTS",
                   help="run folder: checkpoints (weights/), training.csv, status.json, events/; an existing run "
                   "there is resumed from its newest checkpoint (a local path or s3://bucket/prefix)")
    add_key_argument(p)
    p.add_argument("--init_epoch", type=int, default=None,
                   help="resume at epoch N from the epoch N-1 checkpoint (default: the newest checkpoint, if any)")
    p.add_argument("-c", "--classmap_json", "--classmap", dest="classmap", default=None,
                   help="classmap.json fixing the class order")
    p.add_argument("--skip-bad-images", "--skip_bad_images", dest="skip_bad_images", action="store_true",
                   help="train on the rest when some images cannot be decoded (default: refuse, listing them)")
    p.add_argument("--image-cache", "--image_cache", dest="image_cache", choices=IMAGE_CACHE_MODES,
                   default=os.environ.get("KESTREL_IMAGE_CACHE") or "auto",
                   help="keep the decoded training images in memory so epochs do not decode them again: auto "
                   "(when they fit in a quarter of the free memory), on, off (default: $KESTREL_IMAGE_CACHE or auto)")
    add_format_argument(p, "checkpoint")
    p.add_argument("--evaluate", action="store_true",
                   help="after training, rank 0 evaluates the final model on eval_config.eval_dataset_path as "
                   "`kestrel evaluate` does (RESULTS/evaluate/results.json) and reports top-1/top-k to the "
                   "cluster status (a Kestrel extension)")
    p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="print what the run would build and do (model, data, schedule, resume), then exit")
    add_common_task_arguments(p)
    p.set_defaults(func=run)
