"""`kestrel inference` (and `classification_tf1 inference`): classify one image or a folder."""

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
from kestrel_trainer.errors import KestrelError
from kestrel_trainer.spec import load_spec

ORDER = 50


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.experiment_spec, "inference")
    setup_logging(args.log_file, args.verbose)
    key = resolve_key(args)
    require_key_for(args.model_path, key)
    from kestrel_trainer.inference import run_inference
    from kestrel_trainer.report.status import StatusLogger

    # As the original: status.json in the -r folder (only when -r is given).
    status = StatusLogger(os.path.join(args.results_dir, "status.json")) if args.results_dir else None
    if status:
        status.write("STARTED", "Starting inference.")
    try:
        apply_device_flags(args)
        files, rows = run_inference(spec, args.model_path, key, args.classmap, image=args.image,
                                    folder=args.image_dir, batch_size=args.batch_size, results_dir=args.results_dir,
                                    top_k=args.top_k, skip_bad_images=args.skip_bad_images)
    except (KestrelError, KeyboardInterrupt) as err:
        if status:
            status.write("FAILURE", getattr(err, "message", None) or "Inference was interrupted")
        raise
    if args.image:
        name = rows[0][0][0]
        print(f"Class label = {_class_index(args, name)}")  # the original's two lines, for scripts that parse them
        print(f"Class name = {name}")
        for name, confidence in rows[0]:
            print(f"{files[0]}: {name} ({confidence:.4f})")
    else:
        out = os.path.join(args.results_dir or args.image_dir, "result.csv")
        print(f"classified {len(files)} images -> {out}")
    if status:
        status.write("SUCCESS", "Inference finished successfully.")
    return 0


def _class_index(args: argparse.Namespace, name: str) -> int:
    from kestrel_trainer.data import folders
    from kestrel_trainer.predict import default_classmap_path

    classmap = folders.read_classmap(args.classmap or default_classmap_path(args.model_path))
    return int(classmap[name])


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("inference", help="classify an image (-i) or a folder of images (-d)")
    p.add_argument("-e", "--experiment_spec_file", "--experiment_spec", dest="experiment_spec", required=True,
                   metavar="SPEC")
    p.add_argument("-m", "--model_path", "--model", dest="model_path", required=True)
    add_key_argument(p)
    p.add_argument("-cm", "--classmap_json", "-c", dest="classmap", default=None,
                   help="classmap.json (default: the one of the training run the model comes from)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-i", "--image", default=None, help="one image")
    src.add_argument("-d", "--image_dir", default=None, help="a folder, walked recursively (jpg, jpeg, png)")
    p.add_argument("-b", "--batch_size", type=int, default=None, help="default: eval_config.batch_size")
    p.add_argument("-r", "--results_dir", default=None, help="where result.csv goes (default: the image folder)")
    p.add_argument("--top_k", type=int, default=1, help="classes per image in the output (default 1)")
    p.add_argument("--skip-bad-images", "--skip_bad_images", dest="skip_bad_images", action="store_true")
    add_common_task_arguments(p)
    p.set_defaults(func=run)
