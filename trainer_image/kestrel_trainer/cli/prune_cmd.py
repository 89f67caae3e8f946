"""`kestrel prune` (and `classification_tf1 prune`): structured filter pruning of a trained model.

The algorithm lives in kestrel_trainer/prune/; this module only maps the original's flags onto it.
"""

from __future__ import annotations

import argparse

from kestrel_trainer import storage
from kestrel_trainer.cli.common import (
    add_common_task_arguments,
    add_format_argument,
    add_key_argument,
    check_format_key,
    require_key_for,
    resolve_key,
    setup_logging,
    stage_model,
    task_status,
)
from kestrel_trainer.prune import CRITERIA, NORMALIZERS

ORDER = 60

# The original's defaults (docs/prune.md); kept here so `--help` needs no NumPy or TensorFlow.
DEFAULTS = {"normalizer": "max", "criterion": "union", "granularity": 8, "threshold": 0.1, "min_num_filters": 16}


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_file, args.verbose)
    # s3:// (docs/storage.md): -r is a local folder uploaded as it is written, so status.json goes to the bucket
    args.results_dir = storage.output_dir(args.results_dir)
    with task_status(args.results_dir, "pruning") as status:
        from kestrel_trainer.train import devices

        # an explicit --gpus N (or the pod's KESTREL_REQUIRE_GPUS) with fewer GPUs: one line; the CPU is not news
        devices.check(args, announce=False)
        report = _prune(args)
        if status:
            from kestrel_trainer.prune.report import pruning_ratio_line

            status.kpi = {"pruning_ratio": report["parameters"]["ratio"], "size": report["file_bytes"]["after"],
                          "param_count": report["parameters"]["after"]}
            status.write("RUNNING", pruning_ratio_line(report))
            status.write("SUCCESS", "Pruning finished successfully.")
    from kestrel_trainer.prune.report import format_report, pruning_ratio_line

    print(format_report(report))
    print(pruning_ratio_line(report))
    print(storage.describe(f"\npruned model: {report['output']}"))
    return 0


def _prune(args: argparse.Namespace) -> dict:
    from kestrel_trainer.prune.rule import PruneOptions
    from kestrel_trainer.prune.run import check_options

    opts = PruneOptions(normalizer=args.normalizer, criterion=args.criterion, granularity=args.granularity,
                        threshold=args.threshold, min_num_filters=args.min_num_filters)
    check_options(opts)  # before loading anything: a bad flag costs no model load
    if args.experiment_spec:
        from kestrel_trainer.spec import load_spec

        load_spec(args.experiment_spec, "prune")  # validated; the model file carries its own architecture
    key = resolve_key(args)
    check_format_key(args.model_format, key)
    require_key_for(args.model_path, key)
    # s3://: a local copy of the model; the output's folder (prune_report.json's default) uploaded as it is written
    args.model_path, args.output = stage_model(args.model_path), storage.output_file(args.output)
    from kestrel_trainer.prune.run import prune_file

    return prune_file(args.model_path, args.output, key, opts, args.excluded_layers, args.results_dir,
                      args.model_format)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("prune", help="remove low-norm filters from a trained model (retrain it afterwards)")
    p.add_argument("-m", "--model", "--model_path", dest="model_path", required=True,
                   help="trained model (.tlt, .hdf5: anything evaluate accepts)")
    p.add_argument("-o", "--output_file", "--output", dest="output", required=True,
                   help="pruned model file (written as OUTPUT with a key, with suffix .hdf5 without); "
                   "never the input")
    add_key_argument(p)
    p.add_argument("-e", "--experiment_spec_path", "--experiment_spec_file", "--experiment_spec",
                   dest="experiment_spec", default=None, metavar="SPEC",
                   help="spec file (optional; validated, the model file holds its architecture)")
    p.add_argument("-r", "--results_dir", default=None,
                   help="where prune_report.json goes (default: the output file's folder) and status.json (only "
                   "with -r, as the original)")
    add_format_argument(p, "pruned model")
    p.add_argument("-n", "--normalizer", default=DEFAULTS["normalizer"], choices=NORMALIZERS,
                   help="per-layer score normalisation: max, L2 or off (default max)")
    p.add_argument("-eq", "--equalization_criterion", dest="criterion", default=DEFAULTS["criterion"],
                   choices=CRITERIA,
                   help="combining the scores of layers that must keep the same channels: union, intersection, "
                   "arithmetic_mean or geometric_mean (default union)")
    p.add_argument("-pg", "--pruning_granularity", dest="granularity", type=int, default=DEFAULTS["granularity"],
                   help="kept filters per layer are a multiple of this (default 8)")
    p.add_argument("-pth", "--pruning_threshold", dest="threshold", type=float, default=DEFAULTS["threshold"],
                   help="normalised score a filter must exceed to be kept, in [0, 1] (default 0.1)")
    p.add_argument("-nf", "--min_num_filters", type=int, default=DEFAULTS["min_num_filters"],
                   help="at least this many filters stay in every layer (default 16)")
    p.add_argument("-el", "--excluded_layers", nargs="*", default=[], metavar="LAYER",
                   help="layers kept whole (and every layer equalized with them)")
    add_common_task_arguments(p)
    p.set_defaults(func=run)
