"""`kestrel model info -e SPEC [--classes N] | -m MODEL [-k KEY]`: size a model from its spec or its file.

With `-m` the model file is read (encrypted with the key from -k or KESTREL_KEY): this is how a pruned
model's size is checked; `-e` as well names the freeze blocks of its layers.
"""

from __future__ import annotations

import argparse

from kestrel_trainer.cli.common import add_key_argument, require_key_for, resolve_key
from kestrel_trainer.errors import KestrelError

ORDER = 30


def run_info(args: argparse.Namespace) -> int:
    if not args.experiment_spec and not args.model_path:
        raise KestrelError("model info needs -e SPEC or -m MODEL", exit_code=2)
    spec = None
    if args.experiment_spec:
        from kestrel_trainer.spec import load_spec

        spec = load_spec(args.experiment_spec, None)
    from kestrel_trainer.models.registry import create_model, get_entry
    from kestrel_trainer.models.summary import describe

    def no_block(_name: str) -> None:
        return None

    block_of = get_entry(spec.model.arch).block_of if spec is not None else no_block
    if args.model_path:
        key = resolve_key(args)
        require_key_for(args.model_path, key)
        from kestrel_trainer.cli.common import stage_model
        from kestrel_trainer.predict import load_for_prediction

        args.model_path = stage_model(args.model_path)  # s3:// -> a local copy (docs/storage.md)

        model = load_for_prediction(args.model_path, key)
        print(f"model: {args.model_path} ({model.name}), {int(model.output_shape[-1])} classes")
    else:
        model = create_model(spec.model, args.classes)
        print(f"model: {spec.model.name} ({spec.model.arch}), {args.classes} classes, "
              f"{'retain_head' if spec.model.retain_head else 'default head'}")
    print(describe(model, block_of, verbose=not args.brief))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model", help="inspect model architectures")
    sub = parser.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    sub.required = True
    info = sub.add_parser("info", help="layers by freeze block, parameters, FLOPs, input/output shapes")
    info.add_argument("-e", "--experiment_spec", default=None,
                      help="spec file (only model_config is used); with -m it names the freeze blocks")
    info.add_argument("-m", "--model", "--model_path", dest="model_path", default=None,
                      help="a model file (e.g. a pruned model) instead of building one from the spec")
    add_key_argument(info, writes_models=False)
    info.add_argument("--classes", type=int, default=1000, help="number of classes for the head (default 1000)")
    info.add_argument("--brief", action="store_true", help="totals only, no per-layer table")
    info.set_defaults(func=run_info)
