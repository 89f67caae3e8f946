"""`kestrel evaluate` (and `classification_tf1 evaluate`): metrics of a model on a labelled folder."""

from __future__ import annotations

import argparse
import logging
import os

from kestrel_trainer import storage
from kestrel_trainer.cli.common import (
    SPEC_HELP,
    add_common_task_arguments,
    add_key_argument,
    apply_device_flags,
    require_key_for,
    resolve_key,
    setup_logging,
    stage_model,
    stage_spec_inputs,
    task_status,
)
from kestrel_trainer.errors import SpecError
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
    ignored = [flag for flag, value in (("-i/--image_dir", args.image_dir), ("-l/--label_dir", args.label_dir),
                                        ("-b/--batch_size", args.batch_size)) if value is not None]
    if ignored:
        logging.getLogger("kestrel.evaluate").warning(
            "%s: accepted as the original accepts them (placeholders for its deploy tools) and ignored; the data "
            "and batch size come from eval_config", ", ".join(ignored))
    from kestrel_trainer.evaluate import format_original_report, format_report, run_evaluation

    # s3:// (docs/storage.md): -r is a local folder uploaded as it is written, so status.json goes to the bucket
    args.results_dir = storage.output_dir(args.results_dir)
    # As the original: status.json in the -r folder (only when -r is given).
    with task_status(args.results_dir, "evaluation", "Starting evaluation.") as status:
        # s3://: local copies of the model (with its run's classmap.json), the data and -c
        spec, model_path = stage_spec_inputs(spec, evaluate=True), stage_model(model_path)
        args.classmap = storage.input_path(args.classmap)
        results = args.results_dir or _default_results_dir(model_path)
        apply_device_flags(args)
        metrics = run_evaluation(spec, model_path, key, results, args.classmap, args.skip_bad_images)
        print(format_original_report(metrics))
        print(format_report(metrics))
        if results:
            print(storage.describe(f"\nresults: {os.path.join(results, 'results.json')}"))
        else:
            print("\nresults: printed only (neither the model's folder nor the working directory can be written; "
                  "pass -r DIR to keep results.json and confusion_matrix.png)")
        if status:
            status.kpi = {"top_k_accuracy": float(metrics[f"top_{metrics['top_k']}_accuracy"])}
            status.write("SUCCESS", "Evaluation finished successfully.")
    return 0


def _default_results_dir(model_path: str):
    """Without -r: RUN/evaluate beside the model. A model staged from a bucket (its local copy is a mirror path):
    RUN/evaluate in the bucket, uploaded as it is written (the bucket's write check, not the local cache's, decides
    whether it can be written; a refused write is a one-line error naming the URL: pass -r). A local model: the
    first writable of RUN/evaluate and ./evaluate, else None (printed only), as evaluate.writable_results_dir says."""
    from kestrel_trainer.evaluate import default_results_dir, writable_results_dir

    if storage.url_of(model_path):
        return storage.output_dir(default_results_dir(model_path))
    return writable_results_dir(model_path)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate a model on eval_config.eval_dataset_path")
    p.add_argument("-e", "--experiment_spec_file", "--experiment_spec", dest="experiment_spec", required=True,
                   metavar="SPEC", help=SPEC_HELP)
    p.add_argument("-m", "--model_path", "--model", dest="model_path", default=None,
                   help="model file (default: eval_config.model_path)")
    p.add_argument("-r", "--results_dir", default=None,
                   help="where status.json (only with -r, as the original), results.json and confusion_matrix.png "
                   "go (default: RUN/evaluate beside weights/ when writable, else ./evaluate, else printed only)")
    add_key_argument(p, writes_models=False)
    p.add_argument("-c", "-cm", "--classmap_json", "--classmap", dest="classmap", default=None,
                   help="classmap.json (default: the one of the training run the model comes from)")
    p.add_argument("--skip-bad-images", "--skip_bad_images", dest="skip_bad_images", action="store_true",
                   help="leave out images that cannot be decoded, counting them (default: refuse, listing them)")
    # The original's evaluate parser also takes these (placeholders for its deploy tools) and ignores them.
    p.add_argument("-i", "--image_dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("-l", "--label_dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("-b", "--batch_size", type=int, default=None, help=argparse.SUPPRESS)
    add_common_task_arguments(p)
    p.set_defaults(func=run)
