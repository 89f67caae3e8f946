"""`kestrel evaluate` (and `classification_tf1 evaluate`): metrics of a model on a labelled folder."""

from __future__ import annotations

import argparse
import os

from kestrel_trainer.cli.common import (
    add_common_task_arguments,
    add_key_argument,
    apply_device_flags,
    require_key_for,
    resolve_key,
    setup_logging,
)
from kestrel_trainer.errors import KestrelError, SpecError
from kestrel_trainer.spec import load_spec

ORDER = 40


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.experiment_spec, "evaluate")
    setup_logging(args.log_file, args.verbose)
    model_path = args.model_path or spec.eval.model_path
    if not model_path:
        raise SpecError(f"{args.experiment_spec}: eval_config.model_path: is required for evaluate (or pass -m MODEL)")
    key = resolve_key(args)
    require_key_for(model_path, key)
    from kestrel_trainer.evaluate import default_results_dir, format_original_report, format_report, run_evaluation
    from kestrel_trainer.report.status import StatusLogger

    results = args.results_dir or default_results_dir(model_path)
    # As the original: status.json in the -r folder (only when -r is given).
    status = StatusLogger(os.path.join(args.results_dir, "status.json")) if args.results_dir else None
    if status:
        status.write("STARTED", "Starting evaluation.")
    try:
        apply_device_flags(args)
        metrics = run_evaluation(spec, model_path, key, results, args.classmap, args.skip_bad_images)
    except (KestrelError, KeyboardInterrupt) as err:
        if status:
            status.write("FAILURE", getattr(err, "message", None) or "Evaluation was interrupted")
        raise
    print(format_original_report(metrics))
    print(format_report(metrics))
    print(f"\nresults: {os.path.join(results, 'results.json')}")
    if status:
        status.kpi = {"top_k_accuracy": float(metrics[f"top_{metrics['top_k']}_accuracy"])}
        status.write("SUCCESS", "Evaluation finished successfully.")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate a model on eval_config.eval_dataset_path")
    p.add_argument("-e", "--experiment_spec_file", "--experiment_spec", dest="experiment_spec", required=True,
                   metavar="SPEC")
    p.add_argument("-m", "--model_path", "--model", dest="model_path", default=None,
                   help="model file (default: eval_config.model_path)")
    p.add_argument("-r", "--results_dir", default=None,
                   help="where results.json and confusion_matrix.png go (default: RUN/evaluate beside weights/)")
    add_key_argument(p)
    p.add_argument("-c", "-cm", "--classmap_json", dest="classmap", default=None,
                   help="classmap.json (default: the one of the training run the model comes from)")
    p.add_argument("--skip-bad-images", "--skip_bad_images", dest="skip_bad_images", action="store_true")
    add_common_task_arguments(p)
    p.set_defaults(func=run)
