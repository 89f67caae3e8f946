"""`kestrel model info -e SPEC [--classes N]`: size a model from its spec, no dataset needed."""

from __future__ import annotations

import argparse

ORDER = 30


def run_info(args: argparse.Namespace) -> int:
    from kestrel_trainer.spec import load_spec

    spec = load_spec(args.experiment_spec, None)
    from kestrel_trainer.models.registry import create_model, get_entry
    from kestrel_trainer.models.summary import describe

    model = create_model(spec.model, args.classes)
    print(f"model: {spec.model.name} ({spec.model.arch}), {args.classes} classes, "
          f"{'retain_head' if spec.model.retain_head else 'default head'}")
    print(describe(model, get_entry(spec.model.arch).block_of, verbose=not args.brief))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model", help="inspect model architectures")
    sub = parser.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    sub.required = True
    info = sub.add_parser("info", help="layers by freeze block, parameters, FLOPs, input/output shapes")
    info.add_argument("-e", "--experiment_spec", required=True, help="spec file (only model_config is used)")
    info.add_argument("--classes", type=int, default=1000, help="number of classes for the head (default 1000)")
    info.add_argument("--brief", action="store_true", help="totals only, no per-layer table")
    info.set_defaults(func=run_info)
